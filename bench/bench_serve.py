"""serve.py under load against eval.py's batch throughput, on this machine, in one run.

For each backend it starts ``serve.py`` on a free loopback port and sends one-image requests
(multipart, a rendered captcha each) from ``C`` concurrent clients for each concurrency level,
then reports requests/s, the p50/p99 latency, and where the server's time went (its ``GET /stats``:
the forward passes' sizes and padding, and the share of the time spent in them). In the same run it measures what serving is
compared with: eval.py's images/s on the same number of images (a separate process, as a user runs
it), and one batch-1 forward pass of the same backend (median of 30). Targets (issue 25): at
concurrency 32, >= 80 % of eval.py's images/s; a lone request's p50 <= 2x the batch-1 forward.

    python bench/bench_serve.py [--checkpoint_path pretrained/warpctc.ckpt] [--backends mindspore,onnxruntime]
        [--concurrency 1,8,32] [--requests 400] [--images 2000] [--max_wait_ms 5,20]

The clients run in this process, on the same 2 cores as the server: their CPU time is part of
what is measured, as it would be for a scraper on the same box.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_name, eval_throughput, free_port  # noqa: E402
from src.config import ServingConfig  # noqa: E402
from src.serve.backends import buckets  # noqa: E402


def start_server(checkpoint: str, backend: str, cache: str, max_wait_ms: float):
    import requests

    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "serve.py"), "--checkpoint_path", checkpoint,
                             "--backend", backend, "--onnx_cache", cache, "--port", str(port), "--quiet",
                             "--max_wait_ms", str(max_wait_ms)],
                            env=dict(os.environ, PYTHONPATH=REPO), stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"serve.py exited: {proc.stderr.read()[-500:]}")
        try:
            requests.get(url + "/healthz", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("serve.py did not start")


def batcher_profile(before: dict, after: dict, sizes) -> dict:
    """Where the server's time went between two ``GET /stats``: the forward passes' mean image count, the
    share of padding in them (batches are padded up to ``sizes``), the share of the wall time the batcher
    spent in forward passes, and the mean pass."""
    passes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    passes = {k: v for k, v in passes.items() if v}
    count = sum(passes.values())
    if not count:
        return {}
    images = sum(k * v for k, v in passes.items())
    padded = sum(v * next(size for size in sizes if size >= k) for k, v in passes.items())
    busy = after["busy_s"] - before["busy_s"]
    return {"forward_passes": count, "mean_batch": images / count, "padding_share": 1 - images / padded,
            "forward_share": busy / (after["uptime_s"] - before["uptime_s"]), "forward_ms_per_pass": 1000 * busy / count,
            "batch_sizes": {str(k): passes[k] for k in sorted(passes)}}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; NaN where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, images, concurrency: int, count: int, sizes=(), server_pid: int = 0) -> dict:
    """``count`` one-image requests from ``concurrency`` clients: requests/s, p50 and p99 in ms, and the
    batcher's profile (:func:`batcher_profile`) over them."""
    import requests

    per_client = max(1, count // concurrency)

    def client(number: int):
        session = requests.Session()
        latencies = []
        for i in range(per_client):
            data = images[(number * per_client + i) % len(images)]
            start = time.perf_counter()
            answer = session.post(url + "/predict", files={"image": ("c.png", data, "image/png")}, timeout=120)
            latencies.append(time.perf_counter() - start)
            if answer.status_code != 200:
                raise RuntimeError(answer.text)
        return latencies

    for number in range(min(concurrency, 4)):        # warm connections and the batch sizes
        client(number)
    before = requests.get(url + "/stats", timeout=10).json()
    start, cpu, served = time.perf_counter(), time.process_time(), process_cpu_s(server_pid)
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for result in pool.map(client, range(concurrency)) for x in result]
    elapsed, cpu, served = time.perf_counter() - start, time.process_time() - cpu, process_cpu_s(server_pid) - served
    after = requests.get(url + "/stats", timeout=10).json()
    return {"concurrency": concurrency, "requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "client_cpu_ms_per_request": 1000 * cpu / len(latencies),
            "server_cpu_ms_per_request": 1000 * served / len(latencies), "batcher": batcher_profile(before, after, sizes)}


