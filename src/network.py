"""The network factory: which family a config asks for, what it records, how many CTC steps it emits.

Two families share one interface, ``(B, 3, H, W)`` images -> ``(T, B, classes)`` logits, and the
dense CTC head (``src/ctc_head.py``):

- ``warpctc`` (``src/warpctc.py``): the original, an LSTM over raw pixel columns, ``T = W``;
- ``crnn`` (``src/crnn.py``): a convolutional backbone, then a recurrent neck, ``T = W / stride``.

This module is plain Python until :func:`create_network` is called, so that configs are
validated (and scripts fail on bad options) without importing MindSpore. Everything outside the
network modules asks here, and never which family it runs: the loss takes ``net.sequence_length``,
a checkpoint stores :func:`network_record`, and reading it back is :func:`stored_architecture`.
"""
from __future__ import annotations

import json
import math
from typing import Dict, Iterable, Mapping, Tuple

FAMILIES = ("warpctc", "crnn")
# The config fields that define each family's weights (a checkpoint records them; an option of the
# other family given with a checkpoint is an error).
ARCHITECTURE_FIELDS: Dict[str, Tuple[str, ...]] = {
    "warpctc": ("hidden_size", "bidirectional"),
    "crnn": ("crnn_channels", "crnn_convs_per_stage", "crnn_width_stride", "crnn_batch_norm", "crnn_hidden_size",
             "crnn_bidirectional"),
}
NETWORK_FIELDS = ("network",) + tuple(name for fields in ARCHITECTURE_FIELDS.values() for name in fields)
NETWORK_KEY = "network"        # a checkpoint's JSON entry naming its family and hyper-parameters
HIDDEN_KEY = "hidden_size"     # the original family's entry (checkpoints before NETWORK_KEY hold only this)
HEAD_PREFIX = "fc."            # the shared head's parameters: fresh when fine-tuning to another alphabet
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


def sequence_length(cfg, spec) -> int:
    """The CTC time steps the network of ``cfg`` emits for images of ``spec``."""
    if cfg.network == "crnn":
        return pooled(spec.width, halvings(cfg.crnn_width_stride))
    return spec.width


def check_architecture(cfg, spec) -> None:
    """ValueError naming the option when ``cfg`` asks for a network that cannot read captchas of ``spec``."""
    if cfg.network not in FAMILIES:
        raise ValueError(f"--network must be one of {', '.join(FAMILIES)}, got {cfg.network!r}")
    if cfg.network == "crnn":
        channels = parse_channels(cfg.crnn_channels)
        if cfg.crnn_width_stride not in (1, 2, 4, 8) or halvings(cfg.crnn_width_stride) > len(channels):
            raise ValueError(f"--crnn_width_stride must be 1, 2, 4 or 8, with at most one halving per stage of "
                             f"--crnn_channels ({len(channels)} stages), got {cfg.crnn_width_stride}")
        if pooled(spec.input_height, len(channels)) < 1:
            raise ValueError(f"--crnn_channels has {len(channels)} stages, each halving the height, too many for "
                             f"images {spec.input_height} pixels high (--captcha_height)")
        for name, high in (("crnn_convs_per_stage", 4), ("crnn_hidden_size", 4096)):
            if not 1 <= getattr(cfg, name) <= high:
                raise ValueError(f"--{name} must be in 1..{high}, got {getattr(cfg, name)}")
    steps = sequence_length(cfg, spec)
    if steps < 2 * spec.max_length:
        # CTC must be able to emit max_length characters with a blank between repeats.
        how = ("one per pixel column" if cfg.network == "warpctc"
               else f"--captcha_width {spec.width} / --crnn_width_stride {cfg.crnn_width_stride}")
        raise ValueError(f"--captcha_width {spec.width} gives the {cfg.network} network {steps} CTC steps ({how}), too "
                         f"few for --max_captcha_digits {spec.max_length}: CTC needs up to 2 per character (a blank "
                         f"between repeats), at least 2 x {spec.max_length} = {2 * spec.max_length}")


def architecture(cfg) -> Dict[str, object]:
    """The family and its hyper-parameters, by config name: what a checkpoint records."""
    return {"network": cfg.network, **{name: getattr(cfg, name) for name in ARCHITECTURE_FIELDS[cfg.network]}}


