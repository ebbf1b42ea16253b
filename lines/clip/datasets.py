"""The CLIP task suite: class names, prompt templates, suites, on-disk readers and the reference
validation split. Nothing is ever downloaded.

Tasks and suites
----------------
The 20 tasks of the reference (task_vectors 8, TALL masks 14 and 20) and ImageNet with its OOD
sets (WiSE-FT): ``SUITES["8"|"14"|"20"|"imagenet-ood"]``. Class names and templates are those of
tall_masks' ``src/datasets`` (see ``_classnames``); ImageNet's come from open_clip. Names are
matched case-insensitively and a trailing ``Val`` (``MNISTVal``) is accepted.

Splits
------
``train``, ``test`` and ``val``. ``val`` follows the reference protocol: a seeded random 10% of
``train`` (at most 5,000 images, ``torch.randperm`` with seed 0, the last ``val_size`` indices of
``random_split``), except EuroSAT in the reference layout, whose ``EuroSAT_splits/val`` folder the
reference uses. The same indices come out as long as the train split lists its images in the
reference's order, which the readers below reproduce (ImageFolder order, torchvision order).

On-disk layouts (``root`` is the folder the reference calls ``location``/``data_location``)
-------------------------------------------------------------------------------------------
``reference`` (what the task_vectors / tall_masks loaders expect)::

    SUN397         sun397/{train,val}/<class>/*          (test = val, as in the reference)
    DTD            dtd/{train,val}/<class>/*              (test = val)
    EuroSAT        EuroSAT_splits/{train,val,test}/<class>/*
    RESISC45       resisc45/NWPU-RESISC45/<class>/*.jpg + resisc45/resisc45-{train,test}.txt
    Cars           stanford_cars/{devkit/cars_train_annos.mat, devkit/cars_meta.mat, cars_train/,
                   cars_test_annos_withlabels.mat, cars_test/}          (needs scipy)
    GTSRB          gtsrb/GTSRB/Training/<class>/*.ppm; gtsrb/GTSRB/Final_Test/Images/*.ppm +
                   gtsrb/GT-final_test.csv
    MNIST, CIFAR10, CIFAR100   torchvision's files directly under root
    SVHN svhn/, STL10 stl10/, Flowers102 flowers102/, OxfordIIITPet OxfordIIITPet/, Food101
    food101/, EMNIST EMNIST/ (split "digits"), KMNIST KMNIST/, FashionMNIST FashionMNIST/,
    RenderedSST2 RenderedSST2/, PCAM PCAM/ (needs h5py): torchvision's files under that folder
    FER2013        fer2013/{fer2013.csv | icml_face_data.csv | train.csv,test.csv} (torchvision's
                   Kaggle files; the reference reads the Hugging Face copy Jeneral/fer-2013)
    ImageNet       imagenet/train, imagenet/val_in_folder (or imagenet/val), wnid folders
    ImageNetV2     ImageNetV2-matched-frequency/<0..999>/*.jpeg   (imagenetv2_pytorch)
    ImageNetSketch sketch/<wnid>/*;  ImageNetR imagenet-r/<wnid>/*;  ImageNetA imagenet-a/<wnid>/*
    ObjectNet      objectnet-1.0/images/<folder>/* + objectnet-1.0/mappings/ (the four mapping
                   files shipped with ObjectNet); 2-pixel border cropped as in WiSE-FT

``imagefolder``: ``<root>/<Task>/{train,test}/<class>/*.{jpg,png,...}`` (``<Task>`` as named
here, or lower case). Class folders are matched to labels by name (the class name, with ``_``
for spaces, case-insensitive, or the reference folder name), else by integer folder names
(``0``, ``1``, ...), else — only when their number equals the number of classes — in sorted
order (ImageFolder's rule), which is reported in the split's description.
``layout="auto"`` takes the reference layout when its folder exists, else ``imagefolder``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lines.clip import _classnames as C
from lines.errors import LinesError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SplitName = Literal["train", "val", "test"]
Layout = Literal["auto", "reference", "imagefolder"]
ValRule = Literal["reference", "from_train", "folder"]

VAL_FRACTION = 0.1
VAL_MAX_SAMPLES = 5000
VAL_SEED = 0


# ----------------------------------------------------------------------------------------------
# Templates (tall_masks src/datasets/templates.py), "{c}" standing for the class name

_PHOTO_18 = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.",
    "a bad photo of a {c}.",
    "a good photo of a {c}.",
    "a photo of a small {c}.",
    "a photo of a big {c}.",
    "a photo of the {c}.",
    "a blurry photo of the {c}.",
    "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.",
    "a high contrast photo of the {c}.",
    "a bad photo of the {c}.",
    "a good photo of the {c}.",
    "a photo of the small {c}.",
    "a photo of the big {c}.",
)
_A_THE = ("a photo of a {c}.", "a photo of the {c}.")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Cars": (
        "a photo of a {c}.",
        "a photo of the {c}.",
        "a photo of my {c}.",
        "i love my {c}!",
        "a photo of my dirty {c}.",
        "a photo of my clean {c}.",
        "a photo of my new {c}.",
        "a photo of my old {c}.",
    ),
    "CIFAR10": _PHOTO_18,
    "CIFAR100": _PHOTO_18,
    "DTD": (
        "a photo of a {c} texture.",
        "a photo of a {c} pattern.",
        "a photo of a {c} thing.",
        "a photo of a {c} object.",
        "a photo of the {c} texture.",
        "a photo of the {c} pattern.",
        "a photo of the {c} thing.",
        "a photo of the {c} object.",
    ),
    "EuroSAT": (
        "a centered satellite photo of {c}.",
        "a centered satellite photo of a {c}.",
        "a centered satellite photo of the {c}.",
    ),
    "Food101": ("a photo of {c}, a type of food.",),
    "GTSRB": (
        'a zoomed in photo of a "{c}" traffic sign.',
        'a centered photo of a "{c}" traffic sign.',
        'a close up photo of a "{c}" traffic sign.',
    ),
    "MNIST": ('a photo of the number: "{c}".',),
    "RESISC45": tuple(
        f"{kind} {what} of {art}{{c}}."
        for art in ("", "a ", "the ")
        for what, kind in (
            ("imagery", "satellite"),
            ("imagery", "aerial"),
            ("photo", "satellite"),
            ("photo", "aerial"),
            ("view", "satellite"),
            ("view", "aerial"),
        )
    ),
    "STL10": _A_THE,
    "SUN397": _A_THE,
    "SVHN": ('a photo of the number: "{c}".',),
    "Flowers102": ("a photo of a {c}, a type of flower.",),
    "FER2013": (
        "a photo of a {c} looking face.",
        "a photo of a face showing the emotion: {c}.",
        "a photo of a face looking {c}.",
        "a face that looks {c}.",
        "they look {c}.",
        "look at how {c} they are.",
    ),
    "PCAM": ("this is a photo of {c}",),
    "OxfordIIITPet": ("a photo of a {c}, a type of pet.",),
    "RenderedSST2": ("a {c} review of a movie.",),
    "EMNIST": ('a photo of the digit character: "{c}".',),
    "FashionMNIST": _A_THE,
    "KMNIST": ("a photo of the character {c}.",),
}


@cache
def _open_clip_zero_shot_metadata() -> Any:
    """open_clip's ImageNet class names and 80 templates, loaded from its file without importing
    open_clip (whose import pulls in torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise LinesError("open_clip is not installed: ImageNet class names come from it")
    path = Path(spec.submodule_search_locations[0]) / "zero_shot_metadata.py"
    mspec = importlib.util.spec_from_file_location("_lines_open_clip_zsm", path)
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def imagenet_classnames() -> tuple[str, ...]:
    return tuple(_open_clip_zero_shot_metadata().IMAGENET_CLASSNAMES)


def imagenet_templates() -> tuple[str, ...]:
    return tuple(f("{c}") for f in _open_clip_zero_shot_metadata().OPENAI_IMAGENET_TEMPLATES)


# ----------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Task:
    """One classification task: what its head is built from and where its files are."""

    name: str
    classnames: tuple[str, ...]  # label order; what goes into the templates (reference-exact)
    templates: tuple[str, ...]  # "{c}" stands for the class name
    # Class folder names on disk in label order, where they differ from the class names.
    folder_names: tuple[str, ...] | None = None
    head_task: str | None = None  # OOD sets are scored with this task's head (ImageNet)
    logit_subset: tuple[int, ...] | None = None  # head columns of this set's classes, label order
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, label: int) -> list[str]:
        return [t.replace("{c}", self.classnames[label]) for t in self.templates]

    def head_spec(self) -> Task:
        """The task whose head scores this one (itself, or ImageNet for the OOD sets)."""
        return get_task(self.head_task) if self.head_task else self


