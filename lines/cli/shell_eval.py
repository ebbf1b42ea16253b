"""Greedy soup's evaluator on the command line: ``--eval-cmd 'python eval.py {model}'``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lines.errors import LinesError


def make_evaluate_command(template: str) -> Callable[[Path], float]:
    """An evaluate callback that runs a shell command (``{model}`` replaced by the checkpoint path)
    and reads a float from the last line it prints: lets the CLI's greedy soup call any evaluator."""
    import shlex
    import subprocess

    if "{model}" not in template:
        raise LinesError(
            "--eval-cmd must contain '{model}', replaced by the candidate checkpoint's path"
        )

    def evaluate(model: Path) -> float:
        cmd = template.replace("{model}", shlex.quote(str(model)))
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if res.returncode != 0:
            raise LinesError(
                f"--eval-cmd failed with exit {res.returncode}: {res.stderr.strip()[-200:]}"
            )
        lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
        try:
            return float(lines[-1].split()[-1])
        except (IndexError, ValueError):
            raise LinesError(
                f"--eval-cmd printed no number on its last line: {res.stdout[-200:]!r}"
            ) from None

    return evaluate
