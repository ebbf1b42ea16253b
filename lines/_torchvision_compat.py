"""Let the pure-Python parts of torchvision import when its C extension cannot load.

The registry's torchvision wheel is a CUDA build; next to the CPU torch its ``_C.so`` fails to
load and ``import torchvision`` dies in two unguarded meta registrations ("operator
torchvision::nms does not exist"), which also breaks ``import open_clip``. Defining the two op
schemas — only when ``_C.so`` really fails to load — lets transforms and models import;
``torchvision.ops.nms`` stays unusable. On a machine with a matching torchvision this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_LIB = None  # keep the Library object alive: dropping it would unregister the schemas


def ensure_torchvision_importable() -> None:
    global _LIB
    if "torchvision" in sys.modules or _LIB is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    so = sorted(Path(spec.submodule_search_locations[0]).glob("_C*.so"))
    try:
        if so:
            torch.ops.load_library(str(so[0]))
        return  # loaded (or no extension at all): nothing to patch
    except OSError:
        pass
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already defined by someone else
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
