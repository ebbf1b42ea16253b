"""Top-1 and normalised accuracy of CLIP image encoders, over cached preprocessed images.

Preprocessing is open_clip's evaluation transform (resize the short side, bicubic, centre crop,
RGB, ``ToTensor``, normalise). The first evaluation of a split decodes each image once, applies
the resize and crop, and stores the result as uint8 ``[N, 3, H, W]`` (``images.npy``, memory
mapped) — exact, because ``ToTensor`` only divides those bytes by 255 — so a β sweep over many
merged models reads tensors, not JPEGs. Normalisation runs per batch on the device.

On CUDA the encoder runs under autocast (bf16 where supported, else fp16) unless
``precision="fp32"``; on CPU everything is fp32. Logits are always computed in fp32.

Normalised accuracy divides by the fine-tuned model's accuracy on the same task and split
(measured with this module, or supplied, e.g. tall_masks' ``nonlinear_ft_accuracies.json`` whose
``<Task>`` keys are test and ``<Task>Val`` keys validation accuracies).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lines.clip.heads import ZeroShotHead
from lines.clip.splits import Split
from lines.engine import resolve_device  # the one device parser
from lines.errors import LinesError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_FORMAT = 1
Precision = Literal["auto", "fp32", "bf16", "fp16"]


# ----------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Preprocess:
    """open_clip's evaluation transform, split into a cacheable uint8 part and a normalisation."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def key(self) -> str:
        """Identifies the uint8 output (mean and std are applied later, so not part of it)."""
        return f"{self.image_size}|{self.interpolation}|{self.resize_mode}"

    def pil_steps(self):
        """open_clip's transform up to (excluding) the tensor conversion: PIL → PIL RGB."""
        from lines._torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        from open_clip.transform import image_transform
        from torchvision.transforms import Compose

        full = image_transform(
            self.image_size,
            is_train=False,
            mean=self.mean,
            std=self.std,
            resize_mode=self.resize_mode,
            interpolation=self.interpolation,
        )
        steps = []
        for t in full.transforms:
            if "ToTensor" in type(t).__name__:
                break
            steps.append(t)
        return Compose(steps)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] → float32, exactly ``ToTensor`` then ``Normalize``."""
        x = x.float().div(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub(mean).div(std)


def preprocess_for(encoder: nn.Module, **over: Any) -> Preprocess:
    """The preprocessing an open_clip image tower expects (its image size; OpenAI mean/std)."""
    size = getattr(encoder, "image_size", None)
    if isinstance(size, tuple):
        size = size[0]
    return Preprocess(image_size=int(size or 224), **over)


class _Decoded(torch.utils.data.Dataset):
    """Split image i → (uint8 [3, H, W], label), for a DataLoader with workers."""

    def __init__(self, split: Split, pre: Preprocess):
        self.split, self.pre = split, pre
        self.steps = pre.pil_steps()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.steps(self.split.image(i))
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.array(img, dtype=np.uint8, copy=True)
        if arr.shape[:2] != (self.pre.image_size, self.pre.image_size):
            raise LinesError(f"preprocessed image {i} has shape {arr.shape}")
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), int(self.split.labels[i])


def _decoded_batches(
    split: Split, pre: Preprocess, batch_size: int, num_workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(
        _Decoded(split, pre),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    yield from loader


# ----------------------------------------------------------------------------------------------
# The preprocessed-tensor cache


@dataclass
class CachedSplit:
    """A split's preprocessed images on disk (uint8, memory mapped) with its labels."""

    path: Path
    images: np.ndarray  # [N, 3, H, W] uint8, memmap
    labels: np.ndarray  # [N] int64
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            x = torch.from_numpy(np.array(self.images[i : i + batch_size], copy=True))
            yield x, torch.from_numpy(self.labels[i : i + batch_size])


