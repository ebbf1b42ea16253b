"""Merge methods, discovered from ``lines.merging.methods``: each module defines ``METHOD``.

Adding a method is one new module there plus its test; nothing registers itself by side effect.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from functools import cache
from typing import Any

from lines.errors import LinesError
from lines.merging import methods as _methods_pkg
from lines.merging.base import MergeMethod

__all__ = ["MergeMethod", "all_methods", "make_method"]


@cache
def all_methods() -> dict[str, type[MergeMethod]]:
    found: dict[str, type[MergeMethod]] = {}
    for mod in pkgutil.iter_modules(_methods_pkg.__path__):
        m = importlib.import_module(f"{_methods_pkg.__name__}.{mod.name}")
        cls = getattr(m, "METHOD", None)
        if cls is not None:
            found[cls.name] = cls
    return dict(sorted(found.items()))


def make_method(name: str, **params: Any) -> MergeMethod:
    """Instantiate a registered method with validated parameters (unknown names are errors)."""
    methods = all_methods()
    if name not in methods:
        raise LinesError(f"unknown merge method '{name}' (known: {', '.join(methods)})")
    cls = methods[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(params) - fields)
    if extra:
        raise LinesError(
            f"method '{name}' has no parameter '{extra[0]}' (it takes: {', '.join(sorted(fields)) or 'none'})"
        )
    try:
        return cls(**params)
    except TypeError as e:
        raise LinesError(f"method '{name}': {e}") from None
