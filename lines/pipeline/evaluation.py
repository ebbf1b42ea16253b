"""Evaluation of backbone weights on every task with that task's frozen head.

The splits are prepared (tokenised / converted) once per process, so a β or γ sweep costs only
forward passes. Accuracies are fractions in [0, 1]; normalised accuracy divides by a reference
model's accuracy on the same split (the fine-tuned model for targets and merges, the pretrained
model with heads for controls), as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lines.pipeline.backbones import (
    Backbone,
    Batch,
    Head,
    collate_batches,
    extract_features,
    load_backbone,
)
from lines.pipeline.common import read_split
from lines.pipeline.training import load_head
from lines.protocol.suite import AccuracyFromCorrect


class Evaluator(AccuracyFromCorrect):
    """Accuracy of a state dict on each task's ``val`` or ``test`` subset."""

    def __init__(
        self,
        fetch_dir: Path,
        heads_dir: Path,
        backbone_name: str,
        tasks: Sequence[str],
        *,
        limits: Mapping[str, int],
        max_len: int = 64,
        image_size: int = 64,
        batch_size: int = 128,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.tasks = list(tasks)
        self.backbone: Backbone = load_backbone(
            backbone_name,
            Path(fetch_dir) / "models",
            max_len=max_len,
            image_size=image_size,
            device=device,
        )
        self.heads: dict[str, Head] = {t: load_head(heads_dir, t) for t in self.tasks}
        self.batch_size = batch_size
        self._prepared: dict[tuple[str, str], tuple[Any, torch.Tensor]] = {}
        self._batches: dict[tuple[str, str], list[Batch] | None] = {}
        self._fetch_dir, self._limits, self._seed = Path(fetch_dir), dict(limits), seed

    def _split(self, task: str, split: str) -> tuple[Any, torch.Tensor]:
        key = (task, split)
        if key not in self._prepared:
            s = read_split(self._fetch_dir, task, split).subset(self._limits.get(split), self._seed)
            self._prepared[key] = (self.backbone.prepare(s.inputs), s.labels)
        return self._prepared[key]

    def num_examples(self, task: str, split: str) -> int:
        return len(self._split(task, split)[1])

    # -- the learned baselines' hooks (lines.protocol.learned.Differentiable) ----------------
    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    def labels(self, task: str, split: str) -> torch.Tensor:
        return self._split(task, split)[1]

    def logits(self, task: str, split: str, index: Sequence[int]) -> torch.Tensor:
        """Logits of the examples ``index`` with the model's current weights (gradients flow
        when the caller enables them; the heads are frozen)."""
        prepared, _ = self._split(task, split)
        self.backbone.model.eval()  # BatchNorm keeps its statistics, dropout off
        feats = self.backbone.features(self.backbone.batch_of(prepared, index))
        h = self.heads[task]  # left where it is: correct_task applies it to CPU features
        return feats @ h.weight.to(feats.device).T + h.bias.to(feats.device)

    def load(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.backbone.load_weights(state_dict)

    def correct_task(self, task: str, split: str) -> torch.Tensor:
        prepared, labels = self._split(task, split)
        key = (task, split)
        if key not in self._batches:  # padded and on the device once: points only run forwards
            self._batches[key] = collate_batches(self.backbone, prepared, self.batch_size)
        feats = extract_features(self.backbone, prepared, self.batch_size, self._batches[key])
        with torch.inference_mode():
            return self.heads[task](feats).argmax(1) == labels

    def evaluate(
        self, state_dict: Mapping[str, torch.Tensor], split: str, tasks: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Top-1 accuracy per task of the backbone with weights ``state_dict``."""
        return self.accuracy(state_dict, split, tasks)
