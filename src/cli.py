"""Command-line conventions shared by the entry points: one-line errors, stdout, progress lines."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Iterable


def report_error(script: str, err: BaseException) -> int:
    """Print ``<script>: error: <first line of err>`` to stderr and return exit status 2."""
    text = str(err).strip()
    print(f"{script}: error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
    return 2


def write_stdout(lines: Iterable[str]) -> None:
    """Print ``lines`` on stdout and flush them; a stdout that cannot take them is :func:`stdout_error`'s.

    A closed stdout (``>&-``: Python's ``sys.stdout`` is None) is a ValueError too.
    """
    stream = sys.stdout
    if stream is None:
        raise ValueError("standard output is closed: there is nowhere to write the results")
    try:
        for line in lines:
            stream.write(f"{line}\n")
        stream.flush()
    except OSError as err:
        raise stdout_error(err) from None


def stdout_error(err: OSError) -> ValueError:
    """Handle ``err``, a failed write to stdout, as Unix tools do.

    A reader that has gone (``| head -1``) ends the process at once, quietly, killed by SIGPIPE
    as grep is (status 141 in the shell). Any other failure (``> /dev/full``) gives the ValueError
    naming stdout, for the entry point's one-line error.
    """
    if isinstance(err, BrokenPipeError):
        # Python ignores SIGPIPE and raises this instead; the default action ends the process.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.raise_signal(signal.SIGPIPE)
    where = ""
    with contextlib.suppress(OSError, ValueError):
        where = f" ({os.readlink(f'/proc/self/fd/{sys.stdout.fileno()}')})"
    with contextlib.suppress(OSError, ValueError):
        # The interpreter flushes stdout again at exit: what it still buffers then goes nowhere,
        # instead of a second report after the error line.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return ValueError(f"cannot write the results to standard output{where}: {err.strerror or err}")


class Progress:
    """``<label>: done/total images (N images/s)`` lines on stderr during a pass over images.

    A line every ``interval`` seconds and one at the end: a 10,000-image evaluation (~80 s on
    2 cores) shows about 15 lines, a run of a few seconds only the last; stdout is left to the
    results.
    """

    def __init__(self, label: str, total: int, quiet: bool = False, interval: float = 5.0):
        self.label = label
        self.total = total
        self.quiet = quiet
        self.interval = interval
        self.done = 0
        self._start = self._last = time.monotonic()

    def add(self, count: int) -> None:
        """Count ``count`` more images as done; print a line when one is due."""
        self.done += count
        now = time.monotonic()
        if self.quiet or (self.done < self.total and now - self._last < self.interval):
            return
        rate = self.done / max(now - self._start, 1e-9)
        print(f"{self.label}: {self.done}/{self.total} images ({rate:.0f} images/s)", file=sys.stderr, flush=True)
        self._last = now
