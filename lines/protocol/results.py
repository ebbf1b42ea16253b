"""Writers and readers of the stage outputs: JSON written atomically, sweep CSVs with exact
floats (``repr``, so a CSV and its JSON hold the same numbers, whichever suite wrote them)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lines.errors import LinesError


def read_json(path: Path) -> Any:
    """A stage output; a missing file says which stage to run."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LinesError(f"{path}: missing (run the upstream stage first)") from None


def write_json(path: Path, obj: Any) -> None:
    # Imported here so that reading results and building reports needs no torch (lines.io does).
    from lines.io import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(path), obj)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows → CSV (columns in order of first appearance); floats as ``repr`` (exact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (repr(v) if isinstance(v, float) else v) for c, v in r.items()})
    tmp.replace(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a sweep CSV as strings; no rows for a missing file (a skipped stage)."""
    if not Path(path).is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))
