"""The original family, ``network: warpctc``: every pixel column is a time step of a 2-layer LSTM, then the
shared dense CTC head (the cell: ``src/warpctc.py``). ``T = W``."""
from __future__ import annotations

from src.models.registry import Family, ModelOption, register_model


def _check(arch, spec) -> None:
    if arch["hidden_size"] <= 0:
        raise ValueError(f"--hidden_size must be positive, got {arch['hidden_size']}")


def _build(arch, spec, platform: str):
    from src.ctc_head import recurrent_dtype
    from src.warpctc import StackedRNN

    return StackedRNN(input_size=spec.input_height * 3, hidden_size=arch["hidden_size"],
                      num_classes=spec.num_classes, lstm_dtype=recurrent_dtype(platform),
                      forget_bias=arch["forget_bias"], bidirectional=arch["bidirectional"])


register_model(Family(
    name="warpctc",
    summary="the original: an LSTM over pixel columns",
    options=(
        ModelOption("hidden_size", int, 512, "hidden size of both LSTM layers (network warpctc)"),
        ModelOption("bidirectional", bool, False, "network warpctc: its LSTM also reads right to left (false = the "
                                                  "original)"),
        ModelOption("forget_bias", float, 0.0, "added to every LSTM forget-gate bias at initialisation (0 = "
                                               "MindSpore's default init, the original)", recorded=False),
    ),
    check=_check,
    ctc_steps=lambda arch, spec: spec.width,
    steps_how=lambda arch, spec: "one per pixel column",
    build=_build,
))
