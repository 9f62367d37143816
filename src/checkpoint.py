"""Checkpoint files: loading with CRC checks and one-line errors, crash-safe saving, naming, which
training wrote them, pruning and the run record."""
from __future__ import annotations

import binascii
import os
import re
import secrets
import sys
from typing import Collection, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

import mindspore as ms
from mindspore import nn

from src.captcha_spec import READING_FIELDS, SPEC_KEY, CaptchaSpec
from src.network import (HEAD_PREFIX, HIDDEN_KEY, NETWORK_FIELDS, NETWORK_KEY, foreign_options, network_record,
                         stored_architecture)
from src.runtime import quiet_mindspore_logs

# What a checkpoint's global step means depends on these; a resume must match them (see check_run_record).
RUN_RECORD_KEYS = ("batch_size", "device_num", "steps_per_epoch")
# The training a checkpoint belongs to: drawn by a new training, kept by the runs that resume it.
# Checkpoints saved before it existed have none ("" below), and so have the runs resuming them.
TRAINING_KEY = "training_id"

# ms.save_checkpoint(crc_check=True) ends the file with b"crc_num" and the CRC32 (10 bytes, big
# endian) of every byte before it; ms.load_checkpoint(crc_check=True) recomputes that sum.
_CRC_MARK = b"crc_num"
_CRC_TRAILER = len(_CRC_MARK) + 10
_WARNED_NO_CRC: Set[str] = set()


