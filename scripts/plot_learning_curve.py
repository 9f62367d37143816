"""Draw learning-curve CSVs (written by train.py --eval_dataset_path) as one PNG.

    python scripts/plot_learning_curve.py OUT.png LABEL=CURVE.csv [LABEL=CURVE.csv ...]

Top: training loss (log scale) against step; bottom: held-out exact-sequence accuracy.
Needs matplotlib (optional: pip install matplotlib).
"""
from __future__ import annotations

import os
import sys
from typing import List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.learning_curve import read_learning_curve  # noqa: E402  (the repository root is not on sys.path)


def read_curve(path: str) -> List[Tuple[int, float, float, float]]:
    """``(step, train_seconds, train_loss, eval_accuracy)`` rows, rows superseded by a resume dropped."""
    rows = read_learning_curve(path)
    if not rows:
        raise ValueError(f"{path}: no learning-curve rows")
    return [(r["step"], r["train_seconds"], r["train_loss"], r["eval_accuracy"]) for r in rows]


def main(argv: List[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_learning_curve.py: error: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    fig, (loss_ax, acc_ax) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for spec in argv[1:]:
        label, path = spec.split("=", 1)
        try:
            rows = read_curve(path)
        except OSError as err:
            print(f"plot_learning_curve.py: error: {path}: {err.strerror}", file=sys.stderr)
            return 2
        except ValueError as err:
            print(f"plot_learning_curve.py: error: {err}", file=sys.stderr)
            return 2
        steps = [r[0] for r in rows]
        loss_ax.plot(steps, [r[2] for r in rows], label=label)
        acc_ax.plot(steps, [100 * r[3] for r in rows], marker=".", label=f"{label} ({rows[-1][1] / 60:.0f} min)")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training CTC loss")
    loss_ax.legend()
    loss_ax.grid(True, alpha=0.3)
    for level in (95, 98, 99):
        acc_ax.axhline(level, color="gray", lw=0.6, ls="--")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel("held-out exact accuracy (%)")
    acc_ax.set_xlabel("training step (batch 64)")
    acc_ax.legend(loc="lower right")
    acc_ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(argv[0], dpi=110)
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
