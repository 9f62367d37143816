"""The manifest ``process_data.py`` writes into every split it renders (``<split>/manifest.json``).

It records how the split was made (seed, count, image size, label lengths, alphabet, captcha
version), so that a train and a test folder rendered by different runs can be told apart:
``train.py`` and ``eval.py`` print :func:`describe_split`. Folders without a manifest (data a
user brought) are fine and described as ``None``; a manifest that cannot be read is an error.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

MANIFEST_NAME = "manifest.json"

# Field -> accepted type; the manifest must carry all of them.
FIELDS: Dict[str, type] = {
    "split": str,
    "count": int,
    "seed": int,
    "width": int,
    "height": int,
    "min_length": int,
    "max_length": int,
    "alphabet": str,
    "captcha_version": str,
    "created": str,
}
# Fields that decide what the network sees; two splits that differ in one cannot share a model.
IMAGE_FIELDS = ("width", "height", "min_length", "max_length", "alphabet", "captcha_version")


def write_manifest(folder: str, info: Dict[str, Any]) -> str:
    """Write ``info`` (every key of :data:`FIELDS`) as ``<folder>/manifest.json``; returns its path."""
    missing = sorted(set(FIELDS) - set(info))
    if missing:
        raise ValueError(f"manifest for {folder}: missing {', '.join(missing)}")
    path = os.path.join(folder, MANIFEST_NAME)
    data = {name: info[name] for name in FIELDS}
    if info.get("style"):
        # Only a non-default style is written, so default splits keep the manifest they always had.
        data["style"] = dict(info["style"])
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    return path


def read_manifest(folder: str, advice: str = "delete it or re-render the split") -> Optional[Dict[str, Any]]:
    """The manifest of a split folder, or None when it has none; ValueError naming a damaged one
    (the message ends with ``advice``, what the user can do about it)."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path):
        # A FIFO would block the open below forever; a folder or a broken link is no manifest either.
        raise ValueError(f"{path}: damaged dataset manifest (not a regular file); {advice}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the dataset manifest ({getattr(err, 'strerror', None) or err}); "
                         f"{advice}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: damaged dataset manifest (invalid JSON: {err.msg} at line {err.lineno}); "
                         f"{advice}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: damaged dataset manifest (expected a JSON object); {advice}")
    for name, kind in FIELDS.items():
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: damaged dataset manifest ({name!r} missing or not {kind.__name__}); {advice}")
    if not isinstance(data.get("style", {}), dict):
        raise ValueError(f"{path}: damaged dataset manifest ('style' is not an object); {advice}")
    return data


def describe_split(folder: str) -> Optional[str]:
    """One line on how ``folder`` was rendered, e.g.
    ``data/train: 50000 images, seed 1, 160x64, 1-4 chars of 0123456789, captcha 0.7.1``;
    None for a folder without a manifest."""
    info = read_manifest(folder)
    if info is None:
        return None
    line = (f"{folder}: {info['count']} images, seed {info['seed']}, {info['width']}x{info['height']}, "
            f"{info['min_length']}-{info['max_length']} chars of {info['alphabet']}, "
            f"captcha {info['captcha_version']}")
    if info.get("style"):
        line += ", style: " + ", ".join(f"{k}={v}" for k, v in sorted(info["style"].items()))
    present = sum(1 for name in os.listdir(folder) if name.lower().endswith(".png"))
    if present != info["count"]:
        line += f" (but the folder now holds {present} .png files)"
    return line


def check_compatible(train_dir: str, test_dir: str) -> Optional[str]:
    """A one-line warning when two rendered splits differ in how their images look; else None.

    Folders without a manifest are not compared. Different seeds are normal (each split has
    its own draws) and not reported.
    """
    train, test = read_manifest(train_dir), read_manifest(test_dir)
    if train is None or test is None:
        return None
    differ = [f"{name} {train[name]} vs {test[name]}" for name in IMAGE_FIELDS if train[name] != test[name]]
    if train.get("style", {}) != test.get("style", {}):
        differ.append(f"style {train.get('style') or 'default'} vs {test.get('style') or 'default'}")
    if not differ:
        return None
    return f"{train_dir} and {test_dir} were rendered differently: {', '.join(differ)}"


def dataset_report(folder: str, reference: Optional[str] = None) -> List[str]:
    """What train.py and eval.py print about their data: the split's line, and a warning when
    ``reference`` (e.g. the held-out folder next to the training one) was rendered differently."""
    lines = [f"dataset: {describe_split(folder) or f'{folder} (no manifest: not rendered by process_data.py)'}"]
    if reference is not None:
        lines.append(f"dataset: {describe_split(reference) or f'{reference} (no manifest)'}")
        warning = check_compatible(folder, reference)
        if warning:
            lines.append(f"warning: {warning}")
    return lines
