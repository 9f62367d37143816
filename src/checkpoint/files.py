"""Checkpoint files: reading with the CRC checked and one-line errors, loading into a network, crash-safe
saving, the names runs give them, and pruning."""
from __future__ import annotations

import binascii
import os
import re
import sys
from typing import Collection, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

import mindspore as ms
from mindspore import nn

from src.run.runtime import quiet_mindspore_logs

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


def prefix_set(prefix: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    return (prefix,) if isinstance(prefix, str) else tuple(prefix)


def checkpoint_files(folder: str, prefix: Union[str, Sequence[str]] = "warpctc") -> List[CheckpointFile]:
    """Every checkpoint of ``folder`` named after ``prefix`` (or one of several), whichever run wrote it,
    oldest position first."""
    prefixes = prefix_set(prefix)
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
    prefixes = prefix_set(prefix)
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

