"""The Markdown table of a network screen: ``python research/screen_table.py docs/network_screen.jsonl``.

One row per design of ``research/screen_networks.py``'s JSON lines: its speed, its accuracy at the
curve's steps, and its accuracy at equal training minutes (interpolated between curve points, which
is what "accuracy per CPU-minute" compares).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List


def accuracy_at(curve: List[Dict[str, float]], seconds: float) -> str:
    """Held-out accuracy after ``seconds`` of training, interpolated between two measured points;
    "-" before the first point, and the last value, marked "(ended)", for a run that ended earlier."""
    points = [(p["train_seconds"], p["accuracy"]) for p in curve]
    if seconds < points[0][0]:
        return "-"
    if seconds > points[-1][0]:
        return f"{100 * points[-1][1]:.1f} % (ended)"
    for (t0, a0), (t1, a1) in zip(points, points[1:] or points):
        if t0 <= seconds <= t1:
            return f"{100 * (a0 + (a1 - a0) * (seconds - t0) / max(t1 - t0, 1e-9)):.1f} %"
    return f"{100 * points[-1][1]:.1f} %"


def table(rows: List[Dict[str, object]], minutes=(2, 4, 6)) -> str:
    head = ("| design | changed from crnn_light | parameters | CTC steps | s/step | inference images/s | steps done | "
            + " | ".join(f"accuracy at {m} min" for m in minutes) + " | final accuracy | final CER |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = next((r["fields"] for r in rows if r["design"] == "crnn_light"), {})
    for row in rows:
        changed = {k: v for k, v in row["fields"].items() if base.get(k) != v}
        what = "(the baseline)" if row["design"] == "crnn_light" else ", ".join(f"{k}={v}" for k, v in changed.items())
        last = row["curve"][-1]
        lines.append(f"| `{row['design']}` | {what} | {row['parameters']:,} | {row['ctc_steps']} | "
                     f"{row['s_per_step']:.3f} | {row['inference_images_per_s']:.0f} | {last['step']} | "
                     + " | ".join(accuracy_at(row["curve"], 60 * m) for m in minutes)
                     + f" | {100 * last['accuracy']:.1f} % | {100 * last['cer']:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("screen", metavar="SCREEN.jsonl", help="the JSON lines of research/screen_networks.py --out")
    args = parser.parse_args(argv)
    with open(args.screen, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
