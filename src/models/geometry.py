"""The shape arithmetic networks share, pure Python: how many CTC steps a width gives and what pooling
leaves of a size. Config checks and the network cells both use it, so it imports nothing."""
from __future__ import annotations

import math
from typing import Tuple

MAX_CRNN_STAGES = 6


def parse_channels(text: str) -> Tuple[int, ...]:
    """``"32,64,128,192"`` -> ``(32, 64, 128, 192)``: one width per backbone stage; ValueError naming the option."""
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        channels = ()
    if not channels or min(channels) <= 0 or max(channels) > 1024 or len(channels) > MAX_CRNN_STAGES:
        raise ValueError(f"--crnn_channels must be 1 to {MAX_CRNN_STAGES} comma-separated widths in 1..1024, e.g. "
                         f"32,64,128,192, got {text!r}")
    return channels


def halvings(stride: int) -> int:
    """How many 2x poolings make a width stride of ``stride``."""
    return int(math.log2(stride))


def pooled(size: int, times: int) -> int:
    """``size`` after ``times`` 2x max-pools of stride 2 (which floor, as MindSpore's valid pooling does)."""
    for _ in range(times):
        size //= 2
    return size


def check_ctc_steps(steps: int, network: str, how: str, spec) -> None:
    """ValueError when ``steps`` CTC steps cannot spell ``spec.max_length`` characters (``how``: where the steps
    come from)."""
    if steps < 2 * spec.max_length:
        # CTC must be able to emit max_length characters with a blank between repeats.
        raise ValueError(f"--captcha_width {spec.width} gives the {network} network {steps} CTC steps ({how}), too "
                         f"few for --max_captcha_digits {spec.max_length}: CTC needs up to 2 per character (a blank "
                         f"between repeats), at least 2 x {spec.max_length} = {2 * spec.max_length}")
