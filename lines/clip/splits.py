"""Labelled image splits of the CLIP tasks, decoded lazily, and the reference validation split.

Splits
------
``train``, ``test`` and ``val``. ``val`` follows the reference protocol: a seeded random 10% of
``train`` (at most 5,000 images, ``torch.randperm`` with seed 0, the last ``val_size`` indices of
``random_split``), except EuroSAT in the reference layout, whose ``EuroSAT_splits/val`` folder the
reference uses. The same indices come out as long as the train split lists its images in the
reference's order, which the readers below reproduce (ImageFolder order, torchvision order).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lines.clip.datasets import Task
from lines.errors import LinesError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_FRACTION = 0.1
VAL_MAX_SAMPLES = 5000
VAL_SEED = 0


# ----------------------------------------------------------------------------------------------
# Validation split


def val_size(n: int, fraction: float = VAL_FRACTION, max_samples: int = VAL_MAX_SAMPLES) -> int:
    size = min(int(n * fraction), max_samples)
    if size <= 0 or size >= n:
        raise LinesError(f"a train split of {n} images is too small for a validation split")
    return size


def protocol_split_indices(
    n: int,
    fraction: float = VAL_FRACTION,
    max_samples: int = VAL_MAX_SAMPLES,
    seed: int = VAL_SEED,
) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) exactly as the reference's
    ``random_split(train, [n - v, v], generator=torch.Generator().manual_seed(0))``."""
    v = val_size(n, fraction, max_samples)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[: n - v], perm[n - v :]


# ----------------------------------------------------------------------------------------------
# Splits: labelled images, decoded lazily


def open_image(path: Path):
    """Decode one image file as RGB, as torchvision's ``pil_loader`` (ImageFolder) does."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def _digest(lines: Sequence[str] | None = None, data: bytes = b"") -> str:
    h = hashlib.sha256()
    for s in lines or ():
        h.update(s.encode())
        h.update(b"\n")
    h.update(data)
    return h.hexdigest()


class Split(ABC):
    """The labelled images of one split of one task. ``image(i)`` decodes image i (a PIL image,
    as the reference's dataset hands it to the transform); ``labels`` are known without decoding."""

    task: Task
    name: str
    labels: np.ndarray
    layout: str
    root: Path
    logit_groups: tuple[tuple[int, ...], ...] | None = None  # ObjectNet: head columns per class
    notes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def image(self, i: int) -> Any: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """Changes when the files (or their labels) change: keys the preprocessed-tensor cache."""

    def subset(self, indices: Sequence[int], name: str) -> Split:
        return SubsetSplit(self, list(indices), name)

    def head_columns(self) -> tuple[tuple[int, ...], ...] | None:
        """For each class of this split, the head columns whose max is its logit (None: the
        head's columns are this split's classes)."""
        if self.logit_groups is not None:
            return self.logit_groups
        if self.task.logit_subset is not None:
            return tuple((i,) for i in self.task.logit_subset)
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "split": self.name,
            "layout": self.layout,
            "root": str(self.root),
            "num_images": len(self),
            "notes": list(getattr(self, "notes", [])),
        }


class FileSplit(Split):
    """Images in files (ImageFolder and the custom reference loaders)."""

    def __init__(
        self,
        task: Task,
        name: str,
        files: Sequence[Path],
        labels: Sequence[int],
        root: Path,
        layout: str,
        crop_border: int = 0,
        logit_groups: tuple[tuple[int, ...], ...] | None = None,
        notes: Sequence[str] = (),
    ):
        if len(files) != len(labels):
            raise ValueError("files and labels differ in length")
        if not files:
            raise LinesError(f"{task.name}/{name}: no images found under {root}")
        self.task, self.name, self.root, self.layout = task, name, Path(root), layout
        self.files = [Path(f) for f in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.crop_border = crop_border
        self.logit_groups = logit_groups
        self.notes = list(notes)

    def image(self, i: int) -> Any:
        img = open_image(self.files[i])
        if self.crop_border:
            b = self.crop_border
            img = img.crop((b, b, img.width - b, img.height - b))
        return img

    def fingerprint(self) -> str:
        lines = [f"{self.task.name}|{self.name}|{self.layout}|crop={self.crop_border}"]
        for f, y in zip(self.files, self.labels.tolist(), strict=True):
            st = f.stat()
            try:
                rel = f.relative_to(self.root)
            except ValueError:
                rel = f
            lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{y}")
        return _digest(lines)


class TorchvisionSplit(Split):
    """A torchvision dataset read from its own files (``download=False``)."""

    def __init__(
        self, task: Task, name: str, ds: Any, labels: Sequence[int], base: Path, layout: str
    ):
        self.task, self.name, self.root, self.layout = task, name, Path(base), layout
        self.ds = ds
        self.labels = np.asarray(labels, dtype=np.int64)
        self.notes = [f"torchvision.datasets.{type(ds).__name__}"]

    def image(self, i: int) -> Any:
        return self.ds[i][0]

    def fingerprint(self) -> str:
        lines = [f"{self.task.name}|{self.name}|{type(self.ds).__name__}|{len(self)}"]
        for dirpath, _, fnames in sorted(os.walk(self.root)):
            for fn in sorted(fnames):
                p = Path(dirpath) / fn
                st = p.stat()
                lines.append(f"{p.relative_to(self.root)}\t{st.st_size}\t{st.st_mtime_ns}")
        return _digest(lines, self.labels.tobytes())


class SubsetSplit(Split):
    """Some images of another split (the validation split)."""

    def __init__(self, parent: Split, indices: list[int], name: str):
        self.parent, self.indices = parent, indices
        self.task, self.name, self.root, self.layout = parent.task, name, parent.root, parent.layout
        self.labels = parent.labels[np.asarray(indices, dtype=np.int64)]
        self.logit_groups = parent.logit_groups
        self.notes = [*getattr(parent, "notes", []), f"{len(indices)} images of {parent.name}"]

    def image(self, i: int) -> Any:
        return self.parent.image(self.indices[i])

    def fingerprint(self) -> str:
        idx = np.asarray(self.indices, dtype=np.int64).tobytes()
        return _digest([self.parent.fingerprint(), self.name], idx)


# ----------------------------------------------------------------------------------------------
# ImageFolder scanning (torchvision's order: sorted classes, sorted walk, sorted file names)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def class_dirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise LinesError(f"{folder}: no such folder")
    dirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not dirs:
        raise LinesError(f"{folder}: no class folders")
    return dirs


def image_files(folder: Path, valid: Callable[[str], bool] | None = None) -> list[Path]:
    out = []
    for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True)):
        for fn in sorted(fnames):
            if _is_image(fn) and (valid is None or valid(os.path.join(dirpath, fn))):
                out.append(Path(dirpath) / fn)
    return out


def scan_imagefolder(
    folder: Path,
    class_to_label: dict[str, int] | None = None,
    valid: Callable[[str], bool] | None = None,
) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class folders) in torchvision ImageFolder's order. Without
    ``class_to_label`` the sorted position of the class folder is the label."""
    dirs = class_dirs(folder)
    mapping = class_to_label or {d: i for i, d in enumerate(dirs)}
    files: list[Path] = []
    labels: list[int] = []
    for d in sorted(mapping):
        got = image_files(folder / d, valid)
        files += got
        labels += [mapping[d]] * len(got)
    return files, labels, dirs
