"""MindSpore Hub entry point: ``create_network("warpctc", ...)`` or ``create_network("crnn", ...)``."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from mindspore import nn

from src.config import Config, validate
from src.models import family_names


def create_network(name: str, *args: Any, checkpoint_path: Optional[str] = None, platform: str = "CPU",
                   **kwargs: Any) -> nn.Cell:
    """A network exactly as training builds it. ``name`` is ``warpctc`` (this model: the original
    network unless the keyword ``network=`` or the checkpoint says ``crnn``) or ``crnn`` (the
    convolutional family).

    ``kwargs`` are :class:`src.config.Config` fields (e.g. ``hidden_size=512``); positional
    ``args`` go straight to the original's :class:`src.warpctc.StackedRNN` (``input_size,
    hidden_size, ...``) as with the original hub entry. With ``checkpoint_path`` the weights are
    loaded and the network is put in inference mode; the checkpoint says which network it is and
    what it reads (alphabet, length, image size, hyper-parameters), and a keyword that contradicts
    it is a ValueError. ``net.spec`` (a :class:`CaptchaSpec`) decodes the outputs:
    ``src.decode.greedy_decode(net.spec, net(x).asnumpy())``. No MindSpore context is set: the network runs in
    the caller's mode, PyNative (MindSpore's default) or graph.
    """
    if name not in family_names():
        raise NotImplementedError(f"{name} is not implemented in the WarpCTC hub entry "
                                  f"(only {', '.join(family_names())})")
    from src.run.runtime import check_platform

    check_platform(platform)
    if args:
        if name != "warpctc":
            raise TypeError("create_network: positional arguments build the original StackedRNN; give the crnn "
                            "network's options as keywords")
        from src.warpctc import StackedRNN

        net = StackedRNN(*args, **kwargs)
        if checkpoint_path:
            from src.checkpoint.files import load_into

            load_into(net, checkpoint_path)
            net.set_train(False)
        return net
    known = [f.name for f in dataclasses.fields(Config)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"create_network: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if name == "crnn" and kwargs.setdefault("network", "crnn") != "crnn":
        raise ValueError(f"create_network('crnn', network={kwargs['network']!r}): two different networks")
    cfg = dataclasses.replace(Config(), **kwargs)
    if checkpoint_path:
        from src.checkpoint.model import load_network

        # A network asked for (by name or keyword) must be the checkpoint's; "warpctc" alone reads
        # whichever network the checkpoint holds.
        return load_network(checkpoint_path, cfg, platform, given=kwargs)[0]
    from src.models import create_network as build

    return build(validate(cfg), platform)
