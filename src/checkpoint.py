"""Checkpoint files: loading with one-line errors, crash-safe saving, naming, pruning and the run record."""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import mindspore as ms
from mindspore import nn

from src.captcha_spec import SPEC_KEY, CaptchaSpec
from src.runtime import quiet_mindspore_logs

# What a checkpoint's global step means depends on these; a resume must match them (see check_run_record).
RUN_RECORD_KEYS = ("batch_size", "device_num", "steps_per_epoch")


def read_checkpoint(path: str) -> Dict[str, ms.Parameter]:
    """Read a ``.ckpt`` file; ValueError naming the file when missing or unreadable."""
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path}: does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path}: is not a file")
    try:
        params = ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long texts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path}: corrupt or not a MindSpore checkpoint ({first[:200]})") from None
    if not params:
        raise ValueError(f"checkpoint {path}: holds no parameters")
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
                         f"({mismatched[0]}; check --hidden_size/--captcha_height)")
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


def checkpoint_files(folder: str, prefix: str = "warpctc") -> List[CheckpointFile]:
    """Every checkpoint of ``folder`` named after ``prefix``, whichever run wrote it, oldest position first."""
    found = []
    for name in os.listdir(folder):
        match = _CKPT_NAME.match(name)
        if match and match.group("prefix") == prefix:
            path = os.path.join(folder, name)
            try:
                mtime = os.path.getmtime(path)
            except FileNotFoundError:       # removed since listdir
                continue
            found.append(CheckpointFile(int(match.group("epoch")), int(match.group("step")),
                                        int(match.group("run") or 0), mtime, path))
    return sorted(found)


def latest_checkpoint(folder: str, prefix: str = "warpctc") -> str:
    """The checkpoint of ``folder`` furthest into training (by epoch, then step, then run, then time)."""
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint folder {folder}: does not exist")
    found = checkpoint_files(folder, prefix)
    if not found:
        raise ValueError(f"checkpoint folder {folder}: holds no {prefix}-<epoch>_<step>.ckpt file")
    return found[-1].path


def run_prefix(folder: str, prefix: str = "warpctc") -> str:
    """The file prefix of a new run in ``folder``: ``prefix``, or ``prefix_N`` after N earlier runs' files.

    MindSpore's naming: a run never writes a name an earlier run wrote.
    """
    runs = [f.run for f in checkpoint_files(folder, prefix)] if os.path.isdir(folder) else []
    return f"{prefix}_{max(runs) + 1}" if runs else prefix


def remove_unfinished_saves(folder: str, prefix: str = "warpctc") -> List[str]:
    """Delete the partial files of saves that a killed run left in ``folder``; return their names."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _UNFINISHED.match(name)
        if match and prefix in (match.group("a"), match.group("b")):
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


def prune_checkpoints(folder: str, keep: int, prefix: str = "warpctc", protect: str = "") -> List[str]:
    """Delete the checkpoints of ``folder`` furthest behind in training until ``keep`` remain.

    Every run's files in the folder count (``prefix`` and ``prefix_N``); ``protect`` (the file
    just written) is never deleted. Returns the deleted paths.
    """
    files = checkpoint_files(folder, prefix)
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


def check_run_record(path: str, params: Mapping, current: Mapping[str, int]) -> None:
    """ValueError naming the first setting in which this run differs from the run that wrote ``path``.

    The checkpoint's global step is a position in the data only for the batch size, device
    count and steps per epoch it was trained with.
    """
    saved = run_record(params)
    labels = {"batch_size": "--batch_size", "device_num": "device count", "steps_per_epoch": "steps per epoch"}
    for key in RUN_RECORD_KEYS:
        if key in saved and saved[key] != current[key]:
            hint = " (another dataset size?)" if key == "steps_per_epoch" else ""
            raise ValueError(f"checkpoint {path}: {labels[key]} {current[key]} differs from the checkpoint's "
                             f"{saved[key]}{hint}; resume with the settings it was trained with")


# What a model is, stored in every checkpoint (training and released) so --checkpoint_path alone reads it.
MODEL_FIELDS = tuple(CaptchaSpec().config_values()) + ("hidden_size",)


def model_record(spec: CaptchaSpec, hidden_size: int) -> Dict[str, object]:
    """The checkpoint entries that describe the model: its captcha spec (JSON) and hidden size."""
    return {SPEC_KEY: spec.to_json(), "hidden_size": int(hidden_size)}


def _stored_model(path: str, params: Mapping) -> Dict[str, object]:
    """The model fields a checkpoint records; for one saved before the spec existed, what its weights
    tell (hidden size, input height, class count), which must be the original's digits."""
    fc_weight = params.get("fc.weight")
    if SPEC_KEY in params:
        spec = CaptchaSpec.from_json(str(params[SPEC_KEY]), source=f"checkpoint {path}")
        stored = spec.config_values()
        if "hidden_size" in params:
            stored["hidden_size"] = int(params["hidden_size"].asnumpy().reshape(-1)[0])
        elif fc_weight is not None:
            stored["hidden_size"] = int(fc_weight.shape[1])
        return stored
    stored = {}
    if fc_weight is not None and len(fc_weight.shape) == 2:
        stored["hidden_size"] = int(fc_weight.shape[1])
        if int(fc_weight.shape[0]) != CaptchaSpec().num_classes:
            raise ValueError(f"checkpoint {path}: records no captcha spec and has {int(fc_weight.shape[0])} "
                             f"classes, not the digits' {CaptchaSpec().num_classes}; it cannot be read")
        stored["charset"] = CaptchaSpec().charset
        stored["normalization"] = CaptchaSpec().normalization      # the only one there was
    return stored


