"""The entry point every suite's stage command shares: run one stage, time it, and end a bad
input with one ``lines: error: …`` line and exit code 2 (what DVC and the flows see)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from lines.errors import LinesError


def run_stage(name: str, fn: Callable[[], object]) -> int:
    """Run ``fn``; 0 and a timing line on stderr, or 2 and the error's one line."""
    t0 = time.perf_counter()
    try:
        fn()
    except LinesError as e:
        print(f"lines: error: {e}", file=sys.stderr)
        return 2
    print(f"stage {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