def _sun_folder(c: str) -> str:
    return f"{c[0]}_{c.replace(' ', '_')}"


@cache
def _tasks() -> dict[str, Task]:
    inet = imagenet_classnames()
    inet_t = imagenet_templates()
    tasks = [
        Task("SUN397", C.SUN397, TEMPLATES["SUN397"], tuple(_sun_folder(c) for c in C.SUN397)),
        Task("Cars", C.CARS, TEMPLATES["Cars"], aliases=("StanfordCars",)),
        Task("RESISC45", C.RESISC45, TEMPLATES["RESISC45"], C.RESISC45_FOLDERS),
        Task("EuroSAT", C.EUROSAT, TEMPLATES["EuroSAT"], C.EUROSAT_FOLDERS),
        Task("SVHN", C.DIGITS, TEMPLATES["SVHN"]),
        Task("GTSRB", C.GTSRB, TEMPLATES["GTSRB"], tuple(f"{i:05d}" for i in range(43))),
        Task("MNIST", C.DIGITS, TEMPLATES["MNIST"]),
        Task("DTD", C.DTD, TEMPLATES["DTD"]),
        Task("CIFAR100", C.CIFAR100, TEMPLATES["CIFAR100"]),
        Task("STL10", C.STL10, TEMPLATES["STL10"]),
        Task("Flowers102", C.FLOWERS102, TEMPLATES["Flowers102"]),
        Task(
            "OxfordIIITPet",
            C.OXFORD_PETS,
            TEMPLATES["OxfordIIITPet"],
            C.OXFORD_PETS_RAW,
            aliases=("OxfordPets",),
        ),
        Task("PCAM", C.PCAM, TEMPLATES["PCAM"]),
        Task(
            "FER2013",
            C.FER2013,
            TEMPLATES["FER2013"],
            tuple(s[0] for s in C.FER2013_SYNONYMS),
            note="prompts format each class's synonym list as a Python list, as the reference",
        ),
        Task("EMNIST", C.DIGITS, TEMPLATES["EMNIST"], note="torchvision split 'digits'"),
        Task("CIFAR10", C.CIFAR10, TEMPLATES["CIFAR10"]),
        Task("Food101", C.FOOD101, TEMPLATES["Food101"]),
        Task("FashionMNIST", C.FASHION_MNIST, TEMPLATES["FashionMNIST"]),
        Task("RenderedSST2", C.RENDERED_SST2, TEMPLATES["RenderedSST2"]),
        Task("KMNIST", C.KMNIST, TEMPLATES["KMNIST"]),
        Task("ImageNet", inet, inet_t),
        Task("ImageNetV2", inet, inet_t, head_task="ImageNet", aliases=("ImageNet-V2",)),
        Task(
            "ImageNetSketch",
            inet,
            inet_t,
            head_task="ImageNet",
            aliases=("Sketch", "ImageNet-Sketch"),
        ),
        Task(
            "ImageNetR",
            tuple(inet[i] for i in C.IMAGENET_R_SUBLIST),
            inet_t,
            head_task="ImageNet",
            logit_subset=C.IMAGENET_R_SUBLIST,
            aliases=("ImageNet-R",),
        ),
        Task(
            "ImageNetA",
            tuple(inet[i] for i in C.IMAGENET_A_SUBLIST),
            inet_t,
            head_task="ImageNet",
            logit_subset=C.IMAGENET_A_SUBLIST,
            aliases=("ImageNet-A",),
        ),
        Task(
            "ObjectNet",
            inet,
            inet_t,
            head_task="ImageNet",
            note="113 classes mapped onto ImageNet's by the dataset's own mapping files",
        ),
    ]
    return {t.name: t for t in tasks}


