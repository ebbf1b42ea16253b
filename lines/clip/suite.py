"""The CLIP suite's evaluator: one image tower, the zero-shot heads, the cached splits.

:class:`Bench` is what the protocol (``lines.protocol``) evaluates — accuracy of an image-tower
state dict on a split of a list of tasks — and carries the protocol's :class:`Workbench` (θ_0 in
float32 on the device, task vectors through the engine, θ = θ_0 + λ(ℓ)τ) as ``wb``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lines.clip.fast import compile_mode_for, fast_eval_enabled
from lines.clip.prepare import Checkpoints, text_model_id
from lines.engine import resolve_device
from lines.errors import LinesError
from lines.protocol.results import read_json
from lines.protocol.suite import Workbench

HEADS_FILE = "heads.safetensors"
HEADS_INDEX = "heads.json"

# ----------------------------------------------------------------------------------------------
# Evaluation: one image tower, the heads, the cached splits


class Bench:
    """Accuracy of image-tower state dicts on tasks: the pretrained tower is built once, a state
    dict is loaded into it per evaluation point, the heads come from ``out/heads`` (else the
    content-keyed cache under ``cache_dir``, computed from ``ckpt/text.safetensors``) and the
    images from the preprocessed-tensor cache under ``cache_dir``."""

    def __init__(self, a: argparse.Namespace, ckpt: Path, heads_dir: Path | None = None):
        from lines.clip.evaluate import preprocess_for
        from lines.io import load_state_dict

        self.a = a
        self.ck = Checkpoints(ckpt)
        self.dev = resolve_device(a.device)
        self.quick_gelu = a.act == "quick_gelu"
        base = load_state_dict(self.ck.pretrained)
        if a.tower == "open_clip":
            from lines.clip.model import build_image_encoder as build
        else:  # the same module without importing open_clip (see lines.clip.tower)
            from lines.clip.tower import build_vision_tower as build
        self.encoder = build(base, heads=a.heads or None, quick_gelu=self.quick_gelu)
        self.encoder.eval().to(self.dev)
        self.preprocess = preprocess_for(self.encoder)
        del base
        self.heads_dir = Path(heads_dir) if heads_dir else None
        self._heads: dict[str, Any] = {}
        self._splits: dict[tuple[str, str], Any] = {}
        self._text_id: str | None = None
        # θ_0 in float32 on the device; task vectors merged on the same device.
        self.wb = Workbench(
            self.ck.pretrained,
            self,
            block_policy=a.block_policy,
            device=self.dev,
            engine_device=str(self.dev),
            dtype=torch.float32,
            scratch=Path(a.cache_dir) / "tmp",
        )
        self.calls = 0
        self.eval_seconds = 0.0
        self.images = 0
        self._visual: nn.Module | None = None
        self._cached: dict[tuple[str, str], Any] = {}
        # Sweeps on a GPU evaluate through a resident, low-precision, compiled copy of the tower
        # (lines.clip.fast, issue 13); the fp32 encoder stays for the learned baselines' grads.
        self.fast_eval = fast_eval_enabled(getattr(a, "fast_eval", "auto"), self.dev)
        self.compile_mode = compile_mode_for(getattr(a, "compile", "auto"), self.dev)
        self._fast: Any = None

    def close(self) -> None:
        if self._fast is not None:
            self._fast.release()
        self.wb.close()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # The workbench's θ_0, blocks and θ = θ_0 + λ(ℓ)τ, under the names scripts already use.
    @property
    def L(self) -> int:
        return self.wb.L

    @property
    def base(self) -> dict[str, torch.Tensor]:
        return self.wb.base

    @property
    def part(self) -> Any:
        return self.wb.part

    @property
    def tmp(self) -> Path:
        return self.wb.tmp

    # -- heads ---------------------------------------------------------------------------
    def _text_model_id(self) -> str:
        if self._text_id is None:
            self._text_id = self.ck.index["text"].get("model_id") or text_model_id(self.ck.text)
        return self._text_id

    def head(self, task: str):  # noqa: ANN201 - ZeroShotHead
        from lines.clip.datasets import get_task

        name = get_task(task).head_spec().name
        if name not in self._heads:
            from lines.clip.heads import ZeroShotHead, zero_shot_head

            h = None
            if self.heads_dir is not None and (self.heads_dir / HEADS_FILE).is_file():
                from lines.io import load_state_dict

                info = read_json(self.heads_dir / HEADS_INDEX)
                if name in info["tasks"]:
                    if info.get("model_id") != self._text_model_id():
                        raise LinesError(
                            f"{self.heads_dir}: heads of another text tower; rerun the heads stage"
                        )
                    w = load_state_dict(self.heads_dir / HEADS_FILE)[name]
                    h = ZeroShotHead(name, w, None, info["model_id"], info["tasks"][name]["key"])
            if h is None:  # a task outside the suite (WiSE-FT's, the soups' controls)
                h = zero_shot_head(
                    name,
                    lambda: text_encoder(self.ck.text, self.a),
                    cache_dir=self.a.cache_dir,
                    model_id=self._text_model_id(),
                    device=self.dev,
                )
            h.weight = h.weight.to(self.dev)
            self._heads[name] = h
        return self._heads[name]

    # -- data ----------------------------------------------------------------------------
    def split(self, task: str, split: str):  # noqa: ANN201 - Split
        from lines.clip.layouts import load_split

        key = (task, split)
        if key not in self._splits:
            s = load_split(task, split, self.a.data_root, layout=self.a.layout)  # type: ignore[arg-type]
            limit = self.a.max_val if split == "val" else self.a.max_test
            if limit and limit < len(s):
                g = torch.Generator().manual_seed(self.a.seed)
                idx = torch.randperm(len(s), generator=g)[:limit].sort().values.tolist()
                s = s.subset(idx, split)
            # The files do not change during a stage: fingerprint them (a stat of every file,
            # which keys the tensor cache) once, not at every evaluation of a sweep.
            fp = s.fingerprint()
            s.fingerprint = lambda fp=fp: fp  # type: ignore[method-assign]
            self._splits[key] = s
        return self._splits[key]

    def num_examples(self, task: str, split: str) -> int:
        return len(self.split(task, split))

    # -- weights -------------------------------------------------------------------------
    def load(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load an image-tower state dict (``visual.*`` keys) into the encoder."""
        own = self.encoder.state_dict()
        with torch.no_grad():
            for k, v in sd.items():
                own[k[len("visual.") :]].copy_(v)

    def theta(
        self, tau: Mapping[str, torch.Tensor] | None, lambdas: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        return self.wb.theta(tau, lambdas)

    def task_vector(
        self, name: str, finetuned: Sequence[Path], method: Any, norm: str = "l1"
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.wb.task_vector(name, finetuned, method, norm)

    def finetuned_state(self, path: Path) -> dict[str, torch.Tensor]:
        return self.wb.load(path)

    # -- accuracy ------------------------------------------------------------------------
    def accuracy(
        self,
        sd: Mapping[str, torch.Tensor] | None,
        split: str,
        tasks: Sequence[str],
    ) -> dict[str, float]:
        """Top-1 accuracy per task of the tower with weights ``sd`` (None: as loaded)."""
        from lines.clip.evaluate import evaluate

        if sd is not None:
            self.load(sd)
        self.calls += 1
        if self.fast_eval:
            return self._fast_accuracy(split, tasks)
        out = {}
        for t in tasks:
            s = self.split(t, split)
            t0 = time.perf_counter()
            r = evaluate(
                self.encoder,
                self.head(t),
                s,
                cache_dir=self.a.cache_dir,
                preprocess=self.preprocess,
                device=self.dev,
                batch_size=self.a.batch_size,
                num_workers=self.a.num_workers,
                precision=self.a.precision,
            )
            if self.dev.type == "cuda":
                torch.cuda.synchronize()
            self.eval_seconds += time.perf_counter() - t0
            self.images += r.total
            out[t] = r.top1
        return out

    def fast(self) -> Any:
        """The resident, low-precision, compiled evaluator (built on first use)."""
        if self._fast is None:
            from lines.clip.fast import FastTower, fast_dtype

            budget = float(getattr(self.a, "fast_eval_budget_gb", 0) or 0)
            self._fast = FastTower(
                self.encoder,
                self.preprocess,
                self.dev,
                dtype=fast_dtype(self.dev, self.a.precision),
                batch_size=self.a.batch_size,
                compile_mode=self.compile_mode,
                budget_bytes=int(budget * 1e9) if budget > 0 else None,
            )
        return self._fast

    def _fast_accuracy(self, split: str, tasks: Sequence[str]) -> dict[str, float]:
        if not tasks:
            return {}
        items = []
        for t in tasks:  # with the standard evaluator's checks
            s, head = self.split(t, split), self.head(t)
            columns = s.head_columns()
            if columns is None and head.num_classes != s.task.num_classes:
                raise LinesError(
                    f"head for {head.task} has {head.num_classes} classes, "
                    f"{t} has {s.task.num_classes}"
                )
            if len(s) == 0:
                raise LinesError(f"{t}/{split}: no images to evaluate")
            items.append(((t, split), self._images(t, split), head, columns))
        fast = self.fast()
        fast.sync_from(self.encoder)  # in-place copies into the compiled module's parameters
        t0 = time.perf_counter()
        correct = fast.correct_many(items)
        self.eval_seconds += time.perf_counter() - t0
        self.images += sum(len(c) for c in correct)
        # as the standard evaluator: correct / total
        return {t: int(c.sum()) / len(c) for t, c in zip(tasks, correct, strict=True)}

    # -- the learned baselines' hooks (lines.protocol.learned.Differentiable) ----------------
    @property
    def model(self) -> nn.Module:
        """The image tower under the name ``visual``: its state-dict keys are the checkpoints'
        (``visual.*``), so the learned baselines swap checkpoint tensors straight in."""
        if self._visual is None:
            self._visual = _Visual(self.encoder)
        return self._visual

    def _images(self, task: str, split: str) -> Any:
        from lines.clip.evaluate import cached_split

        key = (task, split)
        if key not in self._cached:
            self._cached[key] = cached_split(
                self.split(task, split),
                self.preprocess,
                self.a.cache_dir,
                num_workers=self.a.num_workers,
            )
        return self._cached[key]

    def labels(self, task: str, split: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._images(task, split).labels)).long()

    def logits(self, task: str, split: str, index: Sequence[int]) -> torch.Tensor:
        """Zero-shot logits of the images ``index`` with the tower's current weights (the same
        path as :meth:`accuracy`: cached uint8 images, normalised on the device, the frozen
        head, the split's class columns); gradients flow when the caller enables them."""
        from lines.clip.evaluate import _autocast_dtype, _project

        imgs = self._images(task, split).images
        x = torch.from_numpy(np.array(imgs[np.asarray(list(index), dtype=np.int64)]))
        xb = self.preprocess.normalize(x.to(self.dev))
        self.encoder.eval()
        amp = _autocast_dtype(self.dev, self.a.precision)
        if amp is not None:
            with torch.autocast(device_type="cuda", dtype=amp):
                feats = self.encoder(xb)
        else:
            feats = self.encoder(xb)
        return _project(self.head(task).logits(feats), self.split(task, split).head_columns())


class _Visual(nn.Module):
    """``visual`` → the image tower (no parameters of its own)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.visual = encoder


def text_encoder(path: Path, a: argparse.Namespace):  # noqa: ANN202 - TextEncoder
    from lines.clip.model import build_text_encoder
    from lines.io import load_state_dict

    return build_text_encoder(
        load_state_dict(path), heads=a.text_heads or None, quick_gelu=a.act == "quick_gelu"
    )