def batch1_forward_ms(checkpoint: str, backend: str, cache: str) -> float:
    """The median batch-1 forward pass of the backend serve.py runs (subprocess: a clean MindSpore)."""
    code = f"""
import sys, time, numpy as np
sys.path.insert(0, {REPO!r})
from src.config import ServingConfig
from src.run.runtime import set_up
from src.serve.backends import ServedModel
set_up("CPU")
model = ServedModel("m", {checkpoint!r}, ServingConfig(backend={backend!r}, onnx_cache={cache!r}))
x = np.zeros((1, 3, model.spec.input_height, model.spec.width), np.float32)
times = []
for _ in range(35):
    start = time.perf_counter(); model.backend(x); times.append(time.perf_counter() - start)
print(1000 * float(np.median(times[5:])))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_path", default=os.path.join(REPO, "pretrained", "warpctc.ckpt"))
    parser.add_argument("--backends", default="mindspore,onnxruntime")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level (default 400)")
    parser.add_argument("--images", type=int, default=2000, help="captchas for eval.py (default 2000)")
    parser.add_argument("--max_wait_ms", default=str(ServingConfig().max_wait_ms),
                        help="serve.py's --max_wait_ms; comma-separated values start one server each (default: "
                             "serve.py's)")
    parser.add_argument("--out", default=None, help="append the JSON row here")
    args = parser.parse_args(argv)
    import process_data
    from src.checkpoint.files import read_checkpoint
    from src.checkpoint.model import resolve_model

    cfg = ServingConfig()
    _, spec = resolve_model(args.checkpoint_path, read_checkpoint(args.checkpoint_path), cfg)
    row = {"cpu": cpu_name(), "cores": os.cpu_count(), "checkpoint": os.path.basename(args.checkpoint_path),
           "max_batch": cfg.max_batch, "max_wait_ms": args.max_wait_ms, "backends": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = os.path.join(scratch, "serve")
        process_data.render_split(folder, 64, spec=spec, seed=9, split="test", workers=1, progress=False)
        images = [open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
                  if name.endswith(".png")]
        row["eval_images_per_s"] = eval_throughput(cfg, spec, args.checkpoint_path, scratch, args.images)
        print(f"{row['cpu']}, {row['cores']} cores; eval.py: {row['eval_images_per_s']:.0f} images/s", flush=True)
        waits = [float(w) for w in args.max_wait_ms.split(",")]
        for backend in args.backends.split(","):
            for wait in waits:
                served = backend if len(waits) == 1 else f"{backend}, wait {wait:g} ms"
                cache = os.path.join(scratch, "onnx")
                proc, url = start_server(args.checkpoint_path, backend, cache, wait)
                try:
                    levels = [load(url, images, int(c), args.requests, buckets(cfg.max_batch), proc.pid)
                              for c in args.concurrency.split(",")]
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
                row["backends"][served] = {"levels": levels}
                for level in levels:
                    share = level["requests_per_s"] / row["eval_images_per_s"]
                    print(f"{served:12s} concurrency {level['concurrency']:3d}: {level['requests_per_s']:7.1f} req/s "
                          f"({share:5.0%} of eval.py), p50 {level['p50_ms']:6.1f} ms, p99 {level['p99_ms']:6.1f} ms; "
                          f"CPU per request: server {level['server_cpu_ms_per_request']:.1f} ms, clients "
                          f"{level['client_cpu_ms_per_request']:.1f} ms", flush=True)
                    profile = level["batcher"]
                    if profile:
                        print(f"{'':12s}   batcher: {profile['forward_passes']} passes of {profile['mean_batch']:.1f} "
                              f"images on average ({profile['padding_share']:.0%} padding), "
                              f"{profile['forward_ms_per_pass']:.1f} ms each, in passes {profile['forward_share']:.0%} "
                              f"of the time; passes by size {profile['batch_sizes']}", flush=True)
            forward = batch1_forward_ms(args.checkpoint_path, backend, cache)
            for served, result in row["backends"].items():
                if served.split(",")[0] == backend:
                    result["batch1_forward_ms"] = forward
                    first = result["levels"][0]
                    lone = first["p50_ms"] / forward if first["concurrency"] == 1 else float("nan")
                    print(f"{served:12s} batch-1 forward {forward:.1f} ms; a lone request's p50 is {lone:.2f}x it",
                          flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
