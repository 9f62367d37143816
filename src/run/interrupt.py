"""Ctrl-C (SIGINT) and SIGTERM: one line saying what is saved and how to go on, then exit 128 + signal.

MindSpore's runtime installs C++ handlers for SIGINT and SIGTERM while a training runs (the
dataset engine and the graph executor); a Ctrl-C then ends the process as if by SIGTERM (exit
143), silently. Python handlers cannot win against those, so the two signals are blocked in
every thread instead, and a watcher thread takes them with ``sigwait``. A signal sent to the
process goes to a thread that does not block it, so the block must come before any other
thread exists: call :func:`block_exit_signals` before importing anything that may start one
(numpy starts OpenBLAS's threads at import, MindSpore its own); threads inherit the block.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, ContextManager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def block_exit_signals() -> None:
    """Block SIGINT and SIGTERM in this thread and in every thread started after it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def exit_on_signals(describe: Callable[[int], str], busy: Callable[[], ContextManager]) -> None:
    """On SIGINT/SIGTERM print ``describe(signal number)`` to stderr and exit with 128 + the number.

    Needs :func:`block_exit_signals` first. ``busy()`` returns the context to enter before
    exiting, e.g. a lock held while a checkpoint is being written, so that the exit never lands
    inside a save.
    """
    block_exit_signals()
    threading.Thread(target=_watch, args=(describe, busy), name="exit-on-signal", daemon=True).start()


def _watch(describe: Callable[[int], str], busy: Callable[[], ContextManager]) -> None:
    signum = signal.sigwait(SIGNALS)
    with busy():
        try:
            line = describe(signum)
        except Exception as err:  # the exit must happen whatever went wrong in the description
            line = f"interrupted by {signal.Signals(signum).name} ({err})"
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
        # No interpreter shutdown: MindSpore's threads would keep running; nothing is lost,
        # checkpoints are complete files (or not there at all).
        os._exit(128 + signum)
