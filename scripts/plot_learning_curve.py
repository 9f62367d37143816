"""Draw learning-curve CSVs (written by train.py --eval_dataset_path) as one PNG.

    python scripts/plot_learning_curve.py OUT.png LABEL=CURVE.csv [LABEL=CURVE.csv ...]

Top: training loss against step; bottom: held-out sequence error rate (1 - exact accuracy)
against step, both on log axes, with reference lines at 5 %, 2 % and 1 % error (95, 98 and
99 % accuracy). Needs matplotlib (pinned in requirements.txt).
"""
from __future__ import annotations

import os
import sys
from typing import List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.run.learning_curve import read_learning_curve  # noqa: E402  (the repository root is not on sys.path)

REFERENCE_ERRORS = (5.0, 2.0, 1.0)
# A row with no error at all cannot sit on a log axis; it is drawn here (1 in 10,000 images,
# the full test set's resolution) and the axis says so.
ZERO_ERROR_FLOOR = 0.01

Curve = List[Tuple[int, float, float, float]]


def read_curve(path: str) -> Curve:
    """``(step, train_seconds, train_loss, eval_accuracy)`` rows, rows superseded by a resume dropped."""
    rows = read_learning_curve(path)
    if not rows:
        raise ValueError(f"{path}: no learning-curve rows")
    return [(r["step"], r["train_seconds"], r["train_loss"], r["eval_accuracy"]) for r in rows]


def error_percent(accuracy: float) -> float:
    """Sequence error rate in percent, with zero raised to :data:`ZERO_ERROR_FLOOR`."""
    return max(100.0 * (1.0 - accuracy), ZERO_ERROR_FLOOR)


def draw(curves: Sequence[Tuple[str, Curve]]):
    """The figure: loss (top) and error rate (bottom) of every ``(label, rows)`` curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, (loss_ax, err_ax) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, height_ratios=(2, 3))
    floored = False
    for label, rows in curves:
        steps = [r[0] for r in rows]
        loss_ax.plot(steps, [r[2] for r in rows], label=label)
        errors = [error_percent(r[3]) for r in rows]
        floored = floored or any(r[3] >= 1.0 for r in rows)
        err_ax.plot(steps, errors, marker=".", label=f"{label} ({rows[-1][1] / 60:.0f} min)")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training CTC loss")
    loss_ax.legend(fontsize="small")
    loss_ax.grid(True, alpha=0.3)

    err_ax.set_yscale("log")
    low = min(min(error_percent(r[3]) for r in rows) for _, rows in curves)
    err_ax.set_ylim(min(low, min(REFERENCE_ERRORS)) / 1.5, 130)
    ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01) if t >= low / 1.5]
    err_ax.yaxis.set_major_locator(FixedLocator(ticks))
    err_ax.yaxis.set_minor_locator(NullLocator())
    err_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g} %"))
    for level in REFERENCE_ERRORS:
        err_ax.axhline(level, color="gray", lw=0.8, ls="--")
        err_ax.annotate(f"{100 - level:g} % accuracy", xy=(1.0, level), xycoords=("axes fraction", "data"),
                        xytext=(-4, 2), textcoords="offset points", ha="right", va="bottom",
                        fontsize="x-small", color="gray")
    ylabel = "held-out sequence error (1 - exact accuracy)"
    if floored:
        ylabel += f"\n(no error drawn at {ZERO_ERROR_FLOOR:g} %)"
    err_ax.set_ylabel(ylabel)
    err_ax.set_xlabel("training step (batch 64)")
    err_ax.legend(loc="upper right", fontsize="small")
    err_ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: List[str]) -> int:
    """Command-line entry point; returns the exit status."""
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401  (checked before any work)
    except ImportError:
        print("plot_learning_curve.py: error: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    curves = []
    for spec in argv[1:]:
        label, path = spec.split("=", 1)
        try:
            curves.append((label, read_curve(path)))
        except OSError as err:
            print(f"plot_learning_curve.py: error: {path}: {err.strerror}", file=sys.stderr)
            return 2
        except ValueError as err:
            print(f"plot_learning_curve.py: error: {err}", file=sys.stderr)
            return 2
    fig = draw(curves)
    try:
        fig.savefig(argv[0], dpi=110)
    except OSError as err:
        print(f"plot_learning_curve.py: error: {argv[0]}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
