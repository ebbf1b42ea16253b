"""The CLIP task suite: class names, prompt templates, suites, on-disk readers and the reference
validation split. Nothing is ever downloaded.

Tasks and suites
----------------
The 20 tasks of the reference (task_vectors 8, TALL masks 14 and 20) and ImageNet with its OOD
sets (WiSE-FT): ``SUITES["8"|"14"|"20"|"imagenet-ood"]``. Class names and templates are those of
tall_masks' ``src/datasets`` (see ``_classnames``); ImageNet's come from open_clip. Names are
matched case-insensitively and a trailing ``Val`` (``MNISTVal``) is accepted.

The readers of the splits are in :mod:`lines.clip.splits` (``Split``, the validation split,
ImageFolder scanning) and :mod:`lines.clip.layouts` (the on-disk layouts, ``load_split``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lines.clip import _classnames as C
from lines.errors import LinesError

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
