"""One training per checkpoint folder: a lock file held with ``flock``, which the kernel drops when its holder dies."""
from __future__ import annotations

import fcntl
import os

LOCK_NAME = ".train.lock"


def hold_folder(folder: str) -> int:
    """Create ``folder`` if need be and lock it for this process; returns the lock's file descriptor.

    Keep the descriptor open for as long as the run writes to the folder (closing it, or the
    process ending in any way, SIGKILL included, releases the lock). The holder's pid is
    written into the lock file so that a refused run can name it. ValueError (one line,
    naming the folder) when the folder is a file, cannot be written, or is held by a live run.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"checkpoint folder {folder}: is a file, not a folder (--save_checkpoint_path)")
    path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)     # private, as MindSpore makes checkpoint folders
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise ValueError(f"checkpoint folder {folder}: cannot be written ({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "not recorded yet"
        os.close(fd)
        raise ValueError(f"checkpoint folder {folder}: in use by another training (pid {holder}); wait for it "
                         "to end or choose another --save_checkpoint_path") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as err:
        os.close(fd)
        raise ValueError(f"checkpoint folder {folder}: cannot be written ({err.strerror})") from None
    return fd
