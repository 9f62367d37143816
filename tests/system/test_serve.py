"""serve.py as a real server process on a loopback port: every endpoint and bad input over real HTTP.

The answers are compared with predict.py's on the same images; a bounded load test checks that
concurrent requests batched together lose nothing and change nothing.
"""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from tests.conftest import REPO, run_py

SERVE = os.path.join(REPO, "serve.py")
DIGITS = os.path.join(REPO, "pretrained", "warpctc.ckpt")
ALNUM = os.path.join(REPO, "pretrained", "warpctc_alnum.ckpt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A serve.py process on 127.0.0.1:<free port>, up once /healthz answers."""

    def __init__(self, *args, cwd=None, env=None, timeout=180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
        self.proc = subprocess.Popen([sys.executable, SERVE, *map(str, args), "--port", str(self.port), "--quiet"],
                                     cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve.py exited with {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError("serve.py did not answer /healthz in time")

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path, **kw):
        return requests.post(self.url + path, timeout=60, **kw)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def images(data_root):
    """Sorted test PNGs of the shared fixture and predict.py's (text, confidence) of each."""
    folder = data_root / "test"
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix == ".png")[:24]
    proc = run_py(["predict.py", "--checkpoint_path", DIGITS, "--quiet", *paths], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {}
    for line in proc.stdout.splitlines():
        path, text, confidence = line.split("\t")
        expected[path] = (text, float(confidence))
    return paths, expected


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve_cwd")
    srv = Server("--checkpoint_path", DIGITS, "--checkpoint_path", f"alnum={ALNUM}", "--max_images", "8",
                 "--max_bytes", "300000", "--max_pixels", "100000", cwd=work, env={"HOME": str(work)})
    yield srv
    srv.stop()
    assert sorted(os.listdir(work)) == [], "the server wrote files"


def read(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def matches(result, expected):
    """predict.py prints 4 decimals; the server answers the full float of the same computation."""
    text, confidence = expected
    return result["text"] == text and abs(result["confidence"] - confidence) <= 1.5e-4


def test_models_and_health(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    listing = server.get("/models").json()
    assert listing["default"] == "warpctc"
    first, second = listing["models"]
    from src.serve.backends import sha256_of
    assert (first["name"], first["charset"], first["max_length"]) == ("warpctc", "0123456789", 4)
    assert first["sha256"] == sha256_of(DIGITS) and second["sha256"] == sha256_of(ALNUM)
    assert first["image_size"] == {"width": 160, "height": 64} and first["network"]["network"] == "warpctc"
    assert first["normalization"] == "fixed" and first["backend"] == "mindspore" and first["ctc_steps"] == 160
    assert second["charset"] == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert "/predict" in server.get("/openapi.json").json()["paths"]


def test_stats_count_the_forward_passes_and_images_read(server, images):
    paths, _ = images
    before = server.get("/stats").json()
    answer = server.post("/predict", files=[("image", (os.path.basename(p), read(p), "image/png")) for p in paths[:3]])
    assert answer.status_code == 200, answer.text
    after = server.get("/stats").json()
    assert after["images"] - before["images"] == 3
    assert after["forward_passes"] - before["forward_passes"] == 1          # one request's images: one pass
    assert after["batch_sizes"].get("3", 0) - before["batch_sizes"].get("3", 0) == 1
    assert after["uptime_s"] >= after["busy_s"] > before["busy_s"]


def test_predict_multipart_and_json_match_predict_py(server, images):
    paths, expected = images
    chosen = paths[:5]
    answer = server.post("/predict", files=[("image", (os.path.basename(p), read(p), "image/png")) for p in chosen])
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 5 and all(r["model"] == "warpctc" for r in results)
    assert all(matches(r, expected[p]) for r, p in zip(results, chosen)), results
    encoded = [base64.b64encode(read(p)).decode() for p in chosen[::-1]]
    encoded[0] = "data:image/png;base64," + encoded[0]
    results = server.post("/predict", json={"images": encoded}).json()["results"]
    assert all(matches(r, expected[p]) for r, p in zip(results, chosen[::-1])), results


def test_other_formats_and_model_choice(server, images):
    paths, expected = images
    image = Image.open(paths[0])
    for kind in ("JPEG", "GIF", "BMP"):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, kind)
        answer = server.post("/predict", files={"image": (f"x.{kind.lower()}", buffer.getvalue())})
        assert answer.status_code == 200 and answer.json()["results"][0]["text"], (kind, answer.text)
    answer = server.post("/predict?model=alnum", files={"image": ("a.png", read(paths[0]))}).json()
    assert answer["results"][0]["model"] == "alnum"


def _png(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("request_kw, status, words", [
    (dict(files={"image": ("notes.txt", b"hello, not an image")}), 415, "not an image"),
    (dict(files={"image": ("cut.png", None)}), 400, "cut.png"),
    (dict(files={"image": ("big.png", _png(400, 400))}), 413, "--max_pixels"),
    (dict(files=[("image", ("a.png", _png(20, 20)))] * 9), 400, "--max_images 8"),
    (dict(json={"images": [base64.b64encode(_png(20, 20)).decode()] * 9}), 400, "--max_images 8"),
    (dict(data=b"{" * 400_000, headers={"Content-Type": "application/json"}), 413, "--max_bytes"),
    (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, "malformed JSON"),
    (dict(json={"pictures": []}), 400, '{"images"'),
    (dict(json={"images": ["@@not base64@@"]}), 400, "images[0] is not valid base64"),
    (dict(json={"images": []}), 400, "no images"),
    (dict(data=b"abc", headers={"Content-Type": "text/plain"}), 415, "Content-Type 'text/plain'"),
    (dict(files={"photo": ("a.png", b"x")}), 400, "form field 'photo'"),
    (dict(files={"image": (None, "just text")}), 400, "is text, not a file"),
    (dict(data={"image": "just text"}), 415, "application/x-www-form-urlencoded"),
    (dict(data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}), 400, "names no boundary"),
])
def test_bad_requests_are_4xx_json_and_the_server_goes_on(server, images, request_kw, status, words):
    if request_kw.get("files") == {"image": ("cut.png", None)}:
        whole = read(images[0][0])
        request_kw = dict(files={"image": ("cut.png", whole[:len(whole) // 2])})
    answer = server.post("/predict", **request_kw)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error and "\n" not in error
    ok = server.post("/predict", files={"image": ("a.png", read(images[0][0]))})
    assert ok.status_code == 200


def test_unknown_model_route_and_method(server, images):
    answer = server.post("/predict?model=nope", files={"image": ("a.png", read(images[0][0]))})
    assert answer.status_code == 404 and "model='nope' is not loaded; loaded: warpctc, alnum" in answer.json()["error"]
    assert server.get("/nothing").status_code == 404 and "error" in server.get("/nothing").json()
    assert server.get("/predict").status_code == 405
    assert server.get("/label/next").status_code == 404
    assert "--label_dir" in server.get("/label/next").json()["error"]


def test_load_concurrent_clients_get_predict_py_answers(server, images):
    """16 clients x 50 requests of 1-3 images each: every answer is predict.py's, nothing is dropped."""
    paths, expected = images

    def client(number):
        session = requests.Session()
        wrong = 0
        for i in range(50):
            chosen = [paths[(number * 7 + i * 3 + k) % len(paths)] for k in range(1 + (number + i) % 3)]
            answer = session.post(server.url + "/predict", timeout=120,
                                  files=[("image", (os.path.basename(p), read(p))) for p in chosen])
            results = answer.json()["results"]
            wrong += len(results) != len(chosen) or not all(matches(r, expected[p]) for r, p in zip(results, chosen))
        return wrong

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        wrong = list(pool.map(client, range(16), timeout=300))
    assert sum(wrong) == 0


def test_token_guards_every_api_request(tmp_path, images):
    srv = Server("--checkpoint_path", DIGITS, "--max_batch", "4", env={"WARPCTC_SERVE_TOKEN": "s3cret-token"})
    try:
        image = {"image": ("a.png", read(images[0][0]))}
        assert srv.get("/healthz").status_code == 200
        for answer in (srv.get("/models"), srv.post("/predict", files=image),
                       srv.post("/predict", files=image, headers={"Authorization": "Bearer wrong-token"})):
            assert answer.status_code == 401 and "Authorization: Bearer" in answer.json()["error"]
        good = srv.post("/predict", files=image, headers={"Authorization": "Bearer s3cret-token"})
        assert good.status_code == 200 and matches(good.json()["results"][0], images[1][images[0][0]])
    finally:
        srv.stop()


@pytest.mark.parametrize("args, words", [
    (["--checkpoint_path", DIGITS, "--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines"),
    (["--checkpoint_path", "missing.ckpt"], "--checkpoint_path missing.ckpt: no such file"),
    (["--checkpoint_path", f"a={DIGITS}", "--checkpoint_path", f"a={ALNUM}"], "a model named 'a' is already given"),
    (["--checkpoint_path", DIGITS, "--backend", "tensorrt"], "--backend must be one of mindspore, onnxruntime"),
    (["--checkpoint_path", DIGITS, "--max_batch", "0"], "--max_batch must be positive"),
])
def test_start_refusals_are_one_line(args, words):
    proc = run_py([SERVE, *args, "--port", str(free_port())], cwd=REPO, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_model_that_fails_to_load_stops_the_start(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(read(DIGITS)[:5000])
    proc = run_py([SERVE, "--checkpoint_path", broken, "--port", str(free_port())], cwd=REPO, timeout=120)
    assert proc.returncode == 2 and str(broken) in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("serve.py:")]) == 1


def test_a_taken_port_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_py([SERVE, "--checkpoint_path", DIGITS, "--port", str(port)], cwd=REPO, timeout=120)
    assert proc.returncode == 2 and f"--port {port}: cannot listen there" in proc.stderr, proc.stderr


def test_onnxruntime_backend_gives_the_same_answers_and_caches_its_export(tmp_path, images):
    paths, expected = images
    cache = tmp_path / "onnx"
    for start in range(2):
        srv = Server("--checkpoint_path", DIGITS, "--backend", "onnxruntime", "--max_batch", "4",
                     "--onnx_cache", cache)
        try:
            assert srv.get("/models").json()["models"][0]["backend"] == "onnxruntime"
            files = [("image", (os.path.basename(p), read(p))) for p in paths[:6]]
            results = srv.post("/predict", files=files).json()["results"]
            assert all(matches(r, expected[p]) for r, p in zip(results, paths[:6])), results
        finally:
            srv.stop()
        exports = {name: os.stat(cache / name).st_mtime_ns for name in os.listdir(cache)}
        assert sorted(n.rsplit("-", 1)[1] for n in exports) == ["b1.onnx", "b2.onnx", "b4.onnx"]
        if start == 0:
            first = exports
    assert exports == first, "the second start exported again"


def test_uploads_stay_in_memory_so_a_full_temporary_folder_changes_nothing(tmpfs):
    # Starlette spools a file part over 1 MiB to TMPDIR; the server keeps it in memory (the body is
    # there already), so "nothing a request sends is written" holds and a full TMPDIR is no 500.
    import numpy as np

    noise = np.random.default_rng(7).integers(0, 256, (640, 800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    big = buffer.getvalue()
    assert 1024 * 1024 < len(big) < 1800 * 1024
    srv = Server("--checkpoint_path", DIGITS, env={"TMPDIR": str(tmpfs)})
    try:
        first = srv.post("/predict", files={"image": ("noise.png", big, "image/png")})
        assert first.status_code == 200, first.text
        stat = os.statvfs(tmpfs)
        with open(tmpfs / "filler", "wb") as handle:          # the temporary folder is now full
            handle.write(b"\0" * (stat.f_bavail * stat.f_frsize - 4096))
        second = srv.post("/predict", files={"image": ("noise.png", big, "image/png")})
        assert second.status_code == 200, second.text
        assert second.json()["results"] == first.json()["results"]
        assert os.listdir(tmpfs) == ["filler"]
    finally:
        srv.stop()


def _answer(sock, timeout=10.0) -> bytes:
    """Everything the server sends on ``sock`` until it closes it."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _status_and_error(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_trickled_headers_time_out_open_connections_are_capped_and_malformed_http_is_json():
    srv = Server("--checkpoint_path", DIGITS, "--header_timeout", "1", "--max_connections", "6")
    sockets = []
    try:
        # Headers that never finish: each connection is answered 408 and closed after --header_timeout.
        started = time.monotonic()
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sockets.append(sock)
        for sock in sockets:
            status, error = _status_and_error(_answer(sock))
            assert status == 408 and "--header_timeout 1 s" in error
        assert time.monotonic() - started < 8
        # A connection that says nothing at all is closed the same way.
        silent = socket.create_connection(("127.0.0.1", srv.port))
        sockets.append(silent)
        assert _status_and_error(_answer(silent))[0] == 408
        # Beyond --max_connections open at once, a new one is answered 503 and closed at once.
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
        sockets += idle
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", srv.port))
        sockets.append(extra)
        status, error = _status_and_error(_answer(extra, timeout=5))
        assert status == 503 and "--max_connections 6" in error
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        # Malformed HTTP is a 400 {"error"}, as every other refusal.
        bad = socket.create_connection(("127.0.0.1", srv.port))
        sockets.append(bad)
        bad.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, error = _status_and_error(_answer(bad))
        assert status == 400 and error.startswith("malformed HTTP request")
        # And the server goes on serving, keep-alive included.
        with requests.Session() as session:
            for _ in range(3):
                assert session.get(srv.url + "/healthz", timeout=30).json() == {"status": "ok"}
    finally:
        for sock in sockets:
            sock.close()
        srv.stop()