def cache_key(split: Split, pre: Preprocess) -> str:
    blob = f"{CACHE_FORMAT}|{split.fingerprint()}|{pre.key()}"
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_split(
    split: Split,
    pre: Preprocess,
    cache_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
) -> CachedSplit:
    """The split's preprocessed tensors, built on first use (decode + resize + crop once) and
    read from ``<cache_dir>/images/<task>/<split>-<key>/`` afterwards. The folder is built under
    a temporary name and renamed, so a crash never leaves a half-written cache behind."""
    key = cache_key(split, pre)
    folder = Path(cache_dir) / "images" / split.task.name / f"{split.name}-{key[:16]}"
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            n, s = len(split), pre.image_size
            images = np.lib.format.open_memmap(
                tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, s, s)
            )
            labels = np.empty(n, dtype=np.int64)
            i = 0
            for x, y in _decoded_batches(split, pre, batch_size, num_workers):
                images[i : i + len(x)] = x.numpy()
                labels[i : i + len(x)] = y.numpy()
                i += len(x)
            images.flush()
            del images
            if not np.array_equal(labels, split.labels):
                raise LinesError(f"{split.task.name}/{split.name}: labels changed while caching")
            np.save(tmp / "labels.npy", labels)
            meta = {
                "format": CACHE_FORMAT,
                "key": key,
                "preprocess": asdict(pre),
                **split.describe(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    meta = json.loads((folder / "meta.json").read_text())
    return CachedSplit(
        folder,
        np.load(folder / "images.npy", mmap_mode="r"),
        np.load(folder / "labels.npy"),
        meta,
    )


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    """One model on one split of one task."""

    task: str
    split: str
    correct: int
    total: int
    top1: float
    normalized_top1: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _autocast_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _project(logits: torch.Tensor, columns: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Logits of a split whose classes are subsets/groups of the head's (ImageNet-R/A, ObjectNet):
    each class's logit is the max over its head columns."""
    if columns is None:
        return logits
    if all(len(c) == 1 for c in columns):
        idx = torch.tensor([c[0] for c in columns], device=logits.device)
        return logits.index_select(1, idx)
    return torch.stack([logits[:, list(c)].max(dim=1).values for c in columns], dim=1)


@torch.no_grad()
def evaluate(
    encoder: nn.Module,
    head: ZeroShotHead,
    split: Split,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    preprocess: Preprocess | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    num_workers: int = 0,
    precision: Precision = "auto",
    reference_top1: float | None = None,
) -> EvalResult:
    """Top-1 accuracy of ``encoder`` (images → embeddings) with ``head`` on ``split``; with
    ``cache_dir`` the images come from (and on first use go into) the preprocessed-tensor cache.
    ``reference_top1`` (the fine-tuned model's accuracy) adds the normalised accuracy."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LinesError(f"device '{device}' requested but CUDA is not available")
    pre = preprocess or preprocess_for(encoder)
    columns = split.head_columns()
    want_classes = split.task.num_classes if columns is None else len(columns)
    if columns is None and head.num_classes != want_classes:
        raise LinesError(
            f"head for {head.task} has {head.num_classes} classes, {split.task.name} has "
            f"{want_classes}"
        )
    if cache_dir is not None:
        cached = cached_split(split, pre, cache_dir, num_workers=num_workers)
        batches = cached.batches(batch_size)
        source = {"cache": str(cached.path)}
    else:
        batches = _decoded_batches(split, pre, batch_size, num_workers)
        source = {"cache": None}
    was_training = encoder.training
    encoder.eval().to(dev)
    amp = _autocast_dtype(dev, precision)
    correct = total = 0
    try:
        for x, y in batches:
            xb = pre.normalize(x.to(dev, non_blocking=True))
            if amp is not None:
                with torch.autocast(device_type="cuda", dtype=amp):
                    feats = encoder(xb)
            else:
                feats = encoder(xb)
            logits = _project(head.logits(feats), columns)
            pred = logits.argmax(dim=1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        encoder.train(was_training)
    if total == 0:
        raise LinesError(f"{split.task.name}/{split.name}: no images to evaluate")
    top1 = correct / total
    result = EvalResult(
        split.task.name,
        split.name,
        correct,
        total,
        top1,
        extra={**source, "precision": str(amp or torch.float32), "device": str(dev)},
    )
    if reference_top1 is not None:
        result.normalized_top1 = normalized_accuracy(top1, reference_top1)
    return result


# ----------------------------------------------------------------------------------------------
# Normalised accuracy


def normalized_accuracy(top1: float, reference_top1: float) -> float:
    """Accuracy divided by the fine-tuned (or, for control tasks, zero-shot) model's."""
    if not reference_top1 > 0:
        raise LinesError(f"reference accuracy must be positive, got {reference_top1}")
    return top1 / reference_top1


def reference_accuracies(
    source: Mapping[str, float] | str | os.PathLike[str], split: str = "test"
) -> dict[str, float]:
    """Per-task reference accuracies for ``split`` from a mapping or a JSON file: the tall_masks
    format (``"MNIST"`` test, ``"MNISTVal"`` validation, also ``"MNIST:top1"``) or a plain
    ``{task: accuracy}``. Keys are returned under the registry's task names."""
    from lines.clip.datasets import get_task

    if not isinstance(source, Mapping):
        p = Path(source)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LinesError(f"{p}: cannot read reference accuracies ({e})") from None
    else:
        data = dict(source)
    out: dict[str, float] = {}
    for k, v in data.items():
        name = str(k).removesuffix(":top1")
        is_val = name.endswith("Val")
        if is_val != (split == "val"):
            continue
        try:
            task = get_task(name.removesuffix("Val") if is_val else name)
        except LinesError:
            continue
        out[task.name] = float(v)
    return out


def summarize(results: Sequence[EvalResult]) -> dict[str, Any]:
    """Per-task top-1 (and normalised top-1) and their averages over tasks."""
    per = {r.task: {"top1": r.top1, "normalized_top1": r.normalized_top1} for r in results}
    out: dict[str, Any] = {"tasks": per, "avg_top1": float(np.mean([r.top1 for r in results]))}
    norm = [r.normalized_top1 for r in results if r.normalized_top1 is not None]
    if len(norm) == len(results) and results:
        out["avg_normalized_top1"] = float(np.mean(norm))
    return out


# ----------------------------------------------------------------------------------------------
# One checkpoint over several tasks: what a pipeline step calls


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    tasks: Sequence[str],
    *,
    text_checkpoint: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    split: Literal["train", "val", "test"] = "test",
    reference: Mapping[str, float] | str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int = 128,
    num_workers: int = 0,
    precision: Precision = "auto",
    heads: int | None = None,
    text_heads: int | None = None,
    quick_gelu: bool = True,
    layout: str = "auto",
) -> dict[str, Any]:
    """Evaluate one image encoder (any CLIP layout; typically a merged ``visual.*`` safetensors
    file) on ``tasks``; heads come from ``text_checkpoint`` (the pretrained full CLIP) through the
    head cache, images through the tensor cache, both under ``cache_dir``. ``reference``: the
    fine-tuned accuracies for normalised accuracy (a mapping or a tall_masks-style JSON file).
    ``heads``/``text_heads``: attention heads of the towers (default width / 64, OpenAI's).
    Returns ``summarize(...)`` plus each result and the inputs."""
    from lines.clip.convert import split_openclip, to_openclip
    from lines.clip.datasets import get_task
    from lines.clip.heads import zero_shot_head
    from lines.clip.layouts import load_split
    from lines.clip.model import build_image_encoder, build_text_encoder, tensors_digest
    from lines.io import load_state_dict

    dev = resolve_device(device)
    encoder = build_image_encoder(load_state_dict(checkpoint), heads=heads, quick_gelu=quick_gelu)
    full, _ = to_openclip(load_state_dict(text_checkpoint))
    _, text_sd, rest = split_openclip(full)
    if "logit_scale" not in rest:
        raise LinesError(f"{text_checkpoint}: no text tower (need the full pretrained CLIP)")
    model_id = tensors_digest({**text_sd, "logit_scale": rest["logit_scale"]})
    refs = reference_accuracies(reference, split) if reference is not None else {}
    results = []
    for name in tasks:
        task = get_task(name)
        head = zero_shot_head(
            task,
            lambda: build_text_encoder(full, heads=text_heads, quick_gelu=quick_gelu),
            cache_dir=cache_dir,
            model_id=model_id,
            device=dev,
        )
        data = load_split(task, split, data_root, layout=layout)  # type: ignore[arg-type]
        results.append(
            evaluate(
                encoder,
                head,
                data,
                cache_dir=cache_dir,
                device=dev,
                batch_size=batch_size,
                num_workers=num_workers,
                precision=precision,
                reference_top1=refs.get(task.name),
            )
        )
    out = summarize(results)
    out["results"] = [r.as_dict() for r in results]
    out["inputs"] = {
        "checkpoint": str(checkpoint),
        "text_checkpoint": str(text_checkpoint),
        "text_model_id": model_id,
        "split": split,
        "device": str(dev),
        "precision": precision,
    }
    return out
