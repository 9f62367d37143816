"""Multiply-add FLOPs of one image's forward pass through either network family, counted by layer.

    python bench/network_flops.py                       # the defaults of both families
    python bench/network_flops.py --network crnn --crnn_channels 32,64,128,192

Convolutions, LSTM gates (both directions when bidirectional) and the dense head count
``2 x multiply-adds``; pooling, BatchNorm, activations and the CTC loss are left out (they are
memory-bound and small). A training step is about 3x the forward pass (the backward pass ~2x).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402
from src.models import architecture, ctc_steps  # noqa: E402
from src.models.geometry import halvings, parse_channels, pooled  # noqa: E402


def _lstm(inputs: int, hidden: int, steps: int, layers: int, directions: int) -> float:
    total, width = 0.0, inputs
    for _ in range(layers):
        total += directions * 2 * 4 * hidden * (width + hidden) * steps
        width = hidden * directions
    return total


def forward_flop(cfg, spec: CaptchaSpec) -> Dict[str, float]:
    """FLOPs per image by part (``backbone``, ``recurrent``, ``head``) and their ``total``."""
    steps = ctc_steps(architecture(cfg), spec)
    height, width = spec.input_height, spec.width
    if cfg.network == "crnn":
        backbone, previous = 0.0, 3
        for stage, channels in enumerate(parse_channels(cfg.crnn_channels)):
            for _ in range(cfg.crnn_convs_per_stage):
                backbone += 2 * previous * channels * 9 * height * width
                previous = channels
            height, width = pooled(height, 1), (pooled(width, 1) if stage < halvings(cfg.crnn_width_stride) else width)
        directions = 2 if cfg.crnn_bidirectional else 1
        recurrent = _lstm(previous * height, cfg.crnn_hidden_size, steps, 2, directions)
        head = 2 * cfg.crnn_hidden_size * directions * spec.num_classes * steps
    else:
        directions = 2 if cfg.bidirectional else 1
        backbone = 0.0
        recurrent = _lstm(spec.input_height * 3, cfg.hidden_size, steps, 2, directions)
        head = 2 * cfg.hidden_size * directions * spec.num_classes * steps
    return {"backbone": backbone, "recurrent": recurrent, "head": head, "total": backbone + recurrent + head}


def main(argv=None) -> int:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    cfg = config_from_args(parser.parse_args(argv))
    parts = forward_flop(cfg, CaptchaSpec.from_config(cfg))
    print(f"{cfg.network}: " + ", ".join(f"{name} {value / 1e6:.1f} MFLOP" for name, value in parts.items())
          + " per image (forward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
