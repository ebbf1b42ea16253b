"""Merge methods, discovered from ``lines.merging.methods``: each module defines ``METHOD``.

Adding a method is one new module there plus its test; nothing registers itself by side effect.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from lines.merging import methods as _methods_pkg
from lines.merging.base import MergeMethod
from lines.plugins import discover, instantiate

__all__ = ["MergeMethod", "all_methods", "make_method"]


@cache
def all_methods() -> dict[str, type[MergeMethod]]:
    return discover(_methods_pkg, "METHOD")


def make_method(name: str, **params: Any) -> MergeMethod:
    """Instantiate a registered method with validated parameters (unknown names are errors)."""
    return instantiate("merge method", all_methods(), name, params)
