"""The ``lines`` command: inspect blocks, edit one model, merge many, interpolate, apply a saved
task vector. Every bad input ends with one line on stderr and exit code 2; nothing is written.

``parser`` builds the command line, ``commands`` runs each subcommand, ``shell_eval`` turns
``--eval-cmd`` into greedy soup's evaluator."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from lines.cli.commands import COMMANDS, check_usual
from lines.cli.parser import EXIT_BAD_INPUT, build_parser
from lines.errors import LinesError

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]


class StderrLines(logging.Handler):
    """Shows the library's log lines (e.g. stale temporaries it removed) as ``lines: …`` on the
    current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"lines: {record.getMessage()}", file=sys.stderr)


def log_to_stderr() -> None:
    logger = logging.getLogger("lines")
    if not any(isinstance(h, StderrLines) for h in logger.handlers):
        logger.addHandler(StderrLines())
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_to_stderr()
    try:
        check_usual(args)
        return COMMANDS[args.command](args)
    except LinesError as e:
        print(f"lines: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # anything the library did not word itself: still one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"lines: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lines: interrupted; nothing was written", file=sys.stderr)
        return 130