def network_record(arch: Mapping[str, object]) -> Dict[str, object]:
    """The checkpoint entries that say which network ``arch`` (:func:`architecture`, or ``net.architecture``) is.

    The original network with its original (unidirectional) LSTM records only its hidden size, as
    every checkpoint before the second family did, so its checkpoints stay byte for byte the same.
    """
    if arch["network"] == "warpctc" and not arch["bidirectional"]:
        return {HIDDEN_KEY: int(arch["hidden_size"])}
    return {NETWORK_KEY: json.dumps(dict(arch), sort_keys=True)}


def stored_architecture(source: str, params: Mapping) -> Dict[str, object]:
    """The family and hyper-parameters a checkpoint records (see :func:`network_record`), by config name.

    A checkpoint without the network entry is the original network: its hidden size is its entry,
    or, before that entry existed, the width of its dense layer. ValueError naming ``source`` for a
    damaged entry.
    """
    from src.config import CONFIG_FIELDS, _field_type

    if NETWORK_KEY not in params:
        stored: Dict[str, object] = {"network": "warpctc", "bidirectional": False}
        if HIDDEN_KEY in params:
            stored["hidden_size"] = int(params[HIDDEN_KEY].asnumpy().reshape(-1)[0])
        elif params.get("fc.weight") is not None and len(params["fc.weight"].shape) == 2:
            stored["hidden_size"] = int(params["fc.weight"].shape[1])
        return stored
    try:
        data = json.loads(str(params[NETWORK_KEY]))
        family = data["network"]
        if family not in FAMILIES:
            raise ValueError(f"unknown network {family!r}")
        stored = {"network": family}
        for name in ARCHITECTURE_FIELDS[family]:
            value, kind = data[name], _field_type(CONFIG_FIELDS[name])
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{name!r} must be {kind.__name__}, got {value!r}")
            stored[name] = value
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: damaged network record ({err})") from None
    return stored


def foreign_options(family: str, given: Iterable[str]) -> Tuple[str, ...]:
    """The options in ``given`` that configure the other family, not ``family``."""
    mine = set(ARCHITECTURE_FIELDS[family])
    return tuple(sorted(name for name in set(given) & set(NETWORK_FIELDS) if name != "network" and name not in mine))


def recurrent_dtype(platform: str):
    """The one platform difference of the networks: Ascend runs the recurrent layers in float16."""
    import mindspore as ms

    return ms.float16 if platform == "Ascend" else ms.float32


def create_network(cfg, platform: str = "CPU", spec=None):
    """The network of a :class:`src.config.Config` reading captchas of ``spec`` (default: the config's) on a
    platform: train, eval, predict, export and the hub build it here. ``net.spec`` says what it reads,
    ``net.sequence_length`` how many CTC steps it emits.
    """
    from src.captcha_spec import CaptchaSpec

    spec = spec or CaptchaSpec.from_config(cfg)
    check_architecture(cfg, spec)
    dtype = recurrent_dtype(platform)
    if cfg.network == "crnn":
        from src.crnn import CRNN

        if platform == "CPU":
            from src.runtime import cap_cpu_isa

            # On AVX-512 CPUs, MindSpore 2.10's oneDNN runs plain-layout convolutions with its reference
            # kernel, ~100x slower than its AVX2 one (bench/README.md). The original family is not
            # capped: its LSTM runs faster with AVX-512.
            cap_cpu_isa("AVX2")

        net = CRNN(spec.input_height, spec.num_classes, channels=parse_channels(cfg.crnn_channels),
                   convs_per_stage=cfg.crnn_convs_per_stage, width_stride=cfg.crnn_width_stride,
                   batch_norm=cfg.crnn_batch_norm, hidden_size=cfg.crnn_hidden_size,
                   bidirectional=cfg.crnn_bidirectional, recurrent_dtype=dtype)
    else:
        from src.warpctc import StackedRNN

        net = StackedRNN(input_size=spec.input_height * 3, hidden_size=cfg.hidden_size, num_classes=spec.num_classes,
                         lstm_dtype=dtype, forget_bias=cfg.forget_bias, bidirectional=cfg.bidirectional)
    net.sequence_length = sequence_length(cfg, spec)
    net.architecture = architecture(cfg)
    net.spec = spec       # what the outputs mean: decode with net.spec.greedy_decode(logits)
    return net
