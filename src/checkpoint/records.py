"""The run record a training checkpoint holds: which training wrote it, and the batch size, device count and
steps per epoch its global step counts in."""
from __future__ import annotations

import secrets
from typing import Dict, Mapping


# What a checkpoint's global step means depends on these; a resume must match them (see check_run_record).
RUN_RECORD_KEYS = ("batch_size", "device_num", "steps_per_epoch")

# The training a checkpoint belongs to: drawn by a new training, kept by the runs that resume it.
# Checkpoints saved before it existed have none ("" below), and so have the runs resuming them.
TRAINING_KEY = "training_id"


def run_record(params: Mapping) -> Dict[str, int]:
    """The run record entries (RUN_RECORD_KEYS) a checkpoint holds; older checkpoints hold none."""
    return {key: int(params[key].asnumpy().reshape(-1)[0]) for key in RUN_RECORD_KEYS if key in params}


_RECORD_LABELS = {"batch_size": "--batch_size", "device_num": "device count", "steps_per_epoch": "steps per epoch"}


def record_difference(params: Mapping, current: Mapping[str, int]) -> str:
    """The first run-record setting in which ``current`` differs from the checkpoint's ("" when none)."""
    saved = run_record(params)
    for key in RUN_RECORD_KEYS:
        if key in saved and saved[key] != current[key]:
            hint = " (another dataset size?)" if key == "steps_per_epoch" else ""
            return f"{_RECORD_LABELS[key]} {current[key]} differs from the checkpoint's {saved[key]}{hint}"
    return ""


def check_run_record(path: str, params: Mapping, current: Mapping[str, int]) -> None:
    """ValueError naming the first setting in which this run differs from the run that wrote ``path``.

    The checkpoint's global step is a position in the data only for the batch size, device
    count and steps per epoch it was trained with.
    """
    difference = record_difference(params, current)
    if difference:
        raise ValueError(f"checkpoint {path}: {difference}; resume with the settings it was trained with")


def new_training_id() -> str:
    """The id of a new training, stored in its checkpoints (random: unique across folders and machines)."""
    return secrets.token_hex(8)


def training_of(params: Mapping) -> str:
    """The training a checkpoint belongs to; "" for one saved before trainings had ids."""
    return str(params.get(TRAINING_KEY, ""))


def training_record(training: str) -> Dict[str, str]:
    """The checkpoint entry naming the training (none for the runs that resume a checkpoint without one)."""
    return {TRAINING_KEY: training} if training else {}

