"""Per-step learning rates of the original recipe."""
from __future__ import annotations

import numpy as np


def get_lr(epoch_size: int, step_size: int, lr_init: float) -> np.ndarray:
    """One rate per step: before each epoch ``i`` (1-based) with ``i % 10 == 0`` the rate is x0.1.

    So epochs 1-9 use ``lr_init``, 10-19 ``0.1 * lr_init``, 20-29 ``0.01 * lr_init``, 30 ``0.001 *``.
    """
    if epoch_size <= 0 or step_size <= 0:
        raise ValueError(f"epoch_size and step_size must be positive, got {epoch_size} and {step_size}")
    rates = []
    lr = lr_init
    for epoch in range(1, epoch_size + 1):
        if epoch % 10 == 0:
            lr *= 0.1
        rates.extend([lr] * step_size)
    return np.array(rates, dtype=np.float32)
