"""Converting the task_vectors release's pickled whole modules (``torch.save(image_encoder)`` of
``src.modeling.ImageEncoder`` objects) into safetensors state dicts: explicit and opt-in, since
unpickling runs code. Every other checkpoint source is in :mod:`lines.clip.sources`."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lines import __version__
from lines.errors import LinesError
from lines.io import (
    save_state_dict,
    sha256_file,
)
from lines.io.outputs import plan_output

PathLike = str | os.PathLike[str]


class _Opaque:
    """Stands in for any class or function of a pickled module: keeps the state it is given."""

    _lines_global = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque(*args)

    # Pickled containers subclassing list/dict call these while loading.
    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_items", []).extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_map", {})[key] = value


_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "list",
    "tuple",
    "dict",
    "slice",
    "complex",
    "int",
    "float",
    "str",
    "bytes",
    "bytearray",
    "bool",
    "range",
    "object",
}


def _stub_unpickler_module(stubbed: dict[str, int]):
    """A ``pickle_module`` for ``torch.load`` whose Unpickler only lets torch's tensor-rebuild
    functions, storages, dtypes and a few builtins through; every other global (open_clip, the
    task_vectors ``src.modeling`` classes, torchvision transforms, torch.nn classes) becomes an
    inert stub, so no code from the file's classes runs and no such module needs importing."""
    import copyreg

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
                return getattr(__import__("builtins"), name)
            if module == "copyreg" and name in ("_reconstructor", "__newobj__"):
                return getattr(copyreg, name)
            if module == "_codecs" and name == "encode":
                import codecs

                return codecs.encode
            if module == "torch._utils" and name.startswith("_rebuild_"):
                return getattr(torch._utils, name)
            if module == "torch.nn.parameter" and name == "Parameter":
                return torch.nn.Parameter
            if module in ("torch", "torch.storage") and (
                name.endswith("Storage") or name in ("Size", "device")
            ):
                return getattr(__import__(module, fromlist=[name]), name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            stubbed[full] = stubbed.get(full, 0) + 1
            return type(name, (_Opaque,), {"_lines_global": full, "__module__": "lines_stub"})

    class Module:
        pass

    Module.Unpickler = Unpickler  # type: ignore[attr-defined]
    Module.load = pickle.load  # type: ignore[attr-defined]
    Module.loads = pickle.loads  # type: ignore[attr-defined]
    Module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    Module.__name__ = "lines_stub_pickle"
    return Module


def _module_state(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    """Walk a stubbed nn.Module tree the way ``Module.state_dict`` does: parameters, then
    persistent buffers, then children, depth first."""
    if depth > 64:
        raise LinesError("pickled module nests deeper than 64 levels")
    state = getattr(obj, "_state", None)
    if isinstance(obj, torch.nn.Module):  # a real module (when torch classes were kept)
        state = obj.__dict__
    if not isinstance(state, dict) or "_parameters" not in state:
        return
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in (state.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_state(child, f"{prefix}{name}.", out, depth + 1)


def convert_pickled_module(
    src: PathLike,
    dst: PathLike,
    *,
    allow_unsafe_unpickling: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a pickled whole ``nn.Module`` (the task_vectors release: ``torch.save(image_encoder)``
    of ``src.modeling.ImageEncoder`` objects needing open_clip 2.0.2; also their pickled
    classification heads) into a safetensors state dict ``dst`` plus a JSON manifest beside it.

    .. warning::
       **This unpickles the file.** Unpickling is how Python runs code hidden in a file: only do
       this for files you trust, once, and keep the safetensors result. The unpickler here only
       lets torch's tensor-rebuild functions, storages, dtypes and a few builtins through and
       replaces every other class (the file's own, open_clip's, torchvision's, torch.nn's) with an
       inert stub — so the file's classes never run and no old open_clip is needed — but pickle
       stays an attack surface (memory bombs, bugs in the rebuild paths) that no checker closes.
       Hence the explicit ``allow_unsafe_unpickling=True``, without which nothing is read.

    The keys are those ``module.state_dict()`` would give (``model.visual.…`` for a task_vectors
    ImageEncoder); :func:`prepare_checkpoint` then reads ``dst`` like a tall_masks file."""
    s, d = Path(src), Path(dst)
    if not allow_unsafe_unpickling:
        raise LinesError(
            f"{s}: converting a pickled module unpickles it, which runs code from the file; "
            "pass allow_unsafe_unpickling=True if you trust it"
        )
    if not s.is_file():
        raise LinesError(f"{s}: no such file")
    if d.suffix != ".safetensors":
        raise LinesError(f"{d}: the converted checkpoint must be a .safetensors file")
    with plan_output(d, [s], overwrite, recipe={"kind": "clip-convert-pickled-module"}) as plan:
        stubbed: dict[str, int] = {}
        try:
            obj = torch.load(
                s,
                map_location="cpu",
                weights_only=False,
                pickle_module=_stub_unpickler_module(stubbed),
            )
        except Exception as e:  # noqa: BLE001 - one line for any failure inside the unpickler
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise LinesError(f"{s}: cannot unpickle ({msg})") from None
        sd: dict[str, torch.Tensor] = {}
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if isinstance(k, str) and isinstance(v, torch.Tensor):
                    sd[k] = v.detach()
        else:
            _module_state(obj, "", sd)
        if not sd:
            kind = getattr(obj, "_lines_global", type(obj).__name__)
            raise LinesError(f"{s}: no module parameters found in the pickled {kind}")
        sd = {k: v.contiguous().clone() for k, v in sd.items()}
        meta = {
            "format": "pt",
            **plan.header_metadata(),
            "lines_converted_from": s.name,
        }
        save_state_dict(plan.weights, sd, meta)
        manifest = {
            "kind": "clip-convert-pickled-module",
            "lines_version": __version__,
            "source": {"path": str(s), "sha256": sha256_file(s)},
            "root_class": getattr(obj, "_lines_global", type(obj).__name__),
            "stubbed_globals": sorted(stubbed),
            "num_tensors": len(sd),
            "output": {"path": str(d), "sha256": sha256_file(plan.weights)},
        }
        plan.publish(manifest)
    return manifest
