"""Command-line options of the merge stages, generated from the methods' declarations: the
coefficient grids ``--<method>_lambdas``/``--<method>_betas`` of every method and one option per
method parameter under its pipeline key (``lines.merging.params``)."""

from __future__ import annotations

import argparse
from collections.abc import Collection
from typing import Any

from lines.merging import all_methods
from lines.merging.params import pipeline_options


def _bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{s}'")


def add_method_options(
    p: argparse.ArgumentParser, *, skip: Collection[str] = (), grid_nargs: str = "+"
) -> None:
    """Add the per-method grids and parameters to a merge stage's parser. Parameters default to
    None (the method's own default applies); ``skip`` names keys the parser already has."""
    for m in all_methods():
        p.add_argument(f"--{m}_lambdas", nargs=grid_nargs, type=float, default=None)
        p.add_argument(f"--{m}_betas", nargs=grid_nargs, type=float, default=None)
    for key, default in pipeline_options().items():
        if key in skip:
            continue
        kw: dict[str, Any] = {"default": None, "help": f"method parameter (default {default!r})"}
        if isinstance(default, bool):
            kw["type"] = _bool
        elif isinstance(default, int | float):
            kw["type"] = type(default)
        elif isinstance(default, tuple | list):
            kw.update(nargs="+", type=float)
        p.add_argument(f"--{key}", **kw)
