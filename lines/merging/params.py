"""Method parameters as the pipelines name them: derived from each method's own declaration.

A method's dataclass fields are its parameters. In the params' ``merge`` section (and on the
merge stage's command line) field ``f`` of method ``m`` is the key ``<m>_<f>`` unless the method
declares another key in ``param_keys`` (the keys the pipelines used before, e.g. TIES's and
magnitude pruning's shared ``ties_density``, DARE's ``seed`` = the run's seed). A key that is
absent leaves the method's default. So a new method file is usable from ``dvc repro``, the CLIP
pipeline and the flows with no other edit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lines.merging import all_methods
from lines.merging.base import MergeMethod


def param_keys(cls: type[MergeMethod]) -> dict[str, str]:
    """Field → pipeline key of every parameter of ``cls``."""
    declared = dict(cls.param_keys)
    return {f.name: declared.get(f.name, f"{cls.name}_{f.name}") for f in dataclasses.fields(cls)}


def method_params(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``make_method(name, …)`` from a ``merge`` section ``cfg`` (keys
    that are absent or None keep the method's default; an unknown method name raises there)."""
    cls = all_methods().get(name)
    if cls is None:
        return {}
    out = {}
    for field, key in param_keys(cls).items():
        v = cfg.get(key)
        if v is not None:
            out[field] = tuple(v) if isinstance(v, list) else v
    return out


def pipeline_options() -> dict[str, Any]:
    """Every method parameter's pipeline key → its default (the union over methods; a key two
    methods share keeps the first default): what the merge stages accept beside the grids."""
    out: dict[str, Any] = {}
    for cls in all_methods().values():
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for field, key in param_keys(cls).items():
            d = defaults[field]
            out.setdefault(key, None if d is dataclasses.MISSING else d)
    return out
