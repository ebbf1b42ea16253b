"""Zero-shot classification heads: class names × prompt templates through the pretrained text
tower, as task_vectors' ``build_classification_head`` computes them.

For each class, every prompt is embedded and L2-normalised, the embeddings are averaged and the
mean is normalised again; the class vectors are stacked ``[classes, dim]`` and multiplied by
``exp(logit_scale)``. Scoring normalises the image embedding and takes ``features @ weight.T``
(the reference's ``ClassificationHead(normalize=True)``, zero bias). The scale does not change the
argmax; it is kept so logits match the reference's.

Heads are cached as safetensors under ``<cache_dir>/heads/``, keyed by the text tower's content
hash (``TextEncoder.model_id``), the task, its class names and its templates: a second request
never touches the text tower, and a changed prompt set gets a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lines import __version__
from lines.clip.datasets import Task, get_task
from lines.clip.model import TextEncoder
from lines.errors import LinesError
from lines.io import load_state_dict, save_state_dict

HEAD_FORMAT = 1
# Prompts per text-tower forward: bounds memory, does not change the result beyond float noise.
PROMPT_BATCH = 256


@dataclass
class ZeroShotHead:
    """A linear head over normalised image embeddings."""

    task: str  # the task whose classes the rows are (ImageNet for the OOD sets)
    weight: torch.Tensor  # [classes, dim], float32, scaled by exp(logit_scale)
    bias: torch.Tensor | None = None
    model_id: str = ""
    key: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        f = features.float()
        f = f / f.norm(dim=-1, keepdim=True)
        out = f @ self.weight.to(f.device).t()
        if self.bias is not None:
            out = out + self.bias.to(f.device)
        return out


def head_key(model_id: str, task: Task) -> str:
    """sha256 of what determines a head: the text tower, class names and templates."""
    blob = json.dumps(
        {
            "format": HEAD_FORMAT,
            "model_id": model_id,
            "task": task.name,
            "classnames": list(task.classnames),
            "templates": list(task.templates),
        },
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def build_head_weights(
    text: TextEncoder,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[classes, dim] float32: per class, the renormalised mean of the normalised prompt
    embeddings, times exp(logit_scale)."""
    if not templates:
        raise LinesError("no prompt templates")
    prompts = [t.replace("{c}", c) for c in classnames for t in templates]
    chunks = []
    for i in range(0, len(prompts), PROMPT_BATCH):
        chunks.append(text.encode(prompts[i : i + PROMPT_BATCH], device=device).cpu())
    emb = torch.cat(chunks).reshape(len(classnames), len(templates), -1)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    mean = emb.mean(dim=1)
    mean = mean / mean.norm(dim=-1, keepdim=True)
    return (mean * text.logit_scale.exp()).float().contiguous()


def zero_shot_head(
    task: str | Task,
    text: TextEncoder | Callable[[], TextEncoder],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    device: torch.device | str = "cpu",
) -> ZeroShotHead:
    """The zero-shot head of ``task`` (ImageNet's for the OOD sets), from the cache when there.

    ``text`` may be a callable that builds the text encoder: with ``model_id`` given it is only
    called on a cache miss, so a sweep never loads the text tower once its heads exist."""
    t = (task if isinstance(task, Task) else get_task(task)).head_spec()
    if model_id is None:
        if callable(text) and not isinstance(text, TextEncoder):
            text = text()
        assert isinstance(text, TextEncoder)
        model_id = text.model_id
    key = head_key(model_id, t)
    path = Path(cache_dir) / "heads" / f"{t.name}-{key[:16]}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        sd = load_state_dict(path)
        return ZeroShotHead(t.name, sd["weight"], None, model_id, key)
    enc = text() if callable(text) and not isinstance(text, TextEncoder) else text
    assert isinstance(enc, TextEncoder)
    if enc.model_id != model_id:
        raise LinesError(
            f"text encoder {enc.model_id[:12]} is not the model_id {model_id[:12]} asked for"
        )
    weight = build_head_weights(enc, t.classnames, t.templates, device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "producer": f"lines {__version__}",
            "lines_head": json.dumps(
                {
                    "task": t.name,
                    "model_id": model_id,
                    "key": key,
                    "num_classes": t.num_classes,
                    "num_templates": len(t.templates),
                }
            ),
        }
        save_state_dict(path, {"weight": weight}, meta)
    return ZeroShotHead(t.name, weight, None, model_id, key)


def head_from_state_dict(task: str | Task, sd: dict[str, torch.Tensor]) -> ZeroShotHead:
    """A head given as weights (e.g. a task_vectors ``head_<Task>.pt`` converted with
    ``convert_pickled_module``: keys ``weight`` [classes, dim] and optional ``bias``)."""
    t = (task if isinstance(task, Task) else get_task(task)).head_spec()
    w = sd.get("weight")
    if w is None or w.ndim != 2:
        raise LinesError("a head needs a 2-D 'weight' [classes, dim]")
    if w.shape[0] != t.num_classes:
        raise LinesError(f"head has {w.shape[0]} rows, {t.name} has {t.num_classes} classes")
    b = sd.get("bias")
    return ZeroShotHead(t.name, w.float(), None if b is None else b.float())
