"""The on-disk layouts the CLIP tasks are read from, and ``load_split``, their entry point.
Nothing is ever downloaded.

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

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lines.clip import _classnames as C
from lines.clip.datasets import Task, get_task
from lines.clip.splits import (
    FileSplit,
    Split,
    TorchvisionSplit,
    class_dirs,
    protocol_split_indices,
    scan_imagefolder,
)
from lines.errors import LinesError

SplitName = Literal["train", "val", "test"]
Layout = Literal["auto", "reference", "imagefolder"]
ValRule = Literal["reference", "from_train", "folder"]


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
        dirs = class_dirs(folder)
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
    dirs = class_dirs(folder)
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