def resolve_model(path: str, params: Mapping, cfg, given: Iterable[str] = (),
                  hint: str = "drop the option: the checkpoint says what it reads"):
    """``(cfg, spec)`` of the model stored in ``path``: its recorded fields replace the config's.

    ``given`` names the options the user set explicitly; one that contradicts the checkpoint is a
    one-line error (a checkpoint reads only the captchas it was trained for).
    """
    import dataclasses

    stored = _stored_model(path, params)
    for name in sorted(set(given) & set(stored)):
        if getattr(cfg, name) != stored[name]:
            raise ValueError(f"checkpoint {path}: --{name} {getattr(cfg, name)!r} conflicts with the checkpoint's "
                             f"{stored[name]!r}; {hint}")
    cfg = dataclasses.replace(cfg, **stored)
    return cfg, CaptchaSpec.from_config(cfg)


def restore_training(train_cell: nn.Cell, path: str, record: Mapping[str, int], cfg) -> Tuple[str, int]:
    """Load weights and optimizer state to continue a training; return the file used and its global step.

    ``path`` is a checkpoint or a folder (its checkpoint furthest into training). ``record`` is this
    run's batch size, device count and steps per epoch, and ``cfg`` its model: a checkpoint that
    recorded other values is refused (its step would point elsewhere in the data, or its weights
    read another alphabet).
    """
    from src.warpctc_for_train import NOT_RESTORED

    if os.path.isdir(path):
        path = latest_checkpoint(path)
    params = read_checkpoint(path)
    check_run_record(path, params, record)
    resolve_model(path, params, cfg, given=MODEL_FIELDS, hint="resume with the settings it was trained with")
    load_into(train_cell, path, params=params, ignore=NOT_RESTORED)
    return path, int(params["global_step"].asnumpy().reshape(-1)[0])


def load_network(path: str, cfg, platform: str = "CPU", given: Iterable[str] = ()):
    """``(net, spec)``: a :class:`src.warpctc.StackedRNN` with the weights of ``path``, ready for inference,
    and the :class:`CaptchaSpec` it reads. The checkpoint's own record (alphabet, length, image
    size, hidden size) decides; an explicitly ``given`` option that contradicts it is an error.
    """
    from src.warpctc import create_warpctc

    params = read_checkpoint(path)
    cfg, spec = resolve_model(path, params, cfg, given)
    net = create_warpctc(cfg, platform, spec)
    load_into(net, path, params=params)
    net.set_train(False)
    return net, spec


def load_for_finetune(net: nn.Cell, path: str, spec: CaptchaSpec) -> str:
    """Load ``path``'s weights into ``net`` to start a new training (``--init_checkpoint``).

    A checkpoint of another alphabet gives its LSTM weights and leaves the dense layer fresh;
    weights that cannot transfer (hidden size, input height) are a ValueError. Returns a one-line
    notice of what was loaded.
    """
    params = read_checkpoint(path)
    stored = _stored_model(path, params)
    first = params.get("lstm.weight_ih_l0")
    if stored.get("hidden_size", net.hidden_size) != net.hidden_size:
        raise ValueError(f"checkpoint {path}: its LSTM cannot start this network (hidden size differs: "
                         f"{stored['hidden_size']} vs --hidden_size {net.hidden_size})")
    if first is not None and int(first.shape[1]) != net.input_size:
        raise ValueError(f"checkpoint {path}: its LSTM cannot start this network (input height differs: "
                         f"{int(first.shape[1]) // 3} vs {net.input_size // 3}, from --captcha_height)")
    if stored.get("charset", spec.charset) == spec.charset:
        load_into(net, path, params=params)
        return f"network weights from {path}"
    load_into(net, path, params=params, ignore=[p.name for p in net.get_parameters() if p.name.startswith("fc.")])
    return (f"LSTM weights from {path} (alphabet {stored['charset']!r}); the dense layer for this alphabet "
            f"{spec.charset!r} ({spec.num_classes} classes) starts fresh")
