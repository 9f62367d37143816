"""Training-step speed: this project's step vs a PyTorch replica of the same network, loss and optimizer, in one run.

    python bench/bench_train_step.py [--steps 10] [--warmup 3] [--functional] [--no_torch] [--config_path ...]
    python bench/bench_train_step.py --config_path configs/crnn_digits.yaml --isa AVX2,AVX512_CORE,ALL

Any network the config names (``--network``, the family's options, ``--optimizer``). Prints the median
seconds per step of each, the ratio project/pytorch, the achieved GFLOP/s (``bench/network_flops.py``'s
forward x 3) against a 4096^3 fp32 matmul measured in the same run, and the project step's top ops
by time from MindSpore's profiler. Every step reads its loss back (execution is asynchronous).

The MindSpore step runs in a child process per variant, so each gets a fresh oneDNN: ``--isa`` also
times it with oneDNN's instruction set capped at each value given (``ONEDNN_MAX_CPU_ISA``: AVX2,
AVX512_CORE, AVX512_CORE_AMX, ALL = no cap); without it the step runs as train.py runs it (the crnn
caps at AVX2 on CPU, ``src/models/crnn.py``). PyTorch runs in this process, uncapped.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import batch_arrays, cpu_model, matmul_peak_gflops, time_steps, torch_train_step  # noqa: E402
from bench.network_flops import forward_flop  # noqa: E402
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402
from src.models import architecture_fields  # noqa: E402

# What the step's cost depends on: the captcha (time steps, input size, classes), the network and its
# optimizer, and the batch.
BENCH_FIELDS = ("charset", "max_captcha_digits", "captcha_width", "captcha_height", "resize", "batch_size",
                "optimizer") + architecture_fields()
ISA_CAPS = ("AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL")


def step_gflop(cfg, spec: CaptchaSpec) -> float:
    """FLOPs of one training step: the forward pass of the batch x 3 (the backward pass ~2x the forward)."""
    return 3 * forward_flop(cfg, spec)["total"] * cfg.batch_size / 1e9


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


def measure_project(cfg, args) -> dict:
    """The MindSpore figures of this process (a child of :func:`main`): s/step, and the profile unless off."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1)
    spec = CaptchaSpec.from_config(cfg)
    images, labels = batch_arrays(spec, cfg.batch_size)
    step = project_step(cfg, images, labels)
    # Read after the network is built: a family may cap the instruction set as it builds (the crnn does).
    row = {"isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"),
           "project": statistics.median(time_steps(step, args.steps, args.warmup))}
    if args.functional:
        row["functional"] = statistics.median(
            time_steps(project_step(cfg, images, labels, functional=True), args.steps, args.warmup))
    if not args.no_profile:
        row["profile"] = {label: profile_top_ops(cfg, images, labels, functional=functional)
                          for label, functional in [("project", False)] + ([("functional", True)]
                                                                           if args.functional else [])}
    return row


def run_child(argv, isa: str) -> dict:
    """:func:`measure_project` in a fresh process, oneDNN capped at ``isa`` ("" = as train.py runs)."""
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--project_only"] + list(argv),
                          capture_output=True, text=True, env=env)
    rows = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not rows:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the MindSpore step{' under ' + isa if isa else ''} failed: {tail}")
    return json.loads(rows[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (default: all)")
    parser.add_argument("--functional", action="store_true",
                        help="also time the value_and_grad + @ms.jit functional step (the slow trap)")
    parser.add_argument("--isa", default="",
                        help=f"also time the MindSpore step with oneDNN capped at each of these (comma-separated: "
                             f"{', '.join(ISA_CAPS)})")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch step")
    parser.add_argument("--no_profile", action="store_true", help="skip the profiler run")
    parser.add_argument("--project_only", action="store_true", help=argparse.SUPPRESS)
    add_config_arguments(parser, BENCH_FIELDS)
    args = parser.parse_args(argv)
    caps = [cap for cap in args.isa.split(",") if cap]
    try:
        cfg = config_from_args(args)
        for cap in caps:
            if cap not in ISA_CAPS:
                raise ValueError(f"--isa {cap!r} is not one of {', '.join(ISA_CAPS)}")
    except ValueError as err:
        return report_error("bench_train_step.py", err)
    if args.project_only:
        print("RESULT " + json.dumps(measure_project(cfg, args)), flush=True)
        return 0
    spec = CaptchaSpec.from_config(cfg)
    gflop = step_gflop(cfg, spec)
    print(f"{cpu_model()}; network {cfg.network}, optimizer {cfg.optimizer}, batch {cfg.batch_size}, "
          f"{spec.width}x{spec.input_height}, {spec.num_classes} classes; {gflop:.1f} GFLOP per training step")
    child_argv = [a for i, a in enumerate(argv)
                  if not a.startswith("--isa") and not (i and argv[i - 1] == "--isa")]
    try:
        variants = [("project", run_child(child_argv, ""))]
        # The capped variants time the project step only: no profile, no functional step.
        capped_argv = [a for a in child_argv if a != "--functional"] + ["--no_profile"]
        variants += [(f"isa {cap}", run_child(capped_argv, cap)) for cap in caps]
    except RuntimeError as err:
        return report_error("bench_train_step.py", err)
    results = {}
    for label, row in variants:
        results[label] = row["project"]
    if "functional" in variants[0][1]:
        results["functional"] = variants[0][1]["functional"]
    if not args.no_torch:
        images, labels = batch_arrays(spec, cfg.batch_size)
        try:
            results["pytorch"] = statistics.median(
                time_steps(torch_train_step(cfg, spec, images, labels, args.threads), args.steps, args.warmup))
        except ImportError:
            print("pytorch: not installed (pip install -r bench/requirements.txt)")
    peak, lib = matmul_peak_gflops()
    print(f"matmul peak ({lib}, 4096^3 fp32): {peak:.0f} GFLOP/s")
    default_isa = variants[0][1]["isa"]
    for name, seconds in results.items():
        note = f" (oneDNN cap: {default_isa})" if name == "project" else ""
        print(f"{name:>22}: {seconds:.3f} s/step median of {args.steps}, {gflop / seconds:.1f} GFLOP/s "
              f"({gflop / seconds / peak:.0%} of matmul peak){note}")
    if "pytorch" in results:
        for name in [n for n in results if n not in ("pytorch", "functional")]:
            print(f"ratio {name}/pytorch: {results[name] / results['pytorch']:.3f}")
    if "functional" in results:
        print(f"ratio functional/project: {results['functional'] / results['project']:.2f}")
    for label, ops in variants[0][1].get("profile", {}).items():
        print(f"top ops of the {label} step (MindSpore profiler, ms per step, share):")
        for op, ms_per_step, share in ops:
            print(f"  {op:<24} {ms_per_step:9.1f} ms  {share:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
