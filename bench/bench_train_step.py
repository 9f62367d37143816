"""Training-step speed: this project's step vs an equivalent PyTorch step, in one run.

    python bench/bench_train_step.py [--steps 10] [--warmup 3] [--functional] [--no_torch] [--charset ...]

Prints the median seconds per step of each, the ratio project/pytorch, the achieved GFLOP/s
against a 4096^3 fp32 matmul measured in the same run, and the project step's top ops by time
from MindSpore's profiler. Every step reads its loss back (execution is asynchronous).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import batch_arrays, matmul_peak_gflops, time_steps  # noqa: E402,F401
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402

# What the step's cost depends on: the captcha (time steps, input size, classes) and the sizes.
BENCH_FIELDS = ("charset", "max_captcha_digits", "captcha_width", "captcha_height", "batch_size", "hidden_size")


def lstm_step_gflop(spec: CaptchaSpec, batch: int, hidden: int, layers: int = 2) -> float:
    """Multiply-add FLOPs of forward + backward (backward ~ 2x forward) for the WarpCTC network."""
    steps = spec.width
    forward = 0
    for layer in range(layers):
        layer_in = spec.input_height * 3 if layer == 0 else hidden
        forward += 2 * 4 * hidden * (layer_in + hidden) * batch * steps
    forward += 2 * hidden * spec.num_classes * batch * steps
    return 3 * forward / 1e9


def project_step(cfg, images, labels, functional: bool = False):
    """``step()`` running exactly the training cell train.py builds (clipping included)."""
    import mindspore as ms

    from src.warpctc_for_train import build_train_cell

    net, cell, _ = build_train_cell(cfg, "CPU", steps_per_epoch=1000)
    x, y = ms.Tensor(images), ms.Tensor(labels)
    if not functional:
        return lambda: float(cell(x, y).asnumpy())

    # The trap the speed issue describes: the same arithmetic as a functional step.
    from mindspore import ops

    loss_net = cell.network
    opt = cell.optimizer
    grad_fn = ms.value_and_grad(loss_net, None, opt.parameters)

    @ms.jit
    def functional_step(a, b):
        loss, grads = grad_fn(a, b)
        grads = ops.clip_by_global_norm(grads, cfg.clip_global_norm)
        opt(grads)
        return loss

    return lambda: float(functional_step(x, y).asnumpy())


def torch_step(cfg, spec: CaptchaSpec, images, labels, threads: int):
    """The same network, CTC loss, SGD with momentum and clipping in PyTorch."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(spec.input_height * 3, cfg.hidden_size, num_layers=2)
            self.fc = torch.nn.Linear(cfg.hidden_size, spec.num_classes)

        def forward(self, x):
            b, _, h, w = x.shape
            x = x.permute(3, 0, 2, 1).reshape(w, b, h * 3)
            y, _ = self.lstm(x)
            return self.fc(y)

    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
    ctc = torch.nn.CTCLoss(blank=spec.blank, reduction="sum")
    x = torch.from_numpy(images)
    target_lengths = torch.from_numpy((labels != spec.blank).sum(1).astype(np.int64))
    targets = torch.from_numpy(labels.astype(np.int64))
    input_lengths = torch.full((images.shape[0],), images.shape[3], dtype=torch.int64)

    def step():
        opt.zero_grad()
        log_probs = net(x).log_softmax(-1)
        loss = ctc(log_probs, targets, input_lengths, target_lengths) / images.shape[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_global_norm)
        opt.step()
        return loss.item()

    return step


def profile_top_ops(cfg, images, labels, steps: int = 3, top: int = 8, functional: bool = False):
    """Top op types by total time over ``steps`` profiled project steps (MindSpore profiler)."""
    import mindspore as ms

    step = project_step(cfg, images, labels, functional)
    step()
    with tempfile.TemporaryDirectory(prefix="warpctc_prof_") as out:
        profiler = ms.Profiler(output_path=out)
        for _ in range(steps):
            step()
        profiler.analyse()
        files = glob.glob(os.path.join(out, "**", "cpu_op_type_info_*.csv"), recursive=True)
        if not files:
            return []
        with open(files[0], newline="") as handle:
            rows = list(csv.DictReader(handle))
    total = sum(float(r["total_compute_time"]) for r in rows)
    rows.sort(key=lambda r: float(r["total_compute_time"]), reverse=True)
    return [(r["op_type"], float(r["total_compute_time"]) / steps, float(r["total_compute_time"]) / total)
            for r in rows[:top]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (default: all)")
    parser.add_argument("--functional", action="store_true",
                        help="also time the value_and_grad + @ms.jit functional step (the slow trap)")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch step")
    parser.add_argument("--no_profile", action="store_true", help="skip the profiler run")
    add_config_arguments(parser, BENCH_FIELDS)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        return report_error("bench_train_step.py", err)
    spec = CaptchaSpec.from_config(cfg)

    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1)
    images, labels = batch_arrays(spec, cfg.batch_size)
    gflop = lstm_step_gflop(spec, cfg.batch_size, cfg.hidden_size)
    print(f"machine: {os.cpu_count()} CPU(s); batch {cfg.batch_size}, hidden {cfg.hidden_size}, "
          f"T={spec.width}, {spec.num_classes} classes; {gflop:.0f} GFLOP per training step")

    results = {}
    results["project"] = statistics.median(time_steps(project_step(cfg, images, labels), args.steps, args.warmup))
    if args.functional:
        results["functional"] = statistics.median(
            time_steps(project_step(cfg, images, labels, functional=True), args.steps, args.warmup))
    if not args.no_torch:
        try:
            results["pytorch"] = statistics.median(
                time_steps(torch_step(cfg, spec, images, labels, args.threads), args.steps, args.warmup))
        except ImportError:
            print("pytorch: not installed (pip install -r bench/requirements.txt)")
    peak, lib = matmul_peak_gflops()
    print(f"matmul peak ({lib}, 4096^3 fp32): {peak:.0f} GFLOP/s")
    for name, seconds in results.items():
        print(f"{name:>10}: {seconds:.3f} s/step median of {args.steps}, {gflop / seconds:.0f} GFLOP/s "
              f"({gflop / seconds / peak:.0%} of matmul peak)")
    if "pytorch" in results:
        print(f"ratio project/pytorch: {results['project'] / results['pytorch']:.3f}")
    if "functional" in results:
        print(f"ratio functional/project: {results['functional'] / results['project']:.2f}")
    if not args.no_profile:
        for label, functional in [("project", False)] + ([("functional", True)] if args.functional else []):
            print(f"top ops of the {label} step (MindSpore profiler, ms per step, share):")
            for op, ms_per_step, share in profile_top_ops(cfg, images, labels, functional=functional):
                print(f"  {op:<24} {ms_per_step:9.1f} ms  {share:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
