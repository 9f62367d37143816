"""Starting a new training from a checkpoint (``--init_checkpoint``): the model it gives the config, and its
weights, with the head rows of the characters both alphabets share."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional

import mindspore as ms
from mindspore import nn

from src.captcha_spec import SPEC_KEY, CaptchaSpec
from src.checkpoint.files import load_into, read_checkpoint
from src.checkpoint.model import HIDDEN_KEY, NETWORK_KEY, stored_model
from src.data.labels import fit_spec_to_folder
from src.models import architecture_fields, foreign_options

HEAD_PREFIX = "fc."            # the shared head's parameters: fresh when fine-tuning to another alphabet


def finetune_config(path: str, cfg, given: Iterable[str], dataset_path: Optional[str] = None):
    """``(cfg, notice)``: ``cfg`` with the model of ``path`` (``--init_checkpoint``) for every field the user
    did not set (``given``): its network family and hyper-parameters, so that starting from a checkpoint needs
    no network options, and its captcha spec (normalisation, resize, size, ...). With ``dataset_path``, the
    alphabet, length and width are worked out from that folder (:func:`src.dataset.fit_spec_to_folder`), and
    ``notice`` says what was chosen ("" otherwise). An explicit option is kept; :func:`load_for_finetune`
    names a network mismatch."""
    given = set(given)
    params = read_checkpoint(path, names=(NETWORK_KEY, HIDDEN_KEY, SPEC_KEY, "fc.weight"), warn=False)
    stored = stored_model(path, params)
    if "network" in given and stored["network"] != cfg.network:
        network = set(architecture_fields())
        stored = {name: value for name, value in stored.items() if name not in network}
    else:
        foreign = foreign_options(str(stored["network"]), given)
        if foreign:
            raise ValueError(f"checkpoint {path}: --{foreign[0]} is not an option of its network, "
                             f"{stored['network']}; drop the option, or give --network to start another network "
                             f"from its weights")
    # The base's --read_classes is a prior for the texts it was trained on; the new model learns the folder's.
    cfg = dataclasses.replace(cfg, **{name: value for name, value in stored.items()
                                      if name not in given and name != "read_classes"})
    if dataset_path is None:
        return cfg, ""
    values, notice = fit_spec_to_folder(dataset_path, CaptchaSpec.from_config(cfg), given)
    return dataclasses.replace(cfg, **values), notice


def load_for_finetune(net: nn.Cell, path: str, spec: CaptchaSpec, carry_head: bool = True) -> str:
    """Load ``path``'s weights into ``net`` (built by ``src.models.build_model``) to start a new
    training (``--init_checkpoint``).

    The checkpoint must be of the same network with the same hyper-parameters (else a ValueError
    naming the first difference). One of another alphabet gives everything but the dense head, whose
    rows it gives only for the blank and the characters both alphabets share (none when not
    ``carry_head``); the other rows start fresh. Returns a one-line notice of what was loaded.
    """
    params = read_checkpoint(path)
    stored = stored_model(path, params)
    for name, value in net.architecture.items():
        if name in stored and stored[name] != value:
            raise ValueError(f"checkpoint {path}: its {stored['network']} network cannot start this "
                             f"{net.architecture['network']} network ({name} differs: {stored[name]!r} vs --{name} "
                             f"{value!r})")
    if stored.get("charset", spec.charset) == spec.charset:
        load_into(net, path, params=params)
        return f"network weights from {path}"
    load_into(net, path, params=params,
              ignore=[p.name for p in net.get_parameters() if p.name.startswith(HEAD_PREFIX)])
    if not carry_head:
        return (f"{stored['network']} weights but the dense head from {path} (alphabet {stored['charset']!r}); the "
                f"head for this alphabet {spec.charset!r} ({spec.num_classes} classes) starts fresh (--fresh_head)")
    _carry_head_rows(net, params, str(stored["charset"]), spec)
    fresh = "".join(c for c in spec.charset if c not in stored["charset"])
    return (f"{stored['network']} weights from {path}, and of its dense head (alphabet {stored['charset']!r}) the "
            f"rows of the blank and of the {len(spec.charset) - len(fresh)} character(s) this alphabet "
            f"{spec.charset!r} shares with it; {len(fresh)} character(s) start fresh"
            + (f" ({fresh!r})" if fresh else ""))


def _carry_head_rows(net: nn.Cell, params: Mapping, old_charset: str, new: CaptchaSpec) -> None:
    """Copy into ``net``'s freshly initialised dense head the checkpoint's rows (weights and bias) of
    each class both alphabets have, matched by character, and of the blank.

    A new head that already reads the shared characters and knows where the blank goes keeps CTC's
    alignment, so only the new characters have to be learnt (a head that starts all fresh sits on
    the all-blank plateau first; docs/adapting.md, "Mixed case")."""
    pairs = [(new.charset.index(c), old_charset.index(c)) for c in new.charset if c in old_charset]
    pairs.append((new.blank, len(old_charset)))      # the blank is the class after the characters
    new_rows, old_rows = (list(side) for side in zip(*pairs))
    for param in net.get_parameters():
        if param.name.startswith(HEAD_PREFIX) and param.name in params:
            values = param.asnumpy().copy()
            values[new_rows] = params[param.name].asnumpy()[old_rows]
            param.set_data(ms.Tensor(values))

