"""Reading the learning-curve CSV that ``train.py --eval_dataset_path`` appends to.

The file is append-only: a resumed run writes ``# resumed at step N`` and carries on. Rows that
an earlier run wrote after step N belong to a past that the resumed run replays, so readers
drop them at the marker; they stay in the file.
"""
from __future__ import annotations

import re
from typing import Dict, List

HEADER = "step,epoch,train_seconds,lr,train_loss,eval_accuracy,eval_cer"
_RESUME = re.compile(r"#\s*resumed at step (\d+)\s*$")


def partial_last_line(path: str) -> bytes:
    """The file's last line when it lacks its newline: a row cut short by a stop in the middle of
    writing it (rows are written whole, newline included); empty when the file ends with a newline."""
    with open(path, "rb") as handle:
        data = handle.read()
    return data[data.rfind(b"\n") + 1:]


def read_learning_curve(path: str, skip_partial: bool = False) -> List[Dict[str, float]]:
    """The curve's rows in step order, each a dict of the header's columns (``step`` an int).

    ``skip_partial`` leaves out a last line without its newline (see :func:`partial_last_line`).
    """
    rows: List[Dict[str, float]] = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    # split() leaves "" after a final newline; anything else there is a line cut short.
    if skip_partial or not lines[-1]:
        lines.pop()
    header = lines[0].strip().split(",") if lines else [""]
    # Readers use every column (the plot: loss and accuracy), so the header must be the whole one.
    if header != HEADER.split(","):
        raise ValueError(f"{path}: not a learning-curve CSV (header {','.join(header)!r})")
    for number, line in enumerate(lines[1:], start=2):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _RESUME.match(line)
            if match:
                resumed = int(match.group(1))
                rows = [row for row in rows if row["step"] <= resumed]
            continue
        values = line.split(",")
        if len(values) != len(header):
            raise ValueError(f"{path}:{number}: expected {len(header)} columns, got {len(values)}")
        try:
            row = {name: float(value) for name, value in zip(header, values)}
        except ValueError:
            raise ValueError(f"{path}:{number}: not a number in {line!r}") from None
        row["step"] = int(row["step"])
        rows.append(row)
    return rows


def train_seconds_at(rows: List[Dict[str, float]], step: int) -> float:
    """Training seconds spent up to ``step``: interpolated between the rows around it.

    Checkpoints (every ``save_checkpoint_steps``) and curve rows (every ``eval_every``) rarely
    fall on the same step, so a resume point usually lies between two rows.
    """
    before = [row for row in rows if row["step"] <= step]
    after = [row for row in rows if row["step"] > step]
    if before and after:
        a, b = before[-1], after[0]
        rate = (b["train_seconds"] - a["train_seconds"]) / (b["step"] - a["step"])
        return a["train_seconds"] + (step - a["step"]) * rate
    if after:
        return step * after[0]["train_seconds"] / after[0]["step"]
    if before:
        last = before[-1]
        return last["train_seconds"] * step / last["step"] if last["step"] else 0.0
    return 0.0
