#!/usr/bin/env python
"""Carry a checkpoint's shapes instead of its weights (a lent GPU takes 64 MiB per call).

    python benchmarks/shape_only.py describe model.safetensors shapes.json
    python benchmarks/shape_only.py materialise shapes.json model.safetensors

``materialise`` writes random weights of the described names, shapes and dtypes (normal, std
0.02, seed 0; norm ``*.weight`` vectors set to one; integer buffers 0, 1, 2, ...). For
throughput benchmarks only: a forward pass costs the same whatever the values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def describe(src: Path, dst: Path) -> None:
    with safe_open(str(src), "pt") as f:
        meta = {k: [list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()] for k in f.keys()}
    dst.write_text(json.dumps(meta, indent=0) + "\n")


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def materialise(src: Path, dst: Path) -> None:
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, (shape, dt) in json.loads(src.read_text()).items():
        dtype = _DTYPES[dt]
        if not dtype.is_floating_point:  # index buffers (position ids): 0, 1, 2, ... per row
            n = shape[-1] if shape else 1
            out[k] = (
                torch.arange(n, dtype=dtype).expand(*shape).contiguous()
                if shape
                else torch.zeros((), dtype=dtype)
            )
        elif len(shape) == 1 and k.endswith("weight") and ("norm" in k.lower()):
            out[k] = torch.ones(shape, dtype=dtype)
        else:
            out[k] = (torch.randn(shape, generator=g) * 0.02).to(dtype)
    save_file(out, str(dst))


if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    {"describe": describe, "materialise": materialise}[cmd](Path(a), Path(b))