SUITES: dict[str, tuple[str, ...]] = {
    "8": ("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"),
}
SUITES["14"] = SUITES["8"] + ("CIFAR100", "STL10", "Flowers102", "OxfordIIITPet", "PCAM", "FER2013")
SUITES["20"] = SUITES["14"] + (
    "EMNIST",
    "CIFAR10",
    "Food101",
    "FashionMNIST",
    "RenderedSST2",
    "KMNIST",
)
SUITES["imagenet-ood"] = ("ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA", "ObjectNet")


def task_names() -> list[str]:
    return list(_tasks())


def get_task(name: str) -> Task:
    """A task by name (case-insensitive; aliases; a trailing ``Val`` as in ``MNISTVal``)."""
    tasks = _tasks()

    def match(n: str) -> Task | None:
        for t in tasks.values():
            if n.lower() in (t.name.lower(), *(a.lower() for a in t.aliases)):
                return t
        return None

    found = match(name) or (match(name[:-3]) if name.lower().endswith("val") else None)
    if found is not None:
        return found
    raise LinesError(f"unknown task '{name}' (known: {', '.join(tasks)})")


def get_suite(name: str) -> tuple[str, ...]:
    """The task names of a suite: "8", "14", "20" or "imagenet-ood"."""
    key = str(name).removesuffix("tasks").removesuffix("-task")
    if key not in SUITES:
        raise LinesError(f"unknown suite '{name}' (choose {', '.join(SUITES)})")
    return SUITES[key]


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


