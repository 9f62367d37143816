"""What a model is, as a checkpoint records it: the captcha spec and the network's architecture, written by
:func:`model_record` and read once by :func:`stored_model`; :func:`load_network` builds the model it describes."""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, Iterable, Mapping

from src.captcha_spec import READING_FIELDS, SPEC_KEY, CaptchaSpec, reading_given
from src.checkpoint.files import load_into, read_checkpoint
from src.models import architecture, architecture_fields, build_model, family_names, foreign_options, get_family

NETWORK_KEY = "network"        # a checkpoint's JSON entry naming its family and hyper-parameters
HIDDEN_KEY = "hidden_size"     # the original family's entry (checkpoints before NETWORK_KEY hold only this)


def network_record(arch: Mapping[str, object]) -> Dict[str, object]:
    """The checkpoint entries that say which network ``arch`` (``net.architecture``) is.

    The original network with its original (unidirectional) LSTM records only its hidden size, as
    every checkpoint before the second family did, so its checkpoints stay byte for byte the same.
    """
    if arch["network"] == "warpctc" and not arch["bidirectional"]:
        return {HIDDEN_KEY: int(arch["hidden_size"])}
    return {NETWORK_KEY: json.dumps(dict(arch), sort_keys=True)}


def stored_architecture(source: str, params: Mapping) -> Dict[str, object]:
    """The family and options a checkpoint records (see :func:`network_record`), by config name, their types
    checked against the family's declaration.

    A checkpoint without the network entry is the original network: its hidden size is its entry,
    or, before that entry existed, the width of its dense layer. ValueError naming ``source`` for a
    damaged entry.
    """
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
        if family not in family_names():
            raise ValueError(f"unknown network {family!r}")
        stored = {"network": family}
        for option in get_family(family).options:
            if not option.recorded:
                continue
            value, kind = data[option.name], option.type
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{option.name!r} must be {kind.__name__}, got {value!r}")
            stored[option.name] = value
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: damaged network record ({err})") from None
    return stored


# What a model is, stored in every checkpoint (training and released) so --checkpoint_path alone reads it:
# the captcha spec's fields and the network's (its family's recorded options, src/models/).
MODEL_FIELDS = tuple(CaptchaSpec().config_values()) + architecture_fields()


def model_record(spec: CaptchaSpec, arch: Mapping[str, object]) -> Dict[str, object]:
    """The checkpoint entries that describe the model: its captcha spec (JSON) and its network
    (``arch``: ``src.models.architecture(cfg)`` or ``net.architecture``)."""
    return {SPEC_KEY: spec.to_json(), **network_record(arch)}


def stored_model(path: str, params: Mapping) -> Dict[str, object]:
    """The model a checkpoint describes: its captcha spec's fields and its network's, by config name. One saved
    before the spec existed must be the original network reading the original's digits, as its dense layer's
    class count tells."""
    stored = stored_architecture(f"checkpoint {path}", params)
    if SPEC_KEY in params:
        stored.update(CaptchaSpec.from_json(str(params[SPEC_KEY]), source=f"checkpoint {path}").config_values())
        return stored
    fc_weight = params.get("fc.weight")
    if fc_weight is not None and len(fc_weight.shape) == 2:
        if int(fc_weight.shape[0]) != CaptchaSpec().num_classes:
            raise ValueError(f"checkpoint {path}: records no captcha spec and has {int(fc_weight.shape[0])} "
                             f"classes, not the digits' {CaptchaSpec().num_classes}; it cannot be read")
        stored["charset"] = CaptchaSpec().charset
        stored["normalization"] = CaptchaSpec().normalization      # the only one there was
        stored["resize"] = CaptchaSpec().resize
        stored["ignore_case"] = CaptchaSpec().ignore_case
        stored["read_charset"] = CaptchaSpec().read_charset
    return stored


def model_conflict(stored: Mapping[str, object], cfg, given: Iterable[str], explicit: bool = True) -> str:
    """The first ``given`` option of ``cfg`` that contradicts ``stored`` (a checkpoint's :func:`stored_model`;
    "" when none): a recorded value set otherwise, or, when the user gave them (``explicit``), an option
    of the other network family."""
    for name in sorted(set(given) & set(stored) - set(READING_FIELDS)):
        if getattr(cfg, name) != stored[name]:
            return f"--{name} {getattr(cfg, name)!r} conflicts with the checkpoint's {stored[name]!r}"
    foreign = foreign_options(str(stored["network"]), given) if explicit else ()
    if foreign:
        return f"--{foreign[0]} is not an option of its network, {stored['network']}"
    return ""


def resolve_model(path: str, params: Mapping, cfg, given: Iterable[str] = (),
                  hint: str = "drop the option: the checkpoint says what it reads", explicit: bool = True):
    """``(cfg, spec)`` of the model stored in ``path``: its recorded fields replace the config's.

    ``given`` names the options the user set explicitly (``explicit``; else the fields to compare,
    as a resume does); one that contradicts the checkpoint is a one-line error (a checkpoint reads
    only the captchas it was trained for).
    """
    stored = stored_model(path, params)
    conflict = model_conflict(stored, cfg, given, explicit)
    if conflict:
        raise ValueError(f"checkpoint {path}: {conflict}; {hint}")
    own = reading_given(given)
    cfg = dataclasses.replace(cfg, **{name: value for name, value in stored.items() if name not in own})
    return cfg, CaptchaSpec.from_config(cfg)


def load_network(path: str, cfg, platform: str = "CPU", given: Iterable[str] = ()):
    """``(net, spec)``: the network ``path`` records (either family) with its weights, ready for inference,
    and the :class:`CaptchaSpec` it reads. The checkpoint's own record (alphabet, length, image
    size, network) decides; an explicitly ``given`` option that contradicts it is an error.
    """
    params = read_checkpoint(path)
    cfg, spec = resolve_model(path, params, cfg, given)
    net = build_model(architecture(cfg), spec, platform)
    load_into(net, path, params=params)
    net.set_train(False)
    return net, spec

