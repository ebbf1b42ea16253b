"""Random checkpoints with the exact keys and shapes of open_clip image towers, for the merge
benchmark. Shapes come from ``clip_shapes.json`` (generated once with open_clip
``create_model(name, pretrained=None)``), so nothing here needs open_clip.

θ_0: N(0, 0.02²) everywhere (LayerNorm weights 1 + that). Fine-tuned model i: θ_0 + τ_i with
τ_i = s(key)·N(0, 1), where the scale s grows with depth (1e-3 at the input, 3e-3 at the output),
so a global top-k threshold differs from per-tensor ones, as in real task vectors. Every other
model leaves ``visual.positional_embedding`` untouched (τ = 0 exactly: ties at zero), and in
every model a tenth of ``visual.ln_pre.bias`` is +/-1e-3 exactly (ties at one magnitude).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPES = HERE / "clip_shapes.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_spec(model: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    spec = json.loads(SHAPES.read_text())[model]
    return [(k, tuple(s), DTYPES[d]) for k, s, d in spec["tensors"]]


def num_blocks(spec: list[tuple[str, tuple[int, ...], torch.dtype]]) -> int:
    ids = {int(m.group(1)) for k, _, _ in spec if (m := re.search(r"\.resblocks\.(\d+)\.", k))}
    return max(ids) + 1


def _scale(key: str, nblocks: int) -> float:
    m = re.search(r"\.resblocks\.(\d+)\.", key)
    if m:
        depth = (int(m.group(1)) + 1) / nblocks
    elif "ln_post" in key or key.endswith(".proj"):
        depth = 1.0
    else:
        depth = 0.0
    return 1e-3 * (1.0 + 2.0 * depth)


def paths(data_dir: Path, model: str, n: int) -> tuple[Path, list[Path]]:
    d = data_dir / model
    return d / "pretrained.safetensors", [d / f"ft_{i:02d}.safetensors" for i in range(n)]


def ensure(
    data_dir: Path, model: str, n: int, log=print, device: str = "cpu"
) -> tuple[Path, list[Path]]:
    """Write θ_0 and ft_00 … ft_{n-1} under ``data_dir/model`` unless they exist (written once,
    reused: a file is only kept once complete, via the writer's atomic rename). ``device='cuda'``
    draws the random numbers on the GPU (much faster; other values than a CPU draw)."""
    from lines.io import SafetensorsWriter, TensorInfo

    spec = load_spec(model)
    nb = num_blocks(spec)
    pre, fts = paths(data_dir, model, n)
    pre.parent.mkdir(parents=True, exist_ok=True)
    specs = [(k, TensorInfo(s, dt)) for k, s, dt in spec]
    meta = {"format": "pt", "producer": "benchmarks/ckpts.py"}

    def theta0(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(hash_key(key))
        t = torch.randn(shape, generator=g, device=device) * 0.02
        if re.search(r"ln_\w+\.weight$", key):
            t += 1.0
        return t

    if not pre.exists():
        t0 = time.perf_counter()
        with SafetensorsWriter(pre, specs, meta) as w:
            for k, s, dt in spec:
                w.write(k, theta0(k, s).to(dt).cpu())
            w.commit()
        log(f"wrote {pre} ({time.perf_counter() - t0:.1f} s)")
    for i, f in enumerate(fts):
        if f.exists():
            continue
        t0 = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(1000 + i)
        with SafetensorsWriter(f, specs, meta) as w:
            for k, s, dt in spec:
                t = theta0(k, s)
                if not (k.endswith("positional_embedding") and i % 2 == 1):
                    tau = torch.randn(s, generator=g, device=device).mul_(_scale(k, nb))
                    if k.endswith("ln_pre.bias"):
                        m = torch.arange(tau.numel(), device=device).reshape(s) % 10 == 0
                        tau[m] = torch.where(tau[m] >= 0, 1e-3, -1e-3)
                    t += tau
                w.write(k, t.to(dt).cpu())
            w.commit()
        log(f"wrote {f} ({time.perf_counter() - t0:.1f} s)")
    return pre, fts


def hash_key(key: str) -> int:
    """A stable seed per key (Python's hash() is salted per process)."""
    h = 0
    for c in key.encode():
        h = (h * 131 + c) % (1 << 61)
    return h


def merge_once(
    pre: Path, fts: list[Path], method: str, out: Path, device: str, resident: bool | None = None
) -> None:
    """One whole merge as the benchmarks time it: LiNeS β = 0.5 with automatic α, TIES at density
    0.2, no input hashing, the output replaced; ``resident`` as ``merge_checkpoints``."""
    from lines.engine import merge_checkpoints
    from lines.merging import make_method
    from lines.scaling import Scaling

    m = make_method("ties", density=0.2) if method == "ties" else make_method(method)
    merge_checkpoints(
        pre,
        fts,
        m,
        Scaling.lines(beta=0.5),
        out,
        device=device,
        progress=False,
        hash_inputs=False,
        overwrite=True,
        resident=resident,
    )
