"""Command-line conventions shared by the entry points."""
from __future__ import annotations

import sys


def report_error(script: str, err: BaseException) -> int:
    """Print ``<script>: error: <first line of err>`` to stderr and return exit status 2."""
    text = str(err).strip()
    print(f"{script}: error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
    return 2
