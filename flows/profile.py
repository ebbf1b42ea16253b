"""Make a profile current: ``python -m flows.profile NAME`` copies ``profiles/NAME.yaml`` to
``params.yaml`` (what ``dvc repro`` then runs); ``--set key=value`` (repeatable, YAML values)
applies overrides the way the flows do. ``python -m flows.profile --list`` lists the profiles."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from orchestration.workspace import apply_params


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.profile", description=__doc__)
    ap.add_argument("name", nargs="?", help="profile name (profiles/NAME.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--workspace", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    if a.list or not a.name:
        for p in sorted((a.workspace / "profiles").glob("*.yaml")):
            print(p.stem)
        return 0
    overrides = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        overrides[k] = yaml.safe_load(v)
    try:
        apply_params(a.workspace, a.name, overrides)
    except (FileNotFoundError, KeyError) as e:
        print(f"flows.profile: error: {e}", file=sys.stderr)
        return 2
    print(f"params.yaml <- profiles/{a.name}.yaml" + (f" with {overrides}" if overrides else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
