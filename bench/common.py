"""Helpers several benches (and research scripts) share: the machine, step timing, the matmul peak,
a random batch, a free port, eval.py's throughput, and the PyTorch replica of a network with its
training step (the yardstick of the step-speed targets).

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


def torch_replica(cfg, spec):
    """The network of ``cfg`` in PyTorch: the same layers, shapes and output layout (T, B, C)."""
    from torch import nn

    from src.models import architecture, ctc_steps
    from src.models.geometry import halvings, parse_channels

    class Replica(nn.Module):
        def __init__(self):
            super().__init__()
            if cfg.network == "crnn":
                layers, previous = [], 3
                for stage, width in enumerate(parse_channels(cfg.crnn_channels)):
                    for _ in range(cfg.crnn_convs_per_stage):
                        layers.append(nn.Conv2d(previous, width, 3, padding=1, bias=not cfg.crnn_batch_norm))
                        if cfg.crnn_batch_norm:
                            layers.append(nn.BatchNorm2d(width))
                        layers.append(nn.ReLU())
                        previous = width
                    window = (2, 2) if stage < halvings(cfg.crnn_width_stride) else (2, 1)
                    layers.append(nn.MaxPool2d(window, window))
                self.backbone = nn.Sequential(*layers)
                features = previous * (spec.input_height >> len(parse_channels(cfg.crnn_channels)))
                self.rnn = nn.LSTM(features, cfg.crnn_hidden_size, 2, bidirectional=cfg.crnn_bidirectional)
                out = cfg.crnn_hidden_size * (2 if cfg.crnn_bidirectional else 1)
            else:
                self.backbone = None
                self.rnn = nn.LSTM(spec.input_height * 3, cfg.hidden_size, 2, bidirectional=cfg.bidirectional)
                out = cfg.hidden_size * (2 if cfg.bidirectional else 1)
            self.fc = nn.Linear(out, spec.num_classes)

        def forward(self, x):
            if self.backbone is not None:
                x = self.backbone(x)
                b, c, h, w = x.shape
                x = x.reshape(b, c * h, w).permute(2, 0, 1)
            else:
                b, _, h, w = x.shape
                x = x.permute(3, 0, 2, 1).reshape(w, b, h * 3)
            y, _ = self.rnn(x)
            return self.fc(y)

    return Replica(), ctc_steps(architecture(cfg), spec)


def torch_train_step(cfg, spec, images: np.ndarray, labels: np.ndarray, threads: int):
    """``step()`` of the replica of ``cfg``'s network in PyTorch: the project's loss (CTC summed over the
    batch, divided by its size), ``cfg``'s optimizer (SGD with momentum or Adam) and global-norm clipping,
    reading the loss back. ImportError without torch."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net, steps = torch_replica(cfg, spec)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
    ctc = torch.nn.CTCLoss(blank=spec.blank, reduction="sum")
    x = torch.from_numpy(images)
    targets = torch.from_numpy(labels.astype(np.int64))
    target_lengths = torch.from_numpy((labels != spec.blank).sum(1).astype(np.int64))
    input_lengths = torch.full((images.shape[0],), steps, dtype=torch.int64)

    def step() -> float:
        opt.zero_grad()
        loss = ctc(net(x).log_softmax(-1), targets, input_lengths, target_lengths) / images.shape[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_global_norm)
        opt.step()
        return loss.item()

    return step
