"""Adaptation to a style kept out of training: zero-shot, then adapted with N labelled images each.

For a style folder holding ``adapt<N>`` splits and a test split (as ``research/heldout_styles.py``
writes them), this evaluates the base model on the test split, then for each N runs the
documented adaptation command (``train.py --dataset_path <style>/adapt<N> --init_checkpoint
<base> --config_path configs/adapt.yaml``) and evaluates its last checkpoint on the same test
split, which no run trains or tunes on. Prints one table row per run with its steps, wall time
and s/step, and the CPU it ran on with its fp32 matmul peak::

    python research/heldout_styles.py --output_dir heldout --style ink
    python bench/bench_adapt.py --base pretrained/warpctc_robust.ckpt --style_dir heldout/ink \
        --labels 250,1000,5000 --out runs/adapt_ink
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model, matmul_peak_gflops  # noqa: E402
from src.cli import report_error  # noqa: E402

CKPT_RE = re.compile(r"^[a-z_]+-(\d+)_(\d+)\.ckpt$")   # <network>-<epoch>_<step>.ckpt


def run(args: list) -> str:
    """Run a repository script with this interpreter; its stdout, or RuntimeError with its last error line."""
    proc = subprocess.run([sys.executable] + [str(a) for a in args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "[WARNING]" not in line]
        raise RuntimeError(f"{os.path.basename(str(args[0]))} failed: {lines[-1] if lines else proc.returncode}")
    return proc.stdout


def evaluate(checkpoint: str, test: str) -> tuple:
    """(accuracy, CER) of a checkpoint on a folder, from eval.py's result line."""
    out = run([os.path.join(REPO, "eval.py"), "--dataset_path", test, "--checkpoint_path", checkpoint, "--quiet"])
    result = ast.literal_eval(re.search(r"^result: (\{.*\})$", out, re.M).group(1))
    return result["WarpCTCAccuracy"], result["CER"]


def last_checkpoint(folder: str) -> str:
    """The checkpoint of the highest (epoch, step) in a training's folder."""
    found = [(int(m.group(1)), int(m.group(2)), name) for name in os.listdir(folder)
             for m in [CKPT_RE.match(name)] if m]
    if not found:
        raise RuntimeError(f"{folder}: no checkpoint was written")
    return os.path.join(folder, max(found)[2])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="checkpoint to adapt")
    parser.add_argument("--style_dir", required=True, help="folder with adapt<N> splits and the test split")
    parser.add_argument("--test", default="test1000", help="the held-out split of --style_dir (default: %(default)s)")
    parser.add_argument("--labels", default="250,1000,5000", help="the N of the adapt<N> splits to adapt with")
    parser.add_argument("--out", required=True, help="receives one checkpoint folder per run")
    parser.add_argument("--config_path", default=os.path.join(REPO, "configs", "adapt.yaml"))
    parser.add_argument("train_options", nargs="*", help="more train.py options, after --")
    args = parser.parse_args(argv)
    try:
        test = os.path.join(args.style_dir, args.test)
        for path in (args.base, test):
            if not os.path.exists(path):
                raise ValueError(f"{path}: does not exist")
        peak, lib = matmul_peak_gflops()
        print(f"cpu: {cpu_model()}; matmul peak ({lib}, 4096^3 fp32): {peak:.0f} GFLOP/s; "
              f"base {args.base}; held-out {test}", flush=True)
        print("| labelled images | steps | training | s/step | accuracy | CER |\n|---|---|---|---|---|---|", flush=True)
        accuracy, cer = evaluate(args.base, test)
        print(f"| 0 (zero-shot) | — | — | — | {accuracy:.2%} | {cer:.2%} |", flush=True)
        for count in (int(n) for n in args.labels.split(",")):
            folder = os.path.join(args.out, f"adapt{count}")
            start = time.monotonic()
            out = run([os.path.join(REPO, "train.py"), "--dataset_path", os.path.join(args.style_dir, f"adapt{count}"),
                       "--init_checkpoint", args.base, "--config_path", args.config_path,
                       "--save_checkpoint_path", folder, *args.train_options])
            seconds = time.monotonic() - start
            steps = int(re.search(r"= (\d+) steps, batch", out).group(1))
            trained = float(re.search(r"training finished in ([0-9.]+) s", out).group(1))
            accuracy, cer = evaluate(last_checkpoint(folder), test)
            print(f"| {count:,} | {steps} | {trained / 60:.1f} min ({seconds / 60:.1f} with start-up) | "
                  f"{trained / steps:.2f} | {accuracy:.2%} | {cer:.2%} |", flush=True)
    except (ValueError, RuntimeError) as err:
        return report_error("bench_adapt.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
