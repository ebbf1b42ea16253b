"""Shared plumbing of the pipeline stages: reading the fetched splits, subsets, seeds, JSON."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lines.errors import LinesError
from lines.protocol.results import read_json, write_json
from lines.protocol.scores import mean

__all__ = [
    "Split",
    "class_names",
    "mean",
    "read_json",
    "read_split",
    "seed_everything",
    "write_json",
]

TEXT_BACKBONES = ("minilm",)
VISION_BACKBONES = ("mobilenet_v2", "efficientnet_lite0")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@dataclass
class Split:
    inputs: Any  # list[str] for text, uint8 ndarray (N, H, W[, C]) for images
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, limit: int | None, seed: int = 0, offset: int = 0) -> Split:
        """A fixed random subset: positions ``offset … offset+limit`` of a seeded permutation, so
        two stages can take disjoint slices of the same split (heads vs fine-tuning)."""
        n = len(self)
        if (limit is None or limit <= 0 or limit >= n) and offset == 0:
            return self
        g = torch.Generator()
        g.manual_seed(seed)
        end = n if limit is None or limit <= 0 else offset + limit
        idx = torch.randperm(n, generator=g)[offset:end].sort().values
        if idx.numel() == 0:
            raise LinesError(f"empty subset: offset {offset} is past the {n} examples of the split")
        if isinstance(self.inputs, list):
            inputs: Any = [self.inputs[i] for i in idx.tolist()]
        else:
            inputs = self.inputs[idx.numpy()]
        return Split(inputs, self.labels[idx])


def read_split(fetch_dir: Path, task: str, split: str) -> Split:
    """A split written by the fetch stage: ``datasets/<task>/<split>.jsonl`` (text) or ``.npz``."""
    d = Path(fetch_dir) / "datasets" / task
    jl, npz = d / f"{split}.jsonl", d / f"{split}.npz"
    if jl.is_file():
        texts, labels = [], []
        with open(jl) as f:
            for line in f:
                row = json.loads(line)
                texts.append(row["text"])
                labels.append(int(row["label"]))
        return Split(texts, torch.tensor(labels, dtype=torch.long))
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as z:
            return Split(z["images"], torch.as_tensor(z["labels"]).long())
    raise LinesError(f"{d}: no '{split}' split (run the fetch stage first)")


def class_names(fetch_dir: Path, task: str) -> list[str]:
    summary = read_json(Path(fetch_dir) / "fetch.json")
    try:
        return list(summary["datasets"][task]["classes"])
    except (KeyError, TypeError):
        raise LinesError(f"{fetch_dir}/fetch.json: task '{task}' was not fetched") from None
