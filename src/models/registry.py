"""The network registry (after mindocr's ``register_model`` / ``build_model``, kept small).

A family is one module of this package: it declares its options (their types, defaults and help,
which become config fields and command-line options), checks them against a captcha spec, says how
many CTC steps it emits, and builds its cell. Nothing else in the project asks which family it runs:
configs read the options from here, the loss takes ``net.sequence_length``, a checkpoint records
:func:`architecture`.

This module and the declarations are plain Python: configs are checked, and scripts fail on bad
options, without importing MindSpore; a family imports its cells only when it builds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple

from src.captcha_spec import CaptchaSpec
from src.models.geometry import check_ctc_steps

Architecture = Mapping[str, Any]   # {"network": family name, option: value, ...}


@dataclass(frozen=True)
class ModelOption:
    """One option of a family: a config field and a ``--<name>`` option. ``recorded`` options define the
    weights, so checkpoints store them; the others (an initialisation) matter only to a new training."""

    name: str
    type: type
    default: Any
    help: str
    recorded: bool = True


@dataclass(frozen=True)
class Family:
    """A network family: ``(B, 3, H, W)`` images -> ``(T, B, classes)`` logits.

    ``check(arch, spec)`` raises ValueError naming the option that cannot work; ``ctc_steps(arch, spec)``
    is T, and ``steps_how(arch, spec)`` says in words where T comes from; ``build(arch, spec, platform)``
    returns the cell.
    """

    name: str
    summary: str
    options: Tuple[ModelOption, ...]
    check: Callable[[Architecture, Any], None]
    ctc_steps: Callable[[Architecture, Any], int]
    steps_how: Callable[[Architecture, Any], str]
    build: Callable[[Architecture, Any, str], Any]

    @property
    def recorded(self) -> Tuple[str, ...]:
        """The option names a checkpoint records for this family."""
        return tuple(option.name for option in self.options if option.recorded)


_FAMILIES: Dict[str, Family] = {}


def register_model(family: Family) -> Family:
    """Add ``family``; a second family of the same name, or reusing another's option name, is a bug."""
    taken = {option.name: other.name for other in _FAMILIES.values() for option in other.options}
    clash = [option.name for option in family.options if option.name in taken]
    if family.name in _FAMILIES or clash:
        raise RuntimeError(f"network family {family.name!r} registered twice or reuses option(s) {clash}")
    _FAMILIES[family.name] = family
    return family


def family_names() -> Tuple[str, ...]:
    """The registered families, in registration order (the original first)."""
    return tuple(_FAMILIES)


def get_family(name: str) -> Family:
    """The family ``name``; ValueError naming ``--network`` when there is none."""
    if name not in _FAMILIES:
        raise ValueError(f"--network must be one of {', '.join(_FAMILIES)}, got {name!r}")
    return _FAMILIES[name]


def model_options() -> Tuple[ModelOption, ...]:
    """Every family's options, the fields of the config's model section."""
    return tuple(option for family in _FAMILIES.values() for option in family.options)


def architecture_fields() -> Tuple[str, ...]:
    """``network`` and every family's recorded options: the config fields a checkpoint records of a network."""
    return ("network",) + tuple(option.name for option in model_options() if option.recorded)


def architecture(cfg) -> Dict[str, Any]:
    """The family and its recorded options by config name, read from a config: what a checkpoint records."""
    family = get_family(cfg.network)
    return {"network": family.name, **{name: getattr(cfg, name) for name in family.recorded}}


def _options(cfg) -> Dict[str, Any]:
    """The architecture plus the unrecorded options (initialisation) of ``cfg``'s family."""
    family = get_family(cfg.network)
    return {"network": family.name, **{option.name: getattr(cfg, option.name) for option in family.options}}


def ctc_steps(arch: Architecture, spec) -> int:
    """The CTC time steps the network ``arch`` emits for images of ``spec``."""
    return get_family(str(arch["network"])).ctc_steps(arch, spec)


def check_model(arch: Architecture, spec) -> None:
    """ValueError naming the option when the network ``arch`` cannot read captchas of ``spec``: its family's own
    checks, then whether its CTC steps can spell the longest label."""
    family = get_family(str(arch["network"]))
    family.check(arch, spec)
    check_ctc_steps(family.ctc_steps(arch, spec), family.name, family.steps_how(arch, spec), spec)


def foreign_options(family: str, given) -> Tuple[str, ...]:
    """The options in ``given`` that configure another family than ``family``."""
    mine = {option.name for option in get_family(family).options}
    names = {option.name for option in model_options()}
    return tuple(sorted(name for name in set(given) & names if name not in mine))


def build_model(arch: Architecture, spec, platform: str = "CPU"):
    """The cell of the network ``arch`` reading captchas of ``spec`` on ``platform``, fresh weights.

    ``net.spec`` says what it reads, ``net.sequence_length`` how many CTC steps it emits and
    ``net.architecture`` what a checkpoint records of it.
    """
    check_model(arch, spec)
    family = get_family(str(arch["network"]))
    values = {option.name: arch.get(option.name, option.default) for option in family.options}
    net = family.build({"network": family.name, **values}, spec, platform)
    net.sequence_length = family.ctc_steps(arch, spec)
    net.architecture = {"network": family.name, **{name: values[name] for name in family.recorded}}
    net.spec = spec       # what the outputs mean: decode with src.decode.greedy_decode(net.spec, logits)
    return net


def create_network(cfg, platform: str = "CPU", spec=None):
    """:func:`build_model` for the network a config asks for (``spec`` by default the config's): train, the hub
    and the tests build it here."""
    return build_model(_options(cfg), spec or CaptchaSpec.from_config(cfg), platform)
