"""Helpers several benches (and research scripts) share: the machine, step timing, the matmul peak,
a random batch, a free port, eval.py's throughput.

Scripts put the repository root on ``sys.path`` and import this as ``bench.common``.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one, else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_model() -> str:
    """The CPU's model name and the number of cores, e.g. ``AMD EPYC 9R14, 2 core(s)``."""
    return f"{cpu_name()}, {os.cpu_count()} core(s)"


def time_steps(step, steps: int, warmup: int):
    """Seconds of each of ``steps`` calls of ``step()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(n: int = 4096, repeats: int = 3) -> tuple:
    """Best fp32 GFLOP/s of an n^3 matmul (PyTorch if present, else NumPy) and the library used."""
    try:
        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)
        run, lib = (lambda: torch.mm(a, b)), "torch"
    except ImportError:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = a.copy()
        run, lib = (lambda: a @ b), "numpy"
    run()
    best = min(time_steps(run, repeats, 0))
    return 2 * n ** 3 / best / 1e9, lib


def batch_arrays(spec, batch: int, seed: int = 0):
    """Random images at the network's input size and coded random labels of the spec (a CaptchaSpec)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, spec.input_height, spec.width)).astype(np.float32)
    labels = np.stack([spec.encode("".join(rng.choice(list(spec.charset), rng.integers(1, spec.max_length + 1))))
                       for _ in range(batch)])
    return images, labels


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eval_throughput(cfg, spec, ckpt: str, scratch: str, count: int) -> float:
    """eval.py's own images/s line on ``count`` rendered captchas (a separate process, as a user runs it)."""
    import process_data

    folder = os.path.join(scratch, "test")
    process_data.render_split(folder, count, spec=spec, seed=5, split="test", workers=1, progress=False)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--dataset_path", folder,
                           "--checkpoint_path", ckpt, "--quiet", "--batch_size", str(cfg.batch_size)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return float(proc.stdout.strip().splitlines()[-1].rsplit("(", 1)[1].split()[0])