def _open_image(path: Path):
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
        img = _open_image(self.files[i])
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


def _class_dirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise LinesError(f"{folder}: no such folder")
    dirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not dirs:
        raise LinesError(f"{folder}: no class folders")
    return dirs


def _files_of(folder: Path, valid: Callable[[str], bool] | None = None) -> list[Path]:
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
    dirs = _class_dirs(folder)
    mapping = class_to_label or {d: i for i, d in enumerate(dirs)}
    files: list[Path] = []
    labels: list[int] = []
    for d in sorted(mapping):
        got = _files_of(folder / d, valid)
        files += got
        labels += [mapping[d]] * len(got)
    return files, labels, dirs


def _norm(s: str) -> str:
    return re.sub(r"[\s_]+", " ", s.strip().lower())


def resolve_class_folders(task: Task, dirs: Sequence[str]) -> tuple[dict[str, int], str]:
    """Label of each class folder of a generic ImageFolder: by name, by integer name, or (same
    count only) by sorted position. Returns (mapping, rule)."""
    names: dict[str, int] = {}
    fer = dict(enumerate(C.FER2013_SYNONYMS)) if task.name == "FER2013" else {}
    for i, c in enumerate(task.classnames):
        cands = [c] + ([task.folder_names[i]] if task.folder_names else []) + list(fer.get(i, ()))
        for cand in cands:
            names.setdefault(_norm(cand), i)
    by_name = {d: names.get(_norm(d)) for d in dirs}
    if all(v is not None for v in by_name.values()) and len(set(by_name.values())) == len(dirs):
        return {d: int(v) for d, v in by_name.items() if v is not None}, "by class name"
    if all(re.fullmatch(r"\d+", d) for d in dirs):
        m = {d: int(d) for d in dirs}
        if max(m.values()) >= task.num_classes:
            raise LinesError(
                f"{task.name}: class folder '{max(m, key=m.get)}' is out of range "
                f"(the task has {task.num_classes} classes)"
            )
        return m, "by integer folder name"
    if len(dirs) == task.num_classes:
        return {d: i for i, d in enumerate(dirs)}, "by sorted folder order (names not recognised)"
    unknown = next(d for d, v in by_name.items() if v is None)
    raise LinesError(
        f"{task.name}: class folder '{unknown}' matches no class name, and there are "
        f"{len(dirs)} folders for {task.num_classes} classes"
    )


