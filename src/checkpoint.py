"""Loading checkpoints with one-line errors instead of MindSpore stack traces."""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable

import mindspore as ms
from mindspore import nn


def read_checkpoint(path: str) -> Dict[str, ms.Parameter]:
    """Read a ``.ckpt`` file; ValueError naming the file when missing or unreadable."""
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path}: does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path}: is not a file")
    try:
        params = ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long texts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path}: corrupt or not a MindSpore checkpoint ({first[:200]})") from None
    if not params:
        raise ValueError(f"checkpoint {path}: holds no parameters")
    return params


def load_into(net: nn.Cell, path: str, params: Dict[str, ms.Parameter] | None = None,
              ignore: Iterable[str] = ()) -> Dict[str, ms.Parameter]:
    """Load every parameter of ``net`` from ``path``; names and shapes must all match.

    ``ignore`` lists checkpoint entries that are not loaded (e.g. a learning-rate table).
    Returns the checkpoint's full dictionary (extra entries such as ``step_num`` included).
    """
    params = read_checkpoint(path) if params is None else params
    ignore = set(ignore)
    missing, mismatched = [], []
    for param in net.get_parameters():
        if param.name in ignore:
            continue
        stored = params.get(param.name)
        if stored is None:
            missing.append(param.name)
        elif tuple(stored.shape) != tuple(param.shape):
            mismatched.append(f"{param.name} {tuple(stored.shape)} vs {tuple(param.shape)}")
    if missing:
        raise ValueError(f"checkpoint {path}: does not fit this network, missing {len(missing)} parameter(s) "
                         f"(e.g. {missing[0]})")
    if mismatched:
        raise ValueError(f"checkpoint {path}: was saved from a network of another shape "
                         f"({mismatched[0]}; check --hidden_size/--captcha_height)")
    to_load = {name: value for name, value in params.items() if name not in ignore}
    ms.load_param_into_net(net, to_load, strict_load=True)
    return params


_CKPT_NAME = re.compile(r"^(?P<prefix>.+?)(?:_\d+)?-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")


def latest_checkpoint(folder: str, prefix: str = "warpctc") -> str:
    """The checkpoint of ``folder`` furthest into training (by epoch, then step, then time)."""
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint folder {folder}: does not exist")
    found = []
    for name in os.listdir(folder):
        match = _CKPT_NAME.match(name)
        if match and match.group("prefix") == prefix:
            path = os.path.join(folder, name)
            found.append((int(match.group("epoch")), int(match.group("step")), os.path.getmtime(path), path))
    if not found:
        raise ValueError(f"checkpoint folder {folder}: holds no {prefix}-<epoch>_<step>.ckpt file")
    return max(found)[-1]


def load_network(path: str, cfg, platform: str = "CPU", hidden_size_given: bool = False):
    """A :class:`src.warpctc.StackedRNN` with the weights of ``path``, ready for inference.

    Unless the hidden size was set explicitly, it is read from the checkpoint, so a checkpoint
    loads with nothing but its path.
    """
    import dataclasses

    from src.warpctc import create_warpctc

    params = read_checkpoint(path)
    fc_weight = params.get("fc.weight")
    if not hidden_size_given and fc_weight is not None and len(fc_weight.shape) == 2:
        cfg = dataclasses.replace(cfg, hidden_size=int(fc_weight.shape[1]))
    net = create_warpctc(cfg, platform)
    load_into(net, path, params=params)
    net.set_train(False)
    return net
