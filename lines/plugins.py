"""Plug-ins discovered from a package: every module of it that defines ``ATTR`` (a class with a
``name``) contributes that class. Nothing registers itself by import side effect; adding a merge
method or a schedule is one module in its package."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from lines.errors import LinesError


def discover(package: ModuleType, attr: str) -> dict[str, Any]:
    """{cls.name: cls} over the modules of ``package`` that define ``attr``, sorted by name."""
    found: dict[str, Any] = {}
    for mod in pkgutil.iter_modules(package.__path__):
        m = importlib.import_module(f"{package.__name__}.{mod.name}")
        cls = getattr(m, attr, None)
        if cls is not None:
            found[cls.name] = cls
    return dict(sorted(found.items()))


def instantiate(
    kind: str, registry: Mapping[str, Any], name: str, params: Mapping[str, Any]
) -> Any:
    """``registry[name](**params)``, with one-line errors naming an unknown plug-in or parameter
    (``kind`` names what it is: "merge method", "schedule")."""
    if name not in registry:
        raise LinesError(f"unknown {kind} '{name}' (known: {', '.join(registry)})")
    cls = registry[name]
    short = kind.split()[-1]  # "method", "schedule": as the messages have always said
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(params) - fields)
    if extra:
        raise LinesError(
            f"{short} '{name}' has no parameter '{extra[0]}' "
            f"(it takes: {', '.join(sorted(fields)) or 'none'})"
        )
    try:
        return cls(**params)
    except TypeError as e:
        raise LinesError(f"{short} '{name}': {e}") from None