# ----------------------------------------------------------------------------------------------
# Reference-layout readers


def _torchvision_datasets():
    from lines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision.datasets as tvd

    return tvd


def _labels_of(ds: Any) -> list[int]:
    if type(ds).__name__ == "PCAM":  # labels live in an HDF5 file read per item
        import h5py

        name = ds._FILES[ds._split]["targets"][0]
        with h5py.File(ds._base_folder / name) as f:
            return [int(x) for x in np.asarray(f["y"]).reshape(-1)]
    for attr in ("targets", "labels", "_labels"):
        v = getattr(ds, attr, None)
        if v is not None:
            return [int(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    if samples is not None:
        if any(s[1] is None for s in samples):  # FER2013's test.csv has no labels
            raise LinesError(
                f"torchvision.datasets.{type(ds).__name__}: these files carry no labels for this "
                "split (FER2013: use fer2013.csv or icml_face_data.csv)"
            )
        return [int(s[1]) for s in samples]
    raise LinesError(f"cannot read the labels of torchvision.datasets.{type(ds).__name__}")


# (torchvision class, sub-folder of root passed as its root, train kwargs, test kwargs)
_TV: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "MNIST": ("MNIST", "", {"train": True}, {"train": False}),
    "CIFAR10": ("CIFAR10", "", {"train": True}, {"train": False}),
    "CIFAR100": ("CIFAR100", "", {"train": True}, {"train": False}),
    "SVHN": ("SVHN", "svhn", {"split": "train"}, {"split": "test"}),
    "STL10": ("STL10", "stl10", {"split": "train"}, {"split": "test"}),
    "Flowers102": ("Flowers102", "flowers102", {"split": "train"}, {"split": "test"}),
    "OxfordIIITPet": ("OxfordIIITPet", "OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "PCAM": ("PCAM", "PCAM", {"split": "train"}, {"split": "test"}),
    "FER2013": ("FER2013", "", {"split": "train"}, {"split": "test"}),
    "EMNIST": (
        "EMNIST",
        "EMNIST",
        {"split": "digits", "train": True},
        {"split": "digits", "train": False},
    ),
    "KMNIST": ("KMNIST", "KMNIST", {"train": True}, {"train": False}),
    "FashionMNIST": ("FashionMNIST", "FashionMNIST", {"train": True}, {"train": False}),
    "Food101": ("Food101", "food101", {"split": "train"}, {"split": "test"}),
    "RenderedSST2": ("RenderedSST2", "RenderedSST2", {"split": "train"}, {"split": "test"}),
}
# torchvision's own data folder for each dataset (relative to root): marks the reference layout
# (and is what the cache fingerprints).
_TV_DATA = {
    "MNIST": "MNIST/raw",
    "CIFAR10": "cifar-10-batches-py",
    "CIFAR100": "cifar-100-python",
    "SVHN": "svhn/*_32x32.mat",
    "STL10": "stl10/stl10_binary",
    "Flowers102": "flowers102/flowers-102",
    "OxfordIIITPet": "OxfordIIITPet/oxford-iiit-pet",
    "PCAM": "PCAM/pcam",
    "FER2013": "fer2013/*.csv",
    "EMNIST": "EMNIST/EMNIST/raw",
    "KMNIST": "KMNIST/KMNIST/raw",
    "FashionMNIST": "FashionMNIST/FashionMNIST/raw",
    "Food101": "food101/food-101",
    "RenderedSST2": "RenderedSST2/rendered-sst2",
}


def _tv_split(task: Task, root: Path, split: str) -> Split:
    cls_name, sub, train_kw, test_kw = _TV[task.name]
    tvd = _torchvision_datasets()
    base = root / sub if sub else root
    kw = train_kw if split == "train" else test_kw
    try:
        ds = getattr(tvd, cls_name)(root=str(base), download=False, **kw)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise LinesError(
            f"{task.name}: torchvision.datasets.{cls_name} found no usable files under {base} "
            f"({msg}); nothing is downloaded: place its files there"
        ) from None
    except ImportError as e:
        raise LinesError(
            f"{task.name}: reading its files needs {e.name} (pip install {e.name})"
        ) from None
    data = _TV_DATA[task.name]
    fp_root = root / (data.split("/*")[0] if "*" in data else data)
    return TorchvisionSplit(task, split, ds, _labels_of(ds), fp_root, "reference")


def _folder_split(task: Task, root: Path, sub: str, split: str) -> FileSplit:
    """ImageFolder with the reference's rule: the sorted position of the class folder is the
    label, so all the task's class folders must be there."""
    folder = root / sub
    files, labels, dirs = scan_imagefolder(folder)
    if len(dirs) != task.num_classes:
        raise LinesError(
            f"{folder}: {len(dirs)} class folders, the task has {task.num_classes} classes"
        )
    return FileSplit(task, split, files, labels, folder, "reference")


def _sun397(task: Task, root: Path, split: str) -> Split:
    return _folder_split(task, root, f"sun397/{'train' if split == 'train' else 'val'}", split)


def _dtd(task: Task, root: Path, split: str) -> Split:
    return _folder_split(task, root, f"dtd/{'train' if split == 'train' else 'val'}", split)


def _eurosat(task: Task, root: Path, split: str) -> Split:
    return _folder_split(task, root, f"EuroSAT_splits/{split}", split)


def _resisc45(task: Task, root: Path, split: str) -> Split:
    lst = root / "resisc45" / f"resisc45-{split}.txt"
    if not lst.is_file():
        raise LinesError(f"RESISC45: split list {lst} missing")
    keep = {ln.strip() for ln in lst.read_text().splitlines() if ln.strip()}
    folder = root / "resisc45" / "NWPU-RESISC45"
    files, labels, dirs = scan_imagefolder(folder, valid=lambda p: os.path.basename(p) in keep)
    if list(dirs) != list(C.RESISC45_FOLDERS):
        raise LinesError(f"{folder}: class folders are not RESISC45's 45 classes")
    return FileSplit(task, split, files, labels, folder, "reference")


def _gtsrb(task: Task, root: Path, split: str) -> Split:
    base = root / "gtsrb"
    if split == "train":
        folder = base / "GTSRB" / "Training"
        files, labels, dirs = scan_imagefolder(folder)
        if len(dirs) != 43:
            raise LinesError(f"{folder}: {len(dirs)} class folders, GTSRB has 43")
        files_l = [(f, y) for f, y in zip(files, labels, strict=True) if f.suffix == ".ppm"]
        return FileSplit(
            task, split, [f for f, _ in files_l], [y for _, y in files_l], folder, "reference"
        )
    import csv

    gt = base / "GT-final_test.csv"
    images = base / "GTSRB" / "Final_Test" / "Images"
    if not gt.is_file() or not images.is_dir():
        raise LinesError(f"GTSRB: test files missing ({gt} and {images})")
    with open(gt, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
    return FileSplit(
        task,
        split,
        [images / r["Filename"] for r in rows],
        [int(r["ClassId"]) for r in rows],
        images,
        "reference",
    )


def _cars(task: Task, root: Path, split: str) -> Split:
    try:
        import scipy.io as sio
    except ImportError:
        raise LinesError("Cars: reading its .mat annotations needs scipy") from None
    base = root / "stanford_cars"
    if split == "train":
        annos, images = base / "devkit" / "cars_train_annos.mat", base / "cars_train"
    else:
        annos, images = base / "cars_test_annos_withlabels.mat", base / "cars_test"
    if not annos.is_file() or not images.is_dir():
        raise LinesError(f"Cars: {annos} or {images} missing")
    rows = sio.loadmat(str(annos), squeeze_me=True)["annotations"]
    rows = np.atleast_1d(rows)
    files = [images / str(r["fname"]) for r in rows]
    labels = [int(r["class"]) - 1 for r in rows]  # 1-based in the .mat
    return FileSplit(task, split, files, labels, images, "reference")


def _imagenet(task: Task, root: Path, split: str) -> Split:
    if split == "train":
        return _folder_split(task, root, "imagenet/train", split)
    sub = "imagenet/val_in_folder" if (root / "imagenet/val_in_folder").is_dir() else "imagenet/val"
    return _folder_split(task, root, sub, split)


def _imagenet_ood(sub: str) -> Callable[[Task, Path, str], Split]:
    def read(task: Task, root: Path, split: str) -> Split:
        if split != "test":
            raise LinesError(f"{task.name}: only a test split (an evaluation-only set)")
        folder = root / sub
        dirs = _class_dirs(folder)
        if all(re.fullmatch(r"\d+", d) for d in dirs):  # ImageNetV2: folders are the labels
            mapping = {d: int(d) for d in dirs}
            files, labels, _ = scan_imagefolder(folder, mapping)
        else:
            files, labels, _ = scan_imagefolder(folder)
            want = len(task.logit_subset) if task.logit_subset else 1000
            if len(dirs) != want:
                raise LinesError(f"{folder}: {len(dirs)} class folders, expected {want}")
        return FileSplit(task, split, files, labels, folder, "reference")

    return read


def _objectnet(task: Task, root: Path, split: str) -> Split:
    """WiSE-FT's ObjectNet protocol: the 113 ObjectNet classes that map onto ImageNet classes;
    a class's logit is the max over its ImageNet classes' logits; a 2-pixel border is cropped."""
    if split != "test":
        raise LinesError("ObjectNet: only a test split (an evaluation-only set)")
    base = root / "objectnet-1.0"
    maps = next(
        (p for p in (base / "mappings", root / "objectnet_metadata") if p.is_dir()),
        base / "mappings",
    )
    try:
        folder_map = json.loads((maps / "folder_to_objectnet_label.json").read_text())
        onet_to_inet = json.loads((maps / "objectnet_to_imagenet_1k.json").read_text())
        pytorch_map = json.loads((maps / "pytorch_to_imagenet_2012_id.json").read_text())
        inet_lines = (maps / "imagenet_to_label_2012_v2").read_text().splitlines()
    except FileNotFoundError as e:
        raise LinesError(
            f"ObjectNet: mapping file {e.filename} missing (from the ObjectNet zip)"
        ) from None
    label_to_folder = {v: k for k, v in folder_map.items()}
    id2012_to_pytorch = {int(v): int(k) for k, v in pytorch_map.items()}
    inet_name_to_idx = {
        name.strip(): id2012_to_pytorch[i] for i, name in enumerate(inet_lines) if name.strip()
    }
    folders_to_ids: dict[str, list[int]] = {}
    for onet_name, inet_names in onet_to_inet.items():
        ids = [inet_name_to_idx[n] for n in inet_names.split("; ")]
        folders_to_ids[label_to_folder[onet_name]] = ids
    folders = sorted(folders_to_ids)
    images = base / "images"
    mapping = {f: i for i, f in enumerate(folders) if (images / f).is_dir()}
    files, labels, _ = scan_imagefolder(images, mapping)
    groups = tuple(tuple(folders_to_ids[f]) for f in folders)
    return FileSplit(
        task, split, files, labels, images, "reference", crop_border=2, logit_groups=groups
    )


# Per task: glob patterns (relative to root) any of which marks the reference layout, and reader.
_REFERENCE: dict[str, tuple[tuple[str, ...], Callable[[Task, Path, str], Split]]] = {
    "SUN397": (("sun397/val",), _sun397),
    "DTD": (("dtd/val",), _dtd),
    "EuroSAT": (("EuroSAT_splits",), _eurosat),
    "RESISC45": (("resisc45/NWPU-RESISC45",), _resisc45),
    "GTSRB": (("gtsrb/GTSRB",), _gtsrb),
    "Cars": (("stanford_cars/devkit",), _cars),
    "ImageNet": (("imagenet/val_in_folder", "imagenet/val"), _imagenet),
    "ImageNetV2": (
        ("ImageNetV2-matched-frequency",),
        _imagenet_ood("ImageNetV2-matched-frequency"),
    ),
    "ImageNetSketch": (("sketch",), _imagenet_ood("sketch")),
    "ImageNetR": (("imagenet-r",), _imagenet_ood("imagenet-r")),
    "ImageNetA": (("imagenet-a",), _imagenet_ood("imagenet-a")),
    "ObjectNet": (("objectnet-1.0",), _objectnet),
}
for _name, _data in _TV_DATA.items():
    _REFERENCE[_name] = ((_data,), _tv_split)


# ----------------------------------------------------------------------------------------------
# Generic ImageFolder layout


def _imagefolder_dir(task: Task, root: Path) -> Path | None:
    for cand in (task.name, task.name.lower(), *task.aliases):
        if (root / cand).is_dir():
            return root / cand
    return None


def _imagefolder_split(task: Task, root: Path, split: str) -> Split:
    base = _imagefolder_dir(task, root)
    assert base is not None
    folder = base / split
    dirs = _class_dirs(folder)
    mapping, rule = resolve_class_folders(task, dirs)
    files, labels, _ = scan_imagefolder(folder, mapping)
    return FileSplit(task, split, files, labels, folder, "imagefolder", notes=[f"labels {rule}"])


# ----------------------------------------------------------------------------------------------
# Entry point


def _has_reference(task: Task, root: Path) -> bool:
    ref = _REFERENCE.get(task.name)
    return ref is not None and any(any(root.glob(m)) for m in ref[0])


def resolve_layout(task: Task, root: Path, layout: Layout = "auto") -> str:
    ref = _REFERENCE.get(task.name)
    has_ref = _has_reference(task, root)
    has_if = _imagefolder_dir(task, root) is not None
    where = " or ".join(str(root / m) for m in ref[0]) if ref else ""
    if layout == "reference":
        if not has_ref:
            raise LinesError(f"{task.name}: reference layout not found ({where or 'none known'})")
        return "reference"
    if layout == "imagefolder":
        if not has_if:
            raise LinesError(f"{task.name}: no ImageFolder layout at {root / task.name}")
        return "imagefolder"
    if layout != "auto":
        raise LinesError(f"unknown layout '{layout}' (choose auto, reference or imagefolder)")
    if has_ref:
        return "reference"
    if has_if:
        return "imagefolder"
    ref_where = f"{where} (reference layout) or " if ref else ""
    raise LinesError(
        f"{task.name}: no data under {root}: looked for {ref_where}{root / task.name}/"
        "{train,test}/<class>/ (ImageFolder); nothing is downloaded"
    )


def load_split(
    task: str | Task,
    split: SplitName,
    root: str | os.PathLike[str],
    *,
    layout: Layout = "auto",
    val: ValRule = "reference",
) -> Split:
    """The images of ``split`` of ``task`` under ``root`` (see the module docstring)."""
    t = task if isinstance(task, Task) else get_task(task)
    r = Path(root).expanduser()
    if split not in ("train", "val", "test"):
        raise LinesError(f"unknown split '{split}' (choose train, val or test)")
    lay = resolve_layout(t, r, layout)
    read = _REFERENCE[t.name][1] if lay == "reference" else _imagefolder_split
    if split != "val":
        return read(t, r, split)
    if val == "folder" or (val == "reference" and lay == "reference" and t.name == "EuroSAT"):
        return read(t, r, "val")
    if val not in ("reference", "from_train", "folder"):
        raise LinesError(f"unknown validation rule '{val}' (reference, from_train or folder)")
    train = read(t, r, "train")
    _, val_idx = protocol_split_indices(len(train))
    return train.subset(val_idx, "val")
