"""Backbones of the embedded experiment: a shared encoder whose weights are fine-tuned, merged and
edited, and frozen per-task linear heads on its pooled features (the analogue of CLIP's zero-shot
heads: task vectors live only in the shared backbone, so a merged model is evaluated on every task
with that task's head).

- ``minilm``: all-MiniLM-L6-v2 (a 6-layer BertModel), mean-pooled token states, as in
  sentence-transformers.
- ``mobilenet_v2`` / ``efficientnet_lite0``: ImageNet CNNs, global-average-pooled features;
  MNIST-family images are resized and replicated to 3 channels. This is a CNN on MNIST-family
  tasks, a proxy for the CLIP experiments, not CLIP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lines.engine import resolve_device  # the one device parser
from lines.errors import LinesError
from lines.io import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    """Model-ready inputs for one batch plus the positions of its examples in the split."""

    inputs: dict[str, torch.Tensor]
    index: torch.Tensor


class Backbone:
    """A shared encoder: ``features(batch)`` → [B, D], L2-normalised as CLIP's image and text
    features are, so a frozen linear head cannot be driven to huge logits by fine-tuning
    rescaling the features. Subclasses prepare inputs."""

    name: str
    model: nn.Module
    feature_dim: int
    device: torch.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Backbone:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load_weights(self, sd: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(dict(sd), strict=False)
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise LinesError(
                f"{self.name}: weights do not fit the model ({len(missing)} missing, "
                f"{len(unexpected)} unexpected; first '{first}')"
            )

    def prepare(self, raw: Sequence[Any]) -> Any:
        raise NotImplementedError

    def batches(
        self,
        prepared: Any,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        raise NotImplementedError

    def batch_of(self, prepared: Any, idx: Sequence[int]) -> Batch:
        raise NotImplementedError

    def features(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - not meaningful
        return 0


class TextBackbone(Backbone):
    """A Hugging Face encoder folder (all-MiniLM-L6-v2) with mean pooling. A BERT runs as
    :mod:`lines.pipeline.minilm` (the same keys and outputs as ``BertModel``, without importing
    transformers' modelling code in every stage process); any other encoder through
    transformers' ``AutoModel``."""

    def __init__(self, folder: Path, max_len: int = 64):
        import json

        self.name = "minilm" if Path(folder).name == "minilm" else str(folder)
        self.folder = Path(folder)
        self.max_len = max_len
        cfg = json.loads((self.folder / "config.json").read_text())
        plain_bert = (
            cfg.get("model_type") == "bert"
            and cfg.get("hidden_act", "gelu") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute"
            and (self.folder / "tokenizer.json").is_file()
        )
        if plain_bert:
            from lines.pipeline.minilm import Tokenizer, load_minibert

            self.tokenizer: Any = Tokenizer(self.folder)
            self.model: Any = load_minibert(self.folder)
        else:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.folder, local_files_only=True)
        self.feature_dim = int(self.model.config.hidden_size)

    def prepare(self, raw: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(raw), truncation=True, max_length=self.max_len)
        return enc["input_ids"]

    def batches(
        self,
        prepared: list[list[int]],
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        n = len(prepared)
        if shuffle:
            order = torch.randperm(n, generator=generator).tolist()
        else:
            # Evaluation: sort by length so each batch pads little (2-4x faster on short texts).
            order = sorted(range(n), key=lambda i: len(prepared[i]))
        for s in range(0, n, batch_size):
            yield self.batch_of(prepared, order[s : s + batch_size])

    def batch_of(self, prepared: list[list[int]], idx: Sequence[int]) -> Batch:
        """The examples ``idx`` of a prepared split as one padded batch."""
        idx = [int(i) for i in idx]
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(prepared[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = prepared[i]
            ids[r, : len(seq)] = torch.tensor(seq)
            att[r, : len(seq)] = 1
        return Batch(
            {"input_ids": ids.to(self.device), "attention_mask": att.to(self.device)},
            torch.tensor(idx),
        )

    def features(self, batch: Batch) -> torch.Tensor:
        out = self.model(**batch.inputs).last_hidden_state
        mask = batch.inputs["attention_mask"].unsqueeze(-1).to(out.dtype)
        return F.normalize((out * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)


class VisionBackbone(Backbone):
    """A torchvision-style ImageNet CNN; images (N, H, W) or (N, H, W, C) uint8 are resized to
    ``image_size``, replicated to 3 channels and normalised with the ImageNet statistics."""

    def __init__(self, name: str, weights: Path, image_size: int = 64):
        self.name = name
        self.image_size = image_size
        if name == "mobilenet_v2":
            from torchvision.models import mobilenet_v2

            # Keep the whole network so the state dict has torchvision's keys (features.{i}.…,
            # classifier.…); only ``features`` runs, so the ImageNet classifier's task vector is 0.
            net = mobilenet_v2(weights=None)
            net.load_state_dict(load_state_dict(weights))
            self.model = net
            self._trunk = net.features
            self.feature_dim = 1280
        elif name == "efficientnet_lite0":
            from lines.pipeline.efficientnet_lite import build_efficientnet_lite0

            self.model, self._trunk, self.feature_dim = build_efficientnet_lite0(
                weights, image_size
            )
        else:
            raise LinesError(
                f"unknown vision backbone '{name}' (choose mobilenet_v2 or efficientnet_lite0)"
            )

    def prepare(self, raw: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(raw))
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        return x.permute(0, 3, 1, 2).contiguous()  # N, C, H, W uint8

    def batches(
        self,
        prepared: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        n = prepared.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            yield self.batch_of(prepared, order[s : s + batch_size])

    def batch_of(self, prepared: torch.Tensor, idx: Sequence[int] | torch.Tensor) -> Batch:
        """The examples ``idx`` of a prepared split as one batch (resized, normalised)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        x = prepared[idx].to(self.device).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return Batch({"x": (x - mean) / std}, idx)

    def features(self, batch: Batch) -> torch.Tensor:
        return F.normalize(
            F.adaptive_avg_pool2d(self._trunk(batch.inputs["x"]), 1).flatten(1), dim=-1
        )


def load_backbone(
    name: str, models_dir: Path, *, max_len: int = 64, image_size: int = 64, device: str = "cpu"
) -> Backbone:
    """The backbone ``name`` from the fetch stage's ``models`` folder, on ``device``."""
    models_dir = Path(models_dir)
    dev = resolve_device(device)
    if name == "minilm":
        return TextBackbone(models_dir / "minilm", max_len=max_len).to(dev)
    if Path(name).is_dir():
        # Any Hugging Face encoder folder (config, weights, tokenizer) as θ_0; its layer layout
        # (family) is detected from its keys where task vectors are built.
        return TextBackbone(Path(name), max_len=max_len).to(dev)
    if name in ("mobilenet_v2", "efficientnet_lite0"):
        return VisionBackbone(name, models_dir / f"{name}.safetensors", image_size=image_size).to(
            dev
        )
    raise LinesError(
        f"unknown backbone '{name}' (choose minilm, mobilenet_v2, efficientnet_lite0 or the "
        "path of a local Hugging Face encoder folder)"
    )


class Head(nn.Module):
    """A frozen linear classifier on the backbone's features."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.float(), requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.weight.T + self.bias


@torch.inference_mode()
def extract_features(
    backbone: Backbone, prepared: Any, batch_size: int = 128, batches: Sequence[Batch] | None = None
) -> torch.Tensor:
    """Pooled features of a whole split, in the split's order (on the CPU). ``batches``: the
    split's batches made once (:func:`collate_batches`), so a sweep only runs forwards. The
    features stay on the device until the end: one synchronisation."""
    backbone.model.eval()
    n = len(prepared) if not isinstance(prepared, torch.Tensor) else prepared.shape[0]
    parts, index = [], []
    for b in batches if batches is not None else backbone.batches(prepared, batch_size):
        parts.append(backbone.features(b).float())
        index.append(b.index)
    feats = torch.empty(n, backbone.feature_dim)
    if parts:
        feats[torch.cat(index)] = torch.cat(parts).cpu()
    return feats


def collate_batches(
    backbone: Backbone, prepared: Any, batch_size: int, budget_bytes: int = 1 << 30
) -> list[Batch] | None:
    """The evaluation batches of a prepared split, made once (padded token ids, or resized and
    normalised images, on the backbone's device); None when they would take more than
    ``budget_bytes`` (then each evaluation makes them again)."""
    out, size = [], 0
    for b in backbone.batches(prepared, batch_size):
        size += sum(t.numel() * t.element_size() for t in b.inputs.values())
        if size > budget_bytes:
            return None
        out.append(b)
    return out


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
