"""One writer per folder: a lock file held with ``flock``, which the kernel drops when its holder dies.

A training holds its checkpoint folder (``.train.lock``); a labelling server holds its ``--label_dir``
(``.label.lock``), so that two of them never save over each other's labels.
"""
from __future__ import annotations

import fcntl
import os

LOCK_NAME = ".train.lock"
LABEL_LOCK_NAME = ".label.lock"


def _lock(folder: str, lock_name: str, what: str, advice: str) -> int:
    """Lock ``folder/lock_name`` for this process (see :func:`hold_folder`); ``what`` names the folder
    in errors, ``advice`` ends the one when another live process holds it."""
    path = os.path.join(folder, lock_name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as err:
        raise ValueError(f"{what} {folder}: cannot be written ({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "not recorded yet"
        os.close(fd)
        raise ValueError(f"{what} {folder}: in use by another {advice.format(pid=holder)}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as err:
        os.close(fd)
        raise ValueError(f"{what} {folder}: cannot be written ({err.strerror})") from None
    return fd


def hold_folder(folder: str) -> int:
    """Create ``folder`` if need be and lock it for this process; returns the lock's file descriptor.

    Keep the descriptor open for as long as the run writes to the folder (closing it, or the
    process ending in any way, SIGKILL included, releases the lock). The holder's pid is
    written into the lock file so that a refused run can name it. ValueError (one line,
    naming the folder) when the folder is a file, cannot be written, or is held by a live run.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"checkpoint folder {folder}: is a file, not a folder (--save_checkpoint_path)")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)     # private, as MindSpore makes checkpoint folders
    except OSError as err:
        raise ValueError(f"checkpoint folder {folder}: cannot be written ({err.strerror})") from None
    return _lock(folder, LOCK_NAME, "checkpoint folder",
                 "training (pid {pid}); wait for it to end or choose another --save_checkpoint_path")


def hold_label_folder(folder: str) -> int:
    """Lock an existing ``--label_dir`` for one labelling server, as :func:`hold_folder` does; ValueError,
    one line, when another live server labels it or the folder cannot be written."""
    return _lock(folder, LABEL_LOCK_NAME, "--label_dir",
                 "labelling server (pid {pid}): two servers on one folder would overwrite each other's "
                 "labels; stop that one or label another folder")
