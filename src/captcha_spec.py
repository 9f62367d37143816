"""What a captcha is: alphabet, maximum length and image size, and the CTC coding built on them.

Everything that knows what a captcha looks like — the dataset, the network's class count, the
loss's blank, the decoding (``src/decode.py``), predict, export and the renderer — takes a
:class:`CaptchaSpec` instead of spelling digits, ``10``, ``11`` or ``64 * 3`` itself.

Class coding: character ``charset[i]`` is class ``i``; the CTC blank is the last class,
``len(charset)``. The digits default therefore keeps blank 10 and 11 classes, so checkpoints
trained before the spec existed load unchanged.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from functools import cached_property
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

DIGITS = "0123456789"
# Characters a label can never hold: they separate fields in labels.tsv and predict.py's output.
_FORBIDDEN = set("\t\r\n")
SPEC_KEY = "captcha_spec"      # name of the spec's JSON entry inside a checkpoint
# How an image is normalised before the network: "fixed", the original's dataset mean/std per
# channel; "per_image", each channel of each image to mean 0 and std 1 (robust to colours,
# brightness and contrast the training data did not have).
NORMALIZATIONS = ("fixed", "per_image")
# How an image of another size is fitted to the network's input: "stretch", the original's resize to
# exactly input_height x width; "keep_aspect", scaled to fit inside it with its aspect ratio kept,
# centred vertically, left-aligned, the rest filled with the mean of the scaled image's border
# (so captchas of any size and shape reach the network undistorted).
RESIZES = ("stretch", "keep_aspect")
# The largest alphabet (each character is a class of the network): far more than any captcha
# alphabet of Latin letters, so that a file pasted into --charset by mistake is one clear error.
MAX_CHARSET = 1000


# Spec fields that say how texts are read, not what the network was trained on: an explicit option wins
# over the checkpoint's value instead of contradicting it.
READING_FIELDS = ("ignore_case", "read_charset", "read_classes")


def reading_given(given: Iterable[str]) -> Tuple[str, ...]:
    """The reading fields a run sets itself, of the options it was ``given``: those given, and
    ``read_classes`` along with ``read_charset``: told the alphabet, a checkpoint's prior for captchas of an
    unknown one no longer applies (it is off unless given too)."""
    given = set(given)
    if "read_charset" in given:
        given.add("read_classes")
    return tuple(name for name in READING_FIELDS if name in given)


# Classes of characters, for labels that keep to part of an alphabet: --label_classes draws training labels
# from them, --read_classes reads with the prior that a captcha's text keeps to one of them.
CHARACTER_CLASSES = {"digits": str.isdigit, "lower": str.islower, "upper": str.isupper,
                     "all": lambda char: True}


def character_pools(text: str, charset: str, option: str, allow_empty: bool = False) -> Tuple[str, ...]:
    """``--label_classes`` / ``--read_classes`` -> one string of characters per entry.

    ``text`` is comma-separated entries of ``+``-joined class names (CHARACTER_CLASSES), e.g.
    ``"digits,lower+digits,upper+digits,all"``; each entry keeps the characters of ``charset`` in any of
    its classes, in the alphabet's order. An entry may repeat (it then weighs twice). Empty: ``()``.
    An entry with no character of ``charset`` is an error unless ``allow_empty``.
    """
    pools = []
    for entry in (part.strip() for part in text.split(",")) if text.strip() else ():
        names = [name.strip() for name in entry.split("+")]
        if any(name not in CHARACTER_CLASSES for name in names):
            raise ValueError(f"{option} {text!r}: {entry!r} is not '+'-joined class names; "
                             f"the classes are {', '.join(CHARACTER_CLASSES)}")
        pool = "".join(char for char in charset if any(CHARACTER_CLASSES[name](char) for name in names))
        if not pool and not allow_empty:
            raise ValueError(f"{option} {text!r}: {entry!r} holds no character of the alphabet {charset!r}")
        pools.append(pool)
    return tuple(pools)


@dataclass(frozen=True)
class CaptchaSpec:
    """What a model reads: ``charset`` (distinct characters), labels of 1..``max_length`` of them,
    images ``width`` x ``height`` pixels, normalised by ``normalization`` (see NORMALIZATIONS). With
    ``ignore_case``, texts (read and labelled) are compared and given in lower case: for captchas whose
    case means nothing, read by a model that tells the cases apart. With ``read_charset`` (a subset of
    ``charset``), only those characters are read: the scores of the others are dropped before decoding,
    for captchas of a smaller alphabet than the model's. With ``read_classes`` (``--read_classes``, e.g.
    ``digits,lower,upper,lower+digits,upper+digits,all``), a text is read with the prior that it keeps
    to one of those pools of characters (``src/decode.py``)."""

    charset: str = DIGITS
    max_length: int = 4
    width: int = 160
    height: int = 64
    normalization: str = NORMALIZATIONS[0]
    resize: str = RESIZES[0]
    ignore_case: bool = False
    read_charset: str = ""
    read_classes: str = ""

    def __post_init__(self):
        # A spec may come from a file (a checkpoint's JSON): a wrong type must fail here, naming the
        # field, not later inside decoding or the network.
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ValueError(f"{name!r} must be {kind.__name__}, got {value!r:.40} ({type(value).__name__})")
        if not self.charset:
            raise ValueError("--charset is empty: give the characters a captcha can hold, e.g. 0123456789")
        if len(self.charset) > MAX_CHARSET:
            raise ValueError(f"--charset has {len(self.charset)} characters, more than the {MAX_CHARSET} allowed "
                             f"(one network class each); it starts {self.charset[:20]!r}")
        repeated = sorted(char for char, count in Counter(self.charset).items() if count > 1)
        if repeated:
            raise ValueError(f"--charset {self.charset!r} repeats {''.join(repeated)!r}: every character "
                             "must appear once")
        bad = sorted(c for c in set(self.charset) if c in _FORBIDDEN or not c.isprintable() or c.isspace())
        if bad:
            raise ValueError(f"--charset {self.charset!r} holds unprintable or blank character(s) {bad!r}")
        for name in ("max_length", "width", "height"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_OPTION[name]} must be positive, got {getattr(self, name)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"--resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        foreign = sorted(set(self.read_charset) - set(self.charset))
        if foreign:
            raise ValueError(f"--read_charset {self.read_charset!r} holds {''.join(foreign)!r}, which the model's "
                             f"alphabet {self.charset!r} does not")
        if self.read_classes and not any(self.class_pools):
            raise ValueError(f"--read_classes {self.read_classes!r} holds no character the model reads "
                             f"({self.read_charset or self.charset!r})")

    @cached_property
    def class_pools(self) -> Tuple[str, ...]:
        """``read_classes``' pools within the characters read (``read_charset`` or ``charset``); a pool with
        none of them (``upper`` when only digits are read) is empty and never read."""
        return character_pools(self.read_classes, self.read_charset or self.charset, "--read_classes",
                               allow_empty=True)

    @classmethod
    def from_config(cls, cfg) -> "CaptchaSpec":
        """The spec of a :class:`src.config.Config`: the one way a script gets its spec.

        ``src.config.validate`` builds it too, so a validated config never fails here.
        """
        return cls(charset=cfg.charset, max_length=cfg.max_captcha_digits, width=cfg.captcha_width,
                   height=cfg.captcha_height, normalization=cfg.normalization, resize=cfg.resize,
                   ignore_case=cfg.ignore_case, read_charset=cfg.read_charset,
                   read_classes=cfg.read_classes)

    def config_values(self) -> Dict[str, object]:
        """The :class:`src.config.Config` fields this spec is made of (the inverse of :meth:`from_config`)."""
        return {"charset": self.charset, "max_captcha_digits": self.max_length, "captcha_width": self.width,
                "captcha_height": self.height, "normalization": self.normalization, "resize": self.resize,
                "ignore_case": self.ignore_case, "read_charset": self.read_charset,
                "read_classes": self.read_classes}

    # -- the network's view ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Characters plus the CTC blank."""
        return len(self.charset) + 1

    @property
    def blank(self) -> int:
        return len(self.charset)

    @property
    def input_height(self) -> int:
        """Images are resized to a height that is a multiple of 16, as the original did."""
        return math.ceil(self.height / 16) * 16

    # -- labels ----------------------------------------------------------------------------------
    def check_label(self, label: str, source: str = "label") -> str:
        """``label`` if it is 1..max_length characters of the alphabet, else ValueError naming ``source``."""
        if not 1 <= len(label) <= self.max_length:
            raise ValueError(f"{source}: label {label!r} has {len(label)} characters, expected 1 to "
                             f"{self.max_length}")
        for char in label:
            if char not in self._index:
                raise ValueError(f"{source}: label {label!r} holds {char!r}, which is not in the alphabet "
                                 f"{self.charset!r}")
        return label

    @cached_property
    def _index(self) -> dict:
        return {c: i for i, c in enumerate(self.charset)}

    def encode(self, label: str, source: str = "label") -> np.ndarray:
        """``"407"`` -> ``[4, 0, 7, blank]``: int32 of length ``max_length``, right-padded with the blank."""
        self.check_label(label, source)
        index = self._index
        coded = np.full((self.max_length,), self.blank, dtype=np.int32)
        coded[:len(label)] = [index[c] for c in label]
        return coded

    def decode(self, coded: Sequence[int]) -> str:
        """Class indices -> text; the blank and anything outside the alphabet are dropped."""
        return self.folded("".join(self.charset[int(v)] for v in coded if 0 <= int(v) < self.blank))

    def folded(self, text: str) -> str:
        """``text`` as this spec gives texts: in lower case when it ignores case."""
        return text.lower() if self.ignore_case else text

    # -- storage ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        if data["resize"] == RESIZES[0]:
            del data["resize"]      # a stretching spec is stored as before the option existed
        for reading in READING_FIELDS:
            if not data[reading]:
                del data[reading]
        return json.dumps(data, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> "CaptchaSpec":
        """The spec :meth:`to_json` wrote. A spec written before ``normalization`` or ``resize`` existed
        reads as "fixed" and "stretch", the only ones there were."""
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in ("charset", "max_length", "width", "height")},
                       normalization=data.get("normalization", NORMALIZATIONS[0]),
                       resize=data.get("resize", RESIZES[0]), ignore_case=data.get("ignore_case", False),
                       read_charset=data.get("read_charset", ""), read_classes=data.get("read_classes", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{source}: damaged captcha spec ({err})") from None

    def describe(self) -> str:
        """One line for logs: ``1-4 of '0123456789', 160x64`` (plus ``, per_image normalisation``)."""
        text = f"1-{self.max_length} of {self.charset!r}, {self.width}x{self.height}"
        if self.resize != RESIZES[0]:
            text += ", any size fitted with its aspect kept"
        if self.ignore_case:
            text += ", case ignored"
        if self.read_charset:
            text += f", reading only {self.read_charset!r}"
        if self.read_classes:
            text += f", reading texts of one of {self.read_classes!r}"
        return text if self.normalization == NORMALIZATIONS[0] else f"{text}, {self.normalization} normalisation"


_OPTION = {"max_length": "max_captcha_digits", "width": "captcha_width", "height": "captcha_height"}
_FIELD_TYPES = {"charset": str, "max_length": int, "width": int, "height": int, "normalization": str,
                "resize": str, "ignore_case": bool, "read_charset": str, "read_classes": str}
