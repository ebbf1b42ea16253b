"""Layer-scaling schedules λ(ℓ), discovered from this package: each module defines ``SCHEDULE``.

Adding a schedule is one new module here plus its test; the CLI (``--schedule NAME[:k=v,…]``,
``lines schedules``), the engine and the manifests pick it up. ``linear`` is LiNeS and the default.
"""

from __future__ import annotations

import sys
import typing
from functools import cache
from typing import Any

from lines.errors import LinesError
from lines.plugins import discover, instantiate
from lines.schedules.base import BlockNorms, Schedule

__all__ = ["BlockNorms", "Schedule", "all_schedules", "make_schedule", "parse_schedule"]

DEFAULT = "linear"


@cache
def all_schedules() -> dict[str, type[Schedule]]:
    return discover(sys.modules[__name__], "SCHEDULE")


def make_schedule(name: str, **params: Any) -> Schedule:
    """Instantiate a registered schedule with validated parameters (unknown names are errors)."""
    return instantiate("schedule", all_schedules(), name, params)


def _convert(name: str, field: str, kind: Any, raw: str) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if typing.get_origin(kind) is tuple:
            return tuple(float(x) for x in raw.split("/"))
    except ValueError:
        raise LinesError(f"schedule '{name}': bad value for {field}: '{raw}'") from None
    return raw


def parse_schedule(spec: str | None) -> Schedule:
    """``NAME[:k=v,k=v]`` → a schedule; tuple values are '/'-separated (``piecewise:knots=0/0.5/1``)."""
    spec = (spec or DEFAULT).strip()
    name, _, rest = spec.partition(":")
    cls = all_schedules().get(name)
    if cls is None:
        raise LinesError(f"unknown schedule '{name}' (known: {', '.join(all_schedules())})")
    hints = typing.get_type_hints(cls)
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise LinesError(f"schedule '{name}': expected k=v, got '{item}'")
        key = key.strip()
        params[key] = _convert(name, key, hints.get(key, str), raw.strip())
    return make_schedule(name, **params)
