"""Make a profile current: ``python -m flows.profile NAME`` copies ``profiles/NAME.yaml`` to
``params.yaml`` (what ``dvc repro`` then runs); ``--set key=value`` (repeatable, YAML values)
applies overrides the way the flows do. ``python -m flows.profile --list`` lists the profiles;
``python -m flows.profile --check`` validates the current ``params.yaml`` (one line naming the
key, exit 2 when wrong). The committed ``params.yaml`` is ``profiles/default.yaml``: regenerate
it with ``python -m flows.profile default`` (``tests/test_params.py`` fails when they differ)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from lines.errors import LinesError
from lines.pipeline.config import validate_params
from orchestration.workspace import apply_params, read_params


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.profile", description=__doc__)
    ap.add_argument("name", nargs="?", help="profile name (profiles/NAME.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true", help="validate params.yaml, write nothing")
    ap.add_argument("--workspace", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    try:
        if a.check:
            validate_params(read_params(a.workspace))
            print("params.yaml: valid")
            return 0
    except LinesError as e:
        print(f"flows.profile: error: {e}", file=sys.stderr)
        return 2
    if a.list or not a.name:
        for p in sorted((a.workspace / "profiles").glob("*.yaml")):
            print(p.stem)
        return 0
    overrides = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        overrides[k] = yaml.safe_load(v)
    try:
        apply_params(a.workspace, a.name, overrides, validate_params)
    except (FileNotFoundError, KeyError, LinesError) as e:
        print(f"flows.profile: error: {e}", file=sys.stderr)
        return 2
    print(f"params.yaml <- profiles/{a.name}.yaml" + (f" with {overrides}" if overrides else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
