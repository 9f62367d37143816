"""Per-step learning rates of the original recipe."""
from __future__ import annotations

import numpy as np

# The optimizer holds one rate per step of the run, and so does every checkpoint (4 bytes a step):
# a run is bounded to this many steps (4 MB of rates).
MAX_STEPS = 1_000_000


def get_lr(epoch_size: int, step_size: int, lr_init: float, schedule: str = "step",
           warmup_steps: int = 0, total_steps: int = 0) -> np.ndarray:
    """One rate per step of ``epoch_size * step_size`` steps, or of ``total_steps`` when > 0.

    ``step`` (the original): before each epoch ``i`` (1-based) with ``i % 10 == 0`` the rate is
    x0.1, so epochs 1-9 use ``lr_init``, 10-19 ``0.1 * lr_init``, 20-29 ``0.01 *``, 30 ``0.001 *``.
    ``cosine``: half a cosine from ``lr_init`` down to 0 at the last step.
    ``total_steps`` > 0 replaces ``epoch_size``: the step schedule is cut after that many steps
    and the cosine reaches 0 at its last one.
    ``warmup_steps`` > 0 ramps linearly from ``lr_init / warmup_steps`` up to the schedule.
    Only the run's steps are computed, however long an epoch is; more than MAX_STEPS is a ValueError.
    """
    if epoch_size <= 0 or step_size <= 0 or total_steps < 0:
        raise ValueError(f"epoch_size and step_size must be positive and total_steps >= 0, got {epoch_size}, "
                         f"{step_size} and {total_steps}")
    total = total_steps or epoch_size * step_size
    if total > MAX_STEPS:
        raise ValueError(f"a schedule of {total:,} steps is more than the {MAX_STEPS:,} a run may train")
    if schedule == "step":
        decade = (np.arange(total) // step_size + 1) // 10          # 0 in epochs 1-9, 1 in 10-19, ...
        # Successive x0.1, as the original loop multiplied: the very same float64 rates.
        levels = [lr_init]
        while len(levels) <= int(decade[-1]):
            levels.append(levels[-1] * 0.1)
        rates = np.asarray(levels, dtype=np.float64)[decade]
    elif schedule == "cosine":
        rates = lr_init * 0.5 * (1.0 + np.cos(np.pi * np.arange(total) / total))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (expected step or cosine)")
    if warmup_steps > 0:
        ramp = np.minimum(1.0, (np.arange(total) + 1) / warmup_steps)
        rates = rates * ramp
    return rates.astype(np.float32)
