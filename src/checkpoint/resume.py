"""Continuing a training: which checkpoint of a folder can continue this run, which ones it owns (and may
prune), and restoring weights and optimizer state."""
from __future__ import annotations

import os
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from mindspore import nn

from src.captcha_spec import SPEC_KEY
from src.checkpoint.files import CheckpointFile, checkpoint_files, load_into, read_checkpoint, run_prefixes, prefix_set
from src.checkpoint.model import HIDDEN_KEY, MODEL_FIELDS, NETWORK_KEY, model_conflict, resolve_model, stored_model
from src.checkpoint.records import (RUN_RECORD_KEYS, TRAINING_KEY, record_difference, check_run_record,
                                    training_of)
from src.warpctc_for_train import NOT_RESTORED

# The entries that tell which training wrote a checkpoint and whether it can continue this run.
_SCANNED = RUN_RECORD_KEYS + (TRAINING_KEY, SPEC_KEY, HIDDEN_KEY, NETWORK_KEY, "fc.weight")


class FolderCheckpoint(NamedTuple):
    """A checkpoint of a folder, as a run sees it."""

    file: CheckpointFile
    training: Optional[str]     # its training id ("" before ids existed); None when it cannot be read
    misfit: str                 # why it cannot continue this run; "" when it can


def scan_checkpoints(folder: str, record: Mapping[str, int], cfg,
                     prefix: Optional[Union[str, Sequence[str]]] = None) -> List[FolderCheckpoint]:
    """Every checkpoint of ``folder``, oldest position first, with its training and whether it fits
    this run's ``record`` (batch size, device count, steps per epoch) and model (``cfg``).

    Only the record entries are loaded; each file's CRC is checked (a damaged one is a misfit).
    """
    scanned = []
    for found in checkpoint_files(folder, run_prefixes(cfg) if prefix is None else prefix):
        training = None
        try:
            params = read_checkpoint(found.path, names=_SCANNED, warn=False)
            training = training_of(params)
            misfit = (record_difference(params, record)
                      or model_conflict(stored_model(found.path, params), cfg, MODEL_FIELDS, explicit=False))
        except ValueError as err:
            misfit = str(err).replace(f"checkpoint {found.path}: ", "", 1)
        scanned.append(FolderCheckpoint(found, training, misfit))
    return scanned


def _names(checkpoints: List[FolderCheckpoint], shown: int = 3) -> str:
    """The furthest ``shown`` of ``checkpoints`` by file name, with why they do not fit when they do not."""
    parts = [os.path.basename(c.file.path) + (f" ({c.misfit})" if c.misfit else "")
             for c in reversed(checkpoints[-shown:])]
    more = f" and {len(checkpoints) - shown} more" if len(checkpoints) > shown else ""
    return ", ".join(parts) + more


def resume_point(folder: str, record: Mapping[str, int], cfg,
                 prefix: Optional[Union[str, Sequence[str]]] = None) -> Tuple[str, str]:
    """``(checkpoint, notice)``: the checkpoint of ``folder`` furthest into training among those that
    can continue this run, and a one-line notice naming those skipped ("" when none was).

    ValueError when the folder holds none that fits, or fitting checkpoints of more than one
    training (which one to continue is the user's choice: a folder may be shared).
    """
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint folder {folder}: does not exist")
    scanned = scan_checkpoints(folder, record, cfg, prefix)
    if not scanned:
        named = " or ".join(f"{p}-<epoch>_<step>.ckpt" for p in prefix_set(prefix or run_prefixes(cfg)))
        raise ValueError(f"checkpoint folder {folder}: holds no {named} file")
    fitting = [c for c in scanned if not c.misfit]
    if not fitting:
        raise ValueError(f"checkpoint folder {folder}: none of its {len(scanned)} checkpoint(s) can continue this "
                         f"run: {_names(scanned, 1)}")
    furthest = {c.training: c for c in fitting}          # scanned is in training order: the last one wins
    if len(furthest) > 1:
        ends = sorted(furthest.values(), key=lambda c: c.file)
        raise ValueError(f"checkpoint folder {folder}: holds checkpoints of {len(furthest)} trainings that fit this "
                         f"run (the furthest of each: {_names(ends, len(ends))}); give --resume_checkpoint the "
                         "one to continue")
    skipped = [c for c in scanned if c.misfit]
    notice = (f"checkpoint folder {folder}: skipped {len(skipped)} checkpoint(s) that cannot continue this run: "
              f"{_names(skipped)}" if skipped else "")
    return fitting[-1].file.path, notice


def training_checkpoints(folder: str, training: Optional[str], record: Mapping[str, int], cfg,
                         prefix: Optional[Union[str, Sequence[str]]] = None) -> Tuple[List[str], List[str]]:
    """``(owned, others)``: the checkpoints of ``folder`` that ``training`` wrote in earlier runs (and
    that fit this run), which its pruning may delete, and all the others, which stay.

    ``training`` None is a new training: it owns nothing yet.
    """
    if not os.path.isdir(folder):
        return [], []
    if training is None:
        return [], [f.path for f in checkpoint_files(folder, run_prefixes(cfg) if prefix is None else prefix)]
    owned, others = [], []
    for scanned in scan_checkpoints(folder, record, cfg, prefix):
        mine = scanned.training == training and not scanned.misfit
        (owned if mine else others).append(scanned.file.path)
    return owned, others


class Resumed(NamedTuple):
    """What :func:`restore_training` continued from."""

    path: str           # the checkpoint loaded
    step: int           # its global step
    training: str       # the training it belongs to ("" before ids existed)
    notice: str         # the checkpoints of the folder it skipped, in one line ("" for none)


def restore_training(train_cell: nn.Cell, path: str, record: Mapping[str, int], cfg) -> Resumed:
    """Load weights and optimizer state to continue a training.

    ``path`` is a checkpoint or a folder (see :func:`resume_point`). ``record`` is this run's batch
    size, device count and steps per epoch, and ``cfg`` its model: a checkpoint that recorded
    other values is refused (its step would point elsewhere in the data, or its weights read
    another alphabet).
    """
    notice = ""
    if os.path.isdir(path):
        path, notice = resume_point(path, record, cfg)
    params = read_checkpoint(path)
    check_run_record(path, params, record)
    resolve_model(path, params, cfg, given=MODEL_FIELDS, hint="resume with the settings it was trained with",
                  explicit=False)
    load_into(train_cell, path, params=params, ignore=NOT_RESTORED)
    return Resumed(path, int(params["global_step"].asnumpy().reshape(-1)[0]), training_of(params), notice)

