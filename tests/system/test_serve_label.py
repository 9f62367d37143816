"""serve.py --label_dir over real HTTP: the labelling API, its refusals, and a kill -9 that loses nothing."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from src.data.labels import LABELLING_HEADER, list_samples
from tests.conftest import REPO
from tests.system.test_serve import DIGITS, SERVE, Server, free_port


@pytest.fixture()
def folder(data_root, tmp_path):
    """12 captchas of the shared test split, renamed so that the names carry no label."""
    target = tmp_path / "mine"
    target.mkdir()
    truth = {}
    for number, path in enumerate(sorted((data_root / "test").iterdir())[:12]):
        name = f"shot{number:02d}.png"
        shutil.copy(path, target / name)
        truth[name] = path.stem.split("-", 1)[1]
    return target, truth


def label_server(*args, read=True) -> Server:
    """serve.py with ``--label_dir``; with ``read``, once the model has read the folder (it reads in the
    background, the page being up at once)."""
    srv = Server(*args)
    deadline = time.monotonic() + 120
    while read and not srv.get("/label/status").json()["reading_done"]:
        if time.monotonic() > deadline:
            srv.stop()
            raise AssertionError("serve.py did not finish reading the labelling folder in time")
        time.sleep(0.1)
    return srv


def saved(target, spec=None) -> dict:
    """labels.tsv as train.py reads it (with ``spec``, default the digits'): file name -> label."""
    from src.captcha_spec import CaptchaSpec

    return {os.path.basename(path): label for path, label in list_samples(str(target), spec or CaptchaSpec())}


def test_labelling_api_least_confident_first_and_refusals(folder):
    target, truth = folder
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        status = srv.get("/label/status").json()
        assert (status["labelled"], status["unreadable"], status["total"]) == (0, 0, 12)
        first = srv.get("/label/next").json()
        confidences = []
        for name in truth:
            item = srv.get(f"/label/item/{name}").json()
            assert item["label"] is None and not item["unreadable"] and item["reading"] is not None
            confidences.append(item["confidence"])
        assert first["confidence"] == min(confidences)
        image = srv.get(f"/label/image/{first['file']}")
        assert image.headers["content-type"] == "image/png"
        assert image.content == (target / first["file"]).read_bytes()

        for body, status_code, words in [
            ({"file": first["file"], "label": "12A"}, 400, "'A'"),
            ({"file": first["file"], "label": "12345"}, 400, "12345"),
            ({"file": first["file"], "label": ""}, 400, ""),
            ({"file": "../" + first["file"], "label": "12"}, 404, "not an image of"),
            ({"file": "nothere.png", "label": "12"}, 404, "not an image of"),
            ({"file": first["file"]}, 400, 'exactly one of "label"'),
            ({"file": first["file"], "label": "12", "colour": 1}, 400, "colour"),
        ]:
            answer = srv.post("/label", json=body)
            assert answer.status_code == status_code and words in answer.json()["error"], (body, answer.text)
        assert not (target / "labels.tsv").exists(), "a refused label was written"
        assert srv.get("/label/image/..%2Fsecret.png").status_code == 404

        answer = srv.post("/label", json={"file": first["file"], "label": truth[first["file"]]}).json()
        assert answer == {"saved": True, "labelled": 1, "unreadable": 0, "total": 12}
        assert saved(target) == {first["file"]: truth[first["file"]]}
        second = srv.get("/label/next").json()
        assert second["file"] != first["file"] and second["confidence"] >= first["confidence"]
        assert srv.post("/label", json={"file": second["file"], "unreadable": True}).json()["unreadable"] == 1
        assert srv.get(f"/label/item/{second['file']}").json()["unreadable"] is True
        assert "#unreadable\t" + second["file"] in (target / "labels.tsv").read_text()
    finally:
        srv.stop()


def test_kill_9_during_labelling_loses_no_accepted_label_and_reopening_continues(folder):
    target, truth = folder
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    accepted = []
    stop = threading.Event()

    def label_until_stopped():
        while not stop.is_set():
            try:
                following = requests.get(srv.url + "/label/next", timeout=30).json()
                if following["file"] is None:
                    return
                name = following["file"]
                answer = requests.post(srv.url + "/label", json={"file": name, "label": truth[name]}, timeout=30)
            except requests.ConnectionError:
                return          # killed mid-request: not accepted
            if answer.status_code == 200:
                accepted.append(name)

    worker = threading.Thread(target=label_until_stopped)
    worker.start()
    try:
        while len(accepted) < 5 and worker.is_alive():
            threading.Event().wait(0.01)
        srv.proc.send_signal(signal.SIGKILL)
        stop.set()
        worker.join(timeout=60)
    finally:
        srv.stop()
    on_disk = saved(target)
    assert len(accepted) >= 5
    assert all(on_disk.get(name) == truth[name] for name in accepted), (accepted, on_disk)
    assert set(on_disk) <= set(truth) and all(on_disk[n] == truth[n] for n in on_disk)

    again = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        status = again.get("/label/status").json()
        assert status["labelled"] == len(on_disk)
        following = again.get("/label/next").json()
        assert following["file"] not in on_disk
        for name in on_disk:
            assert again.get(f"/label/item/{name}").json()["label"] == truth[name]
    finally:
        again.stop()


def test_a_partly_labelled_folder_trains(folder, tmp_path):
    """What the page leaves behind is a training set: train.py uses the labelled images and says what it left out."""
    from tests.conftest import TINY, run_py

    target, truth = folder
    names = sorted(truth)
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        for name in names[:8]:
            assert srv.post("/label", json={"file": name, "label": truth[name]}).status_code == 200
        assert srv.post("/label", json={"file": names[8], "unreadable": True}).status_code == 200
    finally:
        srv.stop()
    proc = run_py([os.path.join(REPO, "train.py"), "--dataset_path", target, *TINY, "--batch_size", "4",
                   "--epoch_size", "1", "--save_checkpoint_path", tmp_path / "ckpt"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "8 labelled images" in output and "3 not labelled yet" in output and "1 marked unreadable" in output
    assert "2 steps/epoch" in output


def test_other_sites_and_other_host_names_cannot_label_or_read(folder):
    # The red team's cross-site write: a text/plain POST (no preflight) from a page of another site,
    # and the same through a foreign Host name (DNS rebinding). Neither may write or read.
    target, truth = folder
    name = sorted(truth)[0]
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        body = '{"file": "%s", "label": "9999"}' % name
        for headers, status, words in [
            ({"Content-Type": "text/plain", "Origin": "https://evil.example", "Host": "evil.example:8000"}, 403,
             "Host 'evil.example:8000' is not this server's address"),
            ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, 403,
             "Origin 'https://evil.example' is not this server's page"),
            ({"Content-Type": "application/json", "Origin": "null"}, 403, "Origin 'null'"),
            ({"Content-Type": "text/plain"}, 415, "Content-Type must be application/json, got 'text/plain'"),
        ]:
            answer = srv.post("/label", data=body, headers=headers)
            assert answer.status_code == status and words in answer.json()["error"], (headers, answer.text)
        assert not (target / "labels.tsv").exists() or name not in (target / "labels.tsv").read_text()
        foreign = srv.get(f"/label/image/{name}", headers={"Host": "attacker.example"})
        assert foreign.status_code == 403 and "error" in foreign.json()
        # The page's own requests still work: same origin, JSON.
        own = srv.post("/label", json={"file": name, "label": truth[name]},
                       headers={"Origin": srv.url, "Host": f"localhost:{srv.port}"})
        assert own.status_code == 200, own.text
        assert saved(target)[name] == truth[name]
    finally:
        srv.stop()


def test_only_regular_files_inside_the_folder_are_served(folder, tmp_path):
    target, truth = folder
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    os.symlink(secret, target / "secret.png")
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        answer = srv.get("/label/image/secret.png")
        assert answer.status_code == 404 and "root:x" not in answer.text, answer.text
        # A link swapped in for an image while the server runs is refused too.
        name = sorted(truth)[1]
        assert srv.get(f"/label/image/{name}").status_code == 200
        os.replace(target / name, tmp_path / "moved.png")
        os.symlink(secret, target / name)
        swapped = srv.get(f"/label/image/{name}")
        assert swapped.status_code == 404 and "root:x" not in swapped.text
        assert "not an image of" in swapped.json()["error"]
        # And one removed after start is a 404 naming it, not a 500.
        os.remove(target / name)
        gone = srv.get(f"/label/image/{name}")
        assert gone.status_code == 404 and name in gone.json()["error"]
        assert srv.get("/healthz").status_code == 200
    finally:
        srv.stop()


def test_a_second_server_on_the_same_folder_is_refused_at_start(folder):
    # Two servers saving into one labels.tsv overwrite each other's acknowledged labels.
    target, truth = folder
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        second = subprocess.run([sys.executable, SERVE, "--checkpoint_path", DIGITS, "--label_dir", str(target),
                                 "--port", str(free_port()), "--quiet"],
                                env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--label_dir {target}: in use by another labelling server (pid " \
            f"{srv.proc.pid})" in lines[0], second.stderr
        name = sorted(truth)[0]
        assert srv.post("/label", json={"file": name, "label": truth[name]}).status_code == 200
    finally:
        srv.stop()
    # Once the first has stopped, the folder can be labelled again.
    again = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        assert again.get("/label/status").json()["labelled"] == 1
    finally:
        again.stop()


def test_hand_edited_labels_moved_images_and_odd_requests_get_4xx_json(folder, tmp_path):
    target, truth = folder
    names = sorted(truth)
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, "--max_batch", "4")
    try:
        # Nested JSON is a 400, not a RecursionError: 100,000 deep at /predict, 30,000 at /label
        # (whose body limit is 64 KiB).
        def deep(n: int) -> str:
            return "[" * n + "]" * n
        for path, body in [("/predict", '{"images": %s}' % deep(100_000)), ("/label", '{"file": %s}' % deep(30_000))]:
            answer = srv.post(path, data=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and "nested too deep" in answer.json()["error"], answer.text

        # A labels.tsv edited by hand into one the store cannot read: 409 naming the line, on every route.
        tsv = target / "labels.tsv"
        tsv.write_text(f"{LABELLING_HEADER}\n{names[0]}\t12A\n", encoding="utf-8")
        for answer in (srv.get("/label/status"), srv.get("/label/next")):
            assert answer.status_code == 409, answer.text
            assert "labels.tsv:2:" in answer.json()["error"] and "'A'" in answer.json()["error"]
        tsv.write_text(f"{LABELLING_HEADER}\n{names[0]}\t{truth[names[0]]}\n{names[1]}\t{truth[names[1]]}\n",
                       encoding="utf-8")
        assert srv.get("/label/status").json()["labelled"] == 2

        # A labelled image moved away: saves of the others go on, its line is kept, it is reported once.
        os.replace(target / names[0], tmp_path / names[0])
        for name in names[2:5]:
            answer = srv.post("/label", json={"file": name, "label": truth[name]})
            assert answer.status_code == 200, answer.text
        status = srv.get("/label/status").json()
        assert len(status["missing"]) == 1 and f"labels.tsv:2: {names[0]} does not exist" in status["missing"][0]
        assert f"{names[0]}\t{truth[names[0]]}" in tsv.read_text(encoding="utf-8")
        os.replace(tmp_path / names[0], target / names[0])
        assert saved(target) == {n: truth[n] for n in names[:5]}

        # A PNG whose text chunk is over Pillow's limit is named as such.
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
        big = io.BytesIO()
        Image.new("RGB", (160, 64), "white").save(big, "PNG", pnginfo=info)
        answer = srv.post("/predict", files=[("image", ("big.png", big.getvalue(), "image/png"))])
        assert answer.status_code == 413 and "text metadata is over Pillow's limit" in answer.json()["error"]

        # A multipart body cut off before its closing boundary is malformed, not "no images".
        whole = (target / names[3]).read_bytes()
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + whole[:200])
        answer = srv.post("/predict", data=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert answer.status_code == 400 and "cut off" in answer.json()["error"], answer.text

        # HEAD on the page and on /healthz, as monitors send it.
        for path in ("/", "/healthz"):
            assert requests.head(srv.url + path, timeout=30).status_code == 200

        # A client that goes away in the middle of its body leaves no traceback in the log.
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n{\"images\": [")
            time.sleep(0.5)
        time.sleep(0.5)
        assert srv.get("/healthz").json() == {"status": "ok"}
        srv.proc.send_signal(signal.SIGTERM)
        log = srv.proc.communicate(timeout=60)[1]
        assert "Traceback" not in log and "labels.tsv:2:" in log and log.count("does not exist") == 1, log
    finally:
        srv.stop()


def test_the_page_starts_from_the_universal_base_on_captchas_of_another_size_and_length(tmp_path):
    # 5 lower-case characters at 200x50, which no release but the universal base can read: the page
    # offers its reading of each (told the alphabet), and accepting a reading as it is saves it.
    import random

    from src.captcha_spec import CaptchaSpec
    from src.metric import edit_distance
    from src.data.render import Renderer

    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    renderer = Renderer(CaptchaSpec(charset=alphabet, max_length=5, width=200, height=50))
    target, truth = tmp_path / "five", {}
    target.mkdir()
    for index in range(10):
        rng = random.Random(f"page-universal-{index}")
        label = "".join(rng.choice(alphabet) for _ in range(5))
        renderer.render(label, f"page-universal-image-{index}").save(target / f"shot{index}.png")
        truth[f"shot{index}.png"] = label
    universal = os.path.join(REPO, "pretrained", "crnn_universal.ckpt")
    srv = label_server("--checkpoint_path", universal, "--label_dir", target, "--read_charset", alphabet,
                 "--max_batch", "4")
    try:
        readings = {name: srv.get(f"/label/item/{name}").json()["reading"] for name in truth}
        assert all(reading and set(reading) <= set(alphabet) for reading in readings.values()), readings
        # Guesses worth starting from: most characters right (a release of 1-4 at 160x64 gets almost none).
        wrong = sum(edit_distance(readings[name], label) for name, label in truth.items())
        assert wrong <= 0.5 * 5 * len(truth), (readings, truth)
        first = srv.get("/label/next").json()
        answer = srv.post("/label", json={"file": first["file"], "label": first["reading"]})
        assert answer.status_code == 200 and answer.json()["labelled"] == 1, answer.text
        assert saved(target, CaptchaSpec(charset=alphabet, max_length=8)) == {first["file"]: first["reading"]}
    finally:
        srv.stop()


def test_a_large_folder_is_labelled_while_the_model_is_still_reading_it(data_root, tmp_path):
    # 3,000 images: the page is up before the model has read them (it reads in the background), the
    # images read so far come least confident first, a save made meanwhile is kept, and every image
    # is read in the end.
    target = tmp_path / "large"
    target.mkdir()
    sources = sorted((data_root / "test").iterdir())[:30]
    for index in range(3000):
        shutil.copy(sources[index % len(sources)], target / f"img{index:05d}.png")
    srv = label_server("--checkpoint_path", DIGITS, "--label_dir", target, read=False)
    try:
        status = srv.get("/label/status").json()
        assert status["total"] == 3000 and not status["reading_done"] and status["read"] < 3000, status
        first = srv.get("/label/next").json()
        assert first["file"] is not None
        assert srv.post("/label", json={"file": "img02999.png", "label": "1234"}).status_code == 200
        deadline = time.monotonic() + 300
        while not (status := srv.get("/label/status").json())["reading_done"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["read"] == 3000 and status["labelled"] == 1, status    # all pending at the start
        following = srv.get("/label/next").json()
        confidences = [srv.get(f"/label/item/img{i:05d}.png").json()["confidence"] for i in range(30)]
        assert following["confidence"] == pytest.approx(min(confidences))
        assert saved(target) == {"img02999.png": "1234"}
    finally:
        srv.stop()
