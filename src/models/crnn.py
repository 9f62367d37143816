"""The convolutional family, ``network: crnn``: a conv backbone, a recurrent neck and the shared CTC head
(the cells: ``src/crnn.py``). ``T = W / crnn_width_stride``. The defaults are the screen's best crnn per
CPU-minute (docs/networks.md, "The screen")."""
from __future__ import annotations

from src.models.geometry import halvings, parse_channels, pooled
from src.models.registry import Family, ModelOption, register_model


def _check(arch, spec) -> None:
    channels = parse_channels(arch["crnn_channels"])
    stride = arch["crnn_width_stride"]
    if stride not in (1, 2, 4, 8) or halvings(stride) > len(channels):
        raise ValueError(f"--crnn_width_stride must be 1, 2, 4 or 8, with at most one halving per stage of "
                         f"--crnn_channels ({len(channels)} stages), got {stride}")
    if pooled(spec.input_height, len(channels)) < 1:
        raise ValueError(f"--crnn_channels has {len(channels)} stages, each halving the height, too many for "
                         f"images {spec.input_height} pixels high (--captcha_height)")
    for name, high in (("crnn_convs_per_stage", 4), ("crnn_hidden_size", 4096)):
        if not 1 <= arch[name] <= high:
            raise ValueError(f"--{name} must be in 1..{high}, got {arch[name]}")


def _build(arch, spec, platform: str):
    from src.crnn import CRNN
    from src.ctc_head import recurrent_dtype

    if platform == "CPU":
        from src.run.runtime import cap_cpu_isa

        # On AVX-512 CPUs, MindSpore 2.10's oneDNN runs plain-layout convolutions with its reference kernel,
        # ~100x slower than its AVX2 one (docs/networks.md, "oneDNN's instruction set on AVX-512 machines").
        # The original family is not capped: its LSTM runs faster with AVX-512.
        cap_cpu_isa("AVX2")
    return CRNN(spec.input_height, spec.num_classes, channels=parse_channels(arch["crnn_channels"]),
                convs_per_stage=arch["crnn_convs_per_stage"], width_stride=arch["crnn_width_stride"],
                batch_norm=arch["crnn_batch_norm"], hidden_size=arch["crnn_hidden_size"],
                bidirectional=arch["crnn_bidirectional"], recurrent_dtype=recurrent_dtype(platform))


register_model(Family(
    name="crnn",
    summary="convolutional backbone, recurrent neck",
    options=(
        ModelOption("crnn_channels", str, "16,32,64,128", "network crnn: comma-separated channels of the backbone's "
                                                          "stages (each halves the height)"),
        ModelOption("crnn_convs_per_stage", int, 1, "network crnn: 3x3 convolutions per stage"),
        ModelOption("crnn_width_stride", int, 4, "network crnn: the backbone divides the width by this (1, 2, 4 or "
                                                 "8): CTC steps = width / it"),
        ModelOption("crnn_batch_norm", bool, True, "network crnn: BatchNorm after each convolution"),
        ModelOption("crnn_hidden_size", int, 128, "network crnn: hidden size of the neck's 2 LSTM layers"),
        ModelOption("crnn_bidirectional", bool, True, "network crnn: the neck reads both directions"),
    ),
    check=_check,
    ctc_steps=lambda arch, spec: pooled(spec.width, halvings(arch["crnn_width_stride"])),
    steps_how=lambda arch, spec: f"--captcha_width {spec.width} / --crnn_width_stride {arch['crnn_width_stride']}",
    build=_build,
))