def _crc_matches(path: str) -> Optional[bool]:
    """Whether the CRC that ends ``path`` matches its contents; None when it ends with no CRC."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size < _CRC_TRAILER:
            return None
        handle.seek(size - _CRC_TRAILER)
        trailer = handle.read(_CRC_TRAILER)
        if trailer[:len(_CRC_MARK)] != _CRC_MARK:
            return None
        handle.seek(0)
        crc, left = 0, size - _CRC_TRAILER
        while left > 0:
            chunk = handle.read(min(left, 1 << 22))
            if not chunk:
                return False
            crc = binascii.crc32(chunk, crc)
            left -= len(chunk)
    return crc == int.from_bytes(trailer[len(_CRC_MARK):], "big")


def read_checkpoint(path: str, names: Optional[Collection[str]] = None, warn: bool = True) -> Dict[str, ms.Parameter]:
    """Read a ``.ckpt`` file, its CRC checked; ValueError naming the file when missing, damaged or unreadable.

    ``names`` limits the entries returned (the CRC still covers the whole file). A file saved
    without a CRC (MindSpore's default) still loads, as MindSpore allows; with ``warn`` a
    one-line warning on stderr says, once per file, that damage to it cannot be detected.
    """
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path}: does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path}: is not a file")
    try:
        crc = _crc_matches(path)
    except OSError as err:
        raise ValueError(f"checkpoint {path}: cannot be read ({err.strerror})") from None
    if crc is False:
        raise ValueError(f"checkpoint {path}: damaged: its contents do not match the CRC it was saved with")
    try:
        # The CRC is checked above: MindSpore's own check reports a mismatch as a permission problem.
        with quiet_mindspore_logs():
            params = ms.load_checkpoint(path, choice_func=None if names is None else set(names).__contains__)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long texts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path}: corrupt or not a MindSpore checkpoint ({first[:200]})") from None
    if not params and names is None:
        raise ValueError(f"checkpoint {path}: holds no parameters")
    if crc is None and warn and os.path.abspath(path) not in _WARNED_NO_CRC:
        _WARNED_NO_CRC.add(os.path.abspath(path))
        print(f"warning: checkpoint {path}: saved without a CRC, so damage to it cannot be detected "
              "(export.py --file_format CKPT re-saves a model with one)", file=sys.stderr, flush=True)
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
                         f"({mismatched[0]}; check the network options and --captcha_height)")
    # Only weights: a checkpoint also holds text entries (its captcha spec) that are no parameters.
    to_load = {name: value for name, value in params.items()
               if name not in ignore and isinstance(value, ms.Parameter)}
    ms.load_param_into_net(net, to_load, strict_load=True)
    return params


_CKPT_NAME = re.compile(r"^(?P<prefix>.+?)(?:_(?P<run>\d+))?-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")
# A save in progress: MindSpore writes ``.<name>.tmp`` and renames it to ``.<name>.ckpt``, which
# save_checkpoint_file then renames to ``<name>.ckpt``. ``<name>.tmp`` is what MindSpore's own
# ModelCheckpoint (earlier versions of train.py) leaves behind.
_UNFINISHED = re.compile(r"^(?:\.?(?P<a>.+?)(?:_\d+)?-\d+_\d+\.tmp|\.(?P<b>.+?)(?:_\d+)?-\d+_\d+\.ckpt)$")


class CheckpointFile(NamedTuple):
    """A ``<prefix>[_<run>]-<epoch>_<step>.ckpt`` file; sorts by training position, then run, then age."""

    epoch: int
    step: int
    run: int        # 0 for <prefix>-..., N for <prefix>_N-... (the N-th later run in the folder)
    mtime: float
    path: str


def checkpoint_prefix(cfg) -> str:
    """The file prefix of a run's checkpoints: ``--checkpoint_prefix``, else the network's name."""
    return cfg.checkpoint_prefix or cfg.network


def run_prefixes(cfg) -> Tuple[str, ...]:
    """The prefixes whose checkpoints a run may continue or prune: its own, and ``warpctc``, which every
    run wrote before checkpoints were named by the network."""
    own = checkpoint_prefix(cfg)
    return (own,) if own == "warpctc" else (own, "warpctc")


def _prefix_set(prefix: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    return (prefix,) if isinstance(prefix, str) else tuple(prefix)


def checkpoint_files(folder: str, prefix: Union[str, Sequence[str]] = "warpctc") -> List[CheckpointFile]:
    """Every checkpoint of ``folder`` named after ``prefix`` (or one of several), whichever run wrote it,
    oldest position first."""
    prefixes = _prefix_set(prefix)
    found = []
    for name in os.listdir(folder):
        match = _CKPT_NAME.match(name)
        if match and match.group("prefix") in prefixes:
            path = os.path.join(folder, name)
            try:
                mtime = os.path.getmtime(path)
            except FileNotFoundError:       # removed since listdir
                continue
            found.append(CheckpointFile(int(match.group("epoch")), int(match.group("step")),
                                        int(match.group("run") or 0), mtime, path))
    return sorted(found)


def run_prefix(folder: str, prefix: str = "warpctc") -> str:
    """The file prefix of a new run in ``folder``: ``prefix``, or ``prefix_N`` after N earlier runs' files.

    MindSpore's naming: a run never writes a name an earlier run wrote.
    """
    runs = [f.run for f in checkpoint_files(folder, prefix)] if os.path.isdir(folder) else []
    return f"{prefix}_{max(runs) + 1}" if runs else prefix


def remove_unfinished_saves(folder: str, prefix: Union[str, Sequence[str]] = "warpctc") -> List[str]:
    """Delete the partial files of saves that a killed run left in ``folder``; return their names."""
    prefixes = _prefix_set(prefix)
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _UNFINISHED.match(name)
        if match and (match.group("a") in prefixes or match.group("b") in prefixes):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def _os_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def save_checkpoint_file(obj, path: str, append_dict: Optional[Mapping] = None) -> None:
    """Write a checkpoint (with CRC) so that ``path`` appears only once complete and on disk.

    The file is staged under a hidden name in the same folder, flushed with fsync, then renamed
    into place. On failure the staged files are removed and ValueError names ``path``.
    """
    folder, name = os.path.split(os.path.abspath(path))
    staged = os.path.join(folder, "." + name)
    partial = os.path.join(folder, "." + os.path.splitext(name)[0] + ".tmp")   # MindSpore's own temporary name
    try:
        # MindSpore logs a CRITICAL line of its own on a failed save; the ValueError below says it once.
        with quiet_mindspore_logs():
            ms.save_checkpoint(obj, staged, append_dict=dict(append_dict or {}), crc_check=True)
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, path)
        fd = os.open(folder, os.O_RDONLY)    # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as err:
        for leftover in (partial, staged):
            try:
                os.remove(leftover)
            except OSError:
                pass
        if isinstance(err, (OSError, RuntimeError, ValueError)):
            raise ValueError(f"checkpoint {path}: cannot be saved ({_os_reason(err)})") from None
        raise


def prune_checkpoints(folder: str, keep: int, owned: Collection[str], prefix: Union[str, Sequence[str]] = "warpctc",
                      protect: str = "") -> List[str]:
    """Delete the checkpoints of ``owned`` furthest behind in training until ``keep`` of them remain.

    ``owned`` lists the files this training may delete (see :func:`training_checkpoints`); every
    other checkpoint of ``folder`` stays and does not count. ``protect`` (the file just written)
    is never deleted. Returns the deleted paths.
    """
    owned = {os.path.abspath(path) for path in owned}
    files = [f for f in checkpoint_files(folder, prefix) if os.path.abspath(f.path) in owned]
    excess = len(files) - keep
    removed = []
    for old in files:
        if excess <= 0:
            break
        if os.path.abspath(old.path) == os.path.abspath(protect):
            continue
        os.remove(old.path)
        removed.append(old.path)
        excess -= 1
    return removed


def run_record(params: Mapping) -> Dict[str, int]:
    """The run record entries (RUN_RECORD_KEYS) a checkpoint holds; older checkpoints hold none."""
    return {key: int(params[key].asnumpy().reshape(-1)[0]) for key in RUN_RECORD_KEYS if key in params}


_RECORD_LABELS = {"batch_size": "--batch_size", "device_num": "device count", "steps_per_epoch": "steps per epoch"}


def _record_difference(params: Mapping, current: Mapping[str, int]) -> str:
    """The first run-record setting in which ``current`` differs from the checkpoint's ("" when none)."""
    saved = run_record(params)
    for key in RUN_RECORD_KEYS:
        if key in saved and saved[key] != current[key]:
            hint = " (another dataset size?)" if key == "steps_per_epoch" else ""
            return f"{_RECORD_LABELS[key]} {current[key]} differs from the checkpoint's {saved[key]}{hint}"
    return ""


def check_run_record(path: str, params: Mapping, current: Mapping[str, int]) -> None:
    """ValueError naming the first setting in which this run differs from the run that wrote ``path``.

    The checkpoint's global step is a position in the data only for the batch size, device
    count and steps per epoch it was trained with.
    """
    difference = _record_difference(params, current)
    if difference:
        raise ValueError(f"checkpoint {path}: {difference}; resume with the settings it was trained with")


def new_training_id() -> str:
    """The id of a new training, stored in its checkpoints (random: unique across folders and machines)."""
    return secrets.token_hex(8)


def training_of(params: Mapping) -> str:
    """The training a checkpoint belongs to; "" for one saved before trainings had ids."""
    return str(params.get(TRAINING_KEY, ""))


def training_record(training: str) -> Dict[str, str]:
    """The checkpoint entry naming the training (none for the runs that resume a checkpoint without one)."""
    return {TRAINING_KEY: training} if training else {}


# What a model is, stored in every checkpoint (training and released) so --checkpoint_path alone reads it:
# the captcha spec's fields and the network's (src/network.py).
MODEL_FIELDS = tuple(CaptchaSpec().config_values()) + NETWORK_FIELDS


def model_record(spec: CaptchaSpec, arch: Mapping[str, object]) -> Dict[str, object]:
    """The checkpoint entries that describe the model: its captcha spec (JSON) and its network
    (``arch``: ``src.network.architecture(cfg)`` or ``net.architecture``)."""
    return {SPEC_KEY: spec.to_json(), **network_record(arch)}


def _stored_model(path: str, params: Mapping) -> Dict[str, object]:
    """The model fields a checkpoint records; one saved before the spec existed must be the original
    network reading the original's digits, as its dense layer's class count tells."""
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




def _model_conflict(stored: Mapping[str, object], cfg, given: Iterable[str], explicit: bool = True) -> str:
    """The first ``given`` option of ``cfg`` that contradicts ``stored`` (a checkpoint's :func:`_stored_model`;
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
    import dataclasses

    stored = _stored_model(path, params)
    conflict = _model_conflict(stored, cfg, given, explicit)
    if conflict:
        raise ValueError(f"checkpoint {path}: {conflict}; {hint}")
    cfg = dataclasses.replace(cfg, **{name: value for name, value in stored.items()
                                      if not (name in READING_FIELDS and name in set(given))})
    return cfg, CaptchaSpec.from_config(cfg)


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
            misfit = (_record_difference(params, record)
                      or _model_conflict(_stored_model(found.path, params), cfg, MODEL_FIELDS, explicit=False))
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
        named = " or ".join(f"{p}-<epoch>_<step>.ckpt" for p in _prefix_set(prefix or run_prefixes(cfg)))
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
    from src.warpctc_for_train import NOT_RESTORED

    notice = ""
    if os.path.isdir(path):
        path, notice = resume_point(path, record, cfg)
    params = read_checkpoint(path)
    check_run_record(path, params, record)
    resolve_model(path, params, cfg, given=MODEL_FIELDS, hint="resume with the settings it was trained with",
                  explicit=False)
    load_into(train_cell, path, params=params, ignore=NOT_RESTORED)
    return Resumed(path, int(params["global_step"].asnumpy().reshape(-1)[0]), training_of(params), notice)


def load_network(path: str, cfg, platform: str = "CPU", given: Iterable[str] = ()):
    """``(net, spec)``: the network ``path`` records (either family) with its weights, ready for inference,
    and the :class:`CaptchaSpec` it reads. The checkpoint's own record (alphabet, length, image
    size, network) decides; an explicitly ``given`` option that contradicts it is an error.
    """
    from src.network import create_network

    params = read_checkpoint(path)
    cfg, spec = resolve_model(path, params, cfg, given)
    net = create_network(cfg, platform, spec)
    load_into(net, path, params=params)
    net.set_train(False)
    return net, spec


def finetune_config(path: str, cfg, given: Iterable[str], dataset_path: Optional[str] = None):
    """``(cfg, notice)``: ``cfg`` with the model of ``path`` (``--init_checkpoint``) for every field the user
    did not set (``given``): its network family and hyper-parameters, so that starting from a checkpoint needs
    no network options, and its captcha spec (normalisation, resize, size, ...). With ``dataset_path``, the
    alphabet, length and width are worked out from that folder (:func:`src.dataset.fit_spec_to_folder`), and
    ``notice`` says what was chosen ("" otherwise). An explicit option is kept; :func:`load_for_finetune`
    names a network mismatch."""
    import dataclasses

    from src.dataset import fit_spec_to_folder

    given = set(given)
    params = read_checkpoint(path, names=(NETWORK_KEY, HIDDEN_KEY, SPEC_KEY, "fc.weight"), warn=False)
    stored = _stored_model(path, params)
    if "network" in given and stored["network"] != cfg.network:
        stored = {name: value for name, value in stored.items() if name not in NETWORK_FIELDS}
    else:
        foreign = foreign_options(str(stored["network"]), given)
        if foreign:
            raise ValueError(f"checkpoint {path}: --{foreign[0]} is not an option of its network, "
                             f"{stored['network']}; drop the option, or give --network to start another network "
                             f"from its weights")
    cfg = dataclasses.replace(cfg, **{name: value for name, value in stored.items() if name not in given})
    if dataset_path is None:
        return cfg, ""
    values, notice = fit_spec_to_folder(dataset_path, CaptchaSpec.from_config(cfg), given)
    return dataclasses.replace(cfg, **values), notice


def load_for_finetune(net: nn.Cell, path: str, spec: CaptchaSpec, carry_head: bool = True) -> str:
    """Load ``path``'s weights into ``net`` (built by ``src.network.create_network``) to start a new
    training (``--init_checkpoint``).

    The checkpoint must be of the same network with the same hyper-parameters (else a ValueError
    naming the first difference). One of another alphabet gives everything but the dense head, whose
    rows it gives only for the blank and the characters both alphabets share (none when not
    ``carry_head``); the other rows start fresh. Returns a one-line notice of what was loaded.
    """
    params = read_checkpoint(path)
    stored = _stored_model(path, params)
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
