"""MindSpore Hub entry point: ``create_network("warpctc", ...)``."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from src.config import CONFIG_FIELDS, Config
from src.warpctc import StackedRNN


def create_network(name: str, *args: Any, checkpoint_path: Optional[str] = None, platform: str = "CPU",
                   **kwargs: Any) -> StackedRNN:
    """The WarpCTC network exactly as training builds it.

    ``kwargs`` are :class:`src.config.Config` fields (e.g. ``hidden_size=512``); positional
    ``args`` go straight to :class:`StackedRNN` (``input_size, hidden_size, ...``) as with the
    original hub entry. With ``checkpoint_path`` the weights are loaded and the network is put in
    inference mode; the checkpoint says what it reads (alphabet, length, image size, hidden size),
    and a keyword that contradicts it is a ValueError. ``net.spec`` (a :class:`CaptchaSpec`)
    decodes the outputs: ``net.spec.greedy_decode(net(x).asnumpy())``. No MindSpore context is
    set: the network runs in the caller's mode, PyNative (MindSpore's default) or graph.
    """
    if name != "warpctc":
        raise NotImplementedError(f"{name} is not implemented in the WarpCTC hub entry (only 'warpctc')")
    from src.runtime import check_platform
    from src.warpctc import create_warpctc

    check_platform(platform)
    unknown = sorted(set(kwargs) - set(CONFIG_FIELDS))
    if args:
        net = StackedRNN(*args, **kwargs)
        if checkpoint_path:
            from src.checkpoint import load_into

            load_into(net, checkpoint_path)
            net.set_train(False)
        return net
    if unknown:
        raise TypeError(f"create_network: unknown option(s) {', '.join(unknown)}; known: {', '.join(CONFIG_FIELDS)}")
    cfg = dataclasses.replace(Config(), **kwargs)
    if checkpoint_path:
        from src.checkpoint import load_network

        return load_network(checkpoint_path, cfg, platform, given=kwargs)[0]
    return create_warpctc(cfg, platform)
