"""The task registry, the reference validation split and the on-disk readers, on tiny generated
image folders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from lines.clip import _classnames as C
from lines.clip.datasets import SUITES, get_suite, get_task, task_names
from lines.clip.layouts import load_split, resolve_class_folders
from lines.clip.splits import protocol_split_indices, val_size
from lines.errors import LinesError

REFERENCE_8 = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
ADDED_14 = ["CIFAR100", "STL10", "Flowers102", "OxfordIIITPet", "PCAM", "FER2013"]
ADDED_20 = ["EMNIST", "CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "KMNIST"]
NUM_CLASSES = {
    "SUN397": 397, "Cars": 196, "RESISC45": 45, "EuroSAT": 10, "SVHN": 10, "GTSRB": 43,
    "MNIST": 10, "DTD": 47, "CIFAR100": 100, "STL10": 10, "Flowers102": 102,
    "OxfordIIITPet": 37, "PCAM": 2, "FER2013": 7, "EMNIST": 10, "CIFAR10": 10, "Food101": 101,
    "FashionMNIST": 10, "RenderedSST2": 2, "KMNIST": 10, "ImageNet": 1000, "ImageNetR": 200,
    "ImageNetA": 200,
}  # fmt: skip


def test_suites_are_the_reference_ones():
    assert list(get_suite("8")) == REFERENCE_8
    assert list(get_suite("14")) == REFERENCE_8 + ADDED_14
    assert list(get_suite("20")) == REFERENCE_8 + ADDED_14 + ADDED_20
    assert list(SUITES["imagenet-ood"]) == [
        "ImageNetV2",
        "ImageNetSketch",
        "ImageNetR",
        "ImageNetA",
        "ObjectNet",
    ]
    with pytest.raises(LinesError, match="unknown suite"):
        get_suite("9")


def test_every_task_has_names_and_templates():
    assert len(task_names()) == 26
    for name in task_names():
        t = get_task(name)
        if not name.startswith("ImageNet") and name != "ObjectNet":  # ImageNet repeats 2 names
            assert len(set(t.classnames)) == t.num_classes, name
        assert t.templates and all("{c}" in x for x in t.templates), name
        if name in NUM_CLASSES:
            assert t.num_classes == NUM_CLASSES[name], name
    assert len(get_task("ImageNet").templates) == 80
    assert get_task("mnistval").name == "MNIST" and get_task("Sketch").name == "ImageNetSketch"
    with pytest.raises(LinesError, match="unknown task"):
        get_task("CIFAR11")


def test_prompts_reproduce_the_reference_quirks():
    assert get_task("FER2013").prompts(3)[0] == "a photo of a ['happy', 'smiling'] looking face."
    assert get_task("Food101").prompts(0) == ["a photo of apple_pie, a type of food."]
    # torchvision's sorted keys: "cheese_plate" sorts before "cheesecake"
    assert C.FOOD101.index("cheese_plate") < C.FOOD101.index("cheesecake")
    assert get_task("EuroSAT").prompts(9)[0] == "a centered satellite photo of lake or sea."
    assert get_task("GTSRB").prompts(14)[1] == 'a centered photo of a "stop" traffic sign.'
    assert get_task("RESISC45").templates[:2] == (
        "satellite imagery of {c}.",
        "aerial imagery of {c}.",
    )
    assert len(get_task("RESISC45").templates) == 18
    assert get_task("ImageNetR").classnames[0] == get_task("ImageNet").classnames[1]


def test_reference_folder_names_sort_into_label_order():
    """ImageFolder labels are sorted folder positions: the reference's folder names, sorted, must
    give the class-name order (SUN397's 'a_abbey' folders, EuroSAT's CamelCase ones)."""
    for name in ("SUN397", "EuroSAT", "RESISC45", "GTSRB"):
        folders = get_task(name).folder_names
        assert list(folders) == sorted(folders), name


def test_validation_split_is_the_reference_one():
    assert val_size(60000) == 5000 and val_size(1000) == 100 and val_size(19) == 1
    train, val = protocol_split_indices(60000)
    assert train[0] == 36044  # the reference asserts this for MNISTVal
    assert len(val) == 5000 and not set(train) & set(val)
    assert sorted(train + val) == list(range(60000))
    with pytest.raises(LinesError, match="too small"):
        val_size(5)


# ----------------------------------------------------------------------------------------------
# Generated folders


def _png(path, color, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _imagefolder(root, split, classes, per_class, ext=".png"):
    for ci, c in enumerate(classes):
        for j in range(per_class):
            _png(root / split / c / f"img{j:02d}{ext}", (ci * 20, j * 10, 100))


def test_imagefolder_by_class_names(tmp_path):
    # Folders named after the classes (underscores, another case, any order on disk).
    names = ["Forest", "annual_crop_land", "river"]
    _imagefolder(tmp_path / "EuroSAT", "test", names, 2)
    s = load_split("EuroSAT", "test", tmp_path)
    assert s.layout == "imagefolder" and len(s) == 6
    t = get_task("EuroSAT")
    by_file = {f.parent.name: int(y) for f, y in zip(s.files, s.labels, strict=True)}
    assert by_file == {"Forest": 1, "annual_crop_land": 0, "river": t.classnames.index("river")}
    assert s.describe()["notes"] == ["labels by class name"]
    assert s.image(0).mode == "RGB"


def test_imagefolder_by_integer_and_sorted_order(tmp_path):
    task = get_task("DTD")
    m, rule = resolve_class_folders(task, ["2", "7"])
    assert m == {"2": 2, "7": 7} and rule == "by integer folder name"
    m, rule = resolve_class_folders(get_task("PCAM"), ["neg", "pos"])
    assert m == {"neg": 0, "pos": 1} and rule.startswith("by sorted folder order")
    with pytest.raises(LinesError, match="matches no class name"):
        resolve_class_folders(get_task("PCAM"), ["neg", "pos", "other"])
    with pytest.raises(LinesError, match="out of range"):
        resolve_class_folders(get_task("MNIST"), ["3", "12"])


def test_val_from_train_of_an_imagefolder(tmp_path):
    _imagefolder(tmp_path / "DTD", "train", list(C.DTD[:3]), 10)
    train = load_split("DTD", "train", tmp_path)
    val = load_split("DTD", "val", tmp_path)
    assert len(val) == 3  # 10% of 30
    _, idx = protocol_split_indices(30)
    assert [str(f) for f in (train.files[i] for i in idx)] == [
        str(val.parent.files[i]) for i in val.indices
    ]
    assert np.array_equal(val.labels, train.labels[idx])


def test_reference_layouts_sun397_and_eurosat(tmp_path):
    # SUN397: sun397/{train,val}, test = val (the reference evaluates on the "val" folder).
    sun = [f"{c[0]}_{c.replace(' ', '_')}" for c in C.SUN397]
    for split in ("train", "val"):
        for i, folder in enumerate(sun):
            _png(tmp_path / "sun397" / split / folder / "x.jpg", (i % 255, 0, 0), (6, 6))
    test = load_split("SUN397", "test", tmp_path)
    assert test.layout == "reference" and test.root == tmp_path / "sun397" / "val"
    assert test.labels.tolist() == list(range(397))
    # EuroSAT: its own val folder is the validation split.
    for split in ("train", "val", "test"):
        _imagefolder(
            tmp_path / "EuroSAT_splits", split, list(C.EUROSAT_FOLDERS), 1 + (split == "train")
        )
    val = load_split("EuroSAT", "val", tmp_path)
    assert len(val) == 10 and val.root == tmp_path / "EuroSAT_splits" / "val"
    assert len(load_split("EuroSAT", "val", tmp_path, val="from_train")) == 2


def test_reference_layout_gtsrb_and_resisc45(tmp_path):
    for c in range(43):
        _png(tmp_path / "gtsrb/GTSRB/Training" / f"{c:05d}" / "00000_00000.ppm", (c, 0, 0), (5, 5))
    imgs = tmp_path / "gtsrb/GTSRB/Final_Test/Images"
    _png(imgs / "00000.ppm", (1, 2, 3), (5, 5))
    _png(imgs / "00001.ppm", (1, 2, 3), (5, 5))
    (tmp_path / "gtsrb/GT-final_test.csv").write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
        "00000.ppm;5;5;0;0;5;5;16\n00001.ppm;5;5;0;0;5;5;1\n"
    )
    assert load_split("GTSRB", "train", tmp_path).labels.tolist() == list(range(43))
    assert load_split("GTSRB", "test", tmp_path).labels.tolist() == [16, 1]

    base = tmp_path / "resisc45"
    for c in C.RESISC45_FOLDERS:
        for j in range(2):
            _png(base / "NWPU-RESISC45" / c / f"{c}_{j:03d}.jpg", (9, 9, 9), (4, 4))
    (base / "resisc45-test.txt").write_text("airplane_001.jpg\nwetland_000.jpg\n")
    s = load_split("RESISC45", "test", tmp_path)
    assert [f.name for f in s.files] == ["airplane_001.jpg", "wetland_000.jpg"]
    assert s.labels.tolist() == [0, 44]


def _idx(path, arr, magic):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_reference_layout_torchvision_mnist(tmp_path):
    """MNIST in torchvision's own files (root/MNIST/raw/*-ubyte), read without downloading."""
    raw = tmp_path / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 5)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), 2051)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    test = load_split("MNIST", "test", tmp_path)
    assert test.layout == "reference" and test.labels.tolist() == [0, 1, 2, 3, 4]
    assert test.image(0).size == (28, 28)
    val = load_split("MNIST", "val", tmp_path)
    assert len(val) == 2
    assert val.fingerprint() != load_split("MNIST", "train", tmp_path).fingerprint()


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(LinesError, match=r"no data under .*stanford_cars/devkit \(reference"):
        load_split("Cars", "test", tmp_path)
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(LinesError, match="nothing is downloaded"):
        load_split("SVHN", "test", tmp_path)


def test_imagenet_r_uses_the_imagenet_head(tmp_path):
    from lines.clip import _classnames as CN

    for j in range(200):
        _png(tmp_path / "imagenet-r" / f"n{j:08d}" / "a.jpg", (j, 0, 0), (4, 4))
    s = load_split("ImageNet-R", "test", tmp_path)
    assert s.task.head_spec().name == "ImageNet"
    cols = s.head_columns()
    assert len(cols) == 200 and cols[0] == (CN.IMAGENET_R_SUBLIST[0],)


def test_fingerprint_changes_with_files(tmp_path):
    _imagefolder(tmp_path / "DTD", "test", list(C.DTD[:2]), 2)
    a = load_split("DTD", "test", tmp_path).fingerprint()
    assert a == load_split("DTD", "test", tmp_path).fingerprint()
    _png(tmp_path / "DTD/test" / C.DTD[0] / "img00.png", (1, 1, 1), (13, 10))
    assert load_split("DTD", "test", tmp_path).fingerprint() != a


def test_torch_is_deterministic_for_val():
    # A second call gives the same split (the generator is local, not the global RNG).
    torch.manual_seed(123)
    a = protocol_split_indices(1234)
    torch.manual_seed(7)
    assert protocol_split_indices(1234) == a


def test_reference_layout_cars(tmp_path):
    """stanford_cars/ with the devkit's .mat annotations (1-based classes), read with scipy."""
    import scipy.io as sio

    base = tmp_path / "stanford_cars"
    dt = np.dtype([("fname", object), ("class", np.uint8)])
    for split, annos in (
        ("train", base / "devkit" / "cars_train_annos.mat"),
        ("test", base / "cars_test_annos_withlabels.mat"),
    ):
        rows = np.array([("00001.jpg", 1), ("00002.jpg", 196)], dtype=dt)
        annos.parent.mkdir(parents=True, exist_ok=True)
        sio.savemat(str(annos), {"annotations": rows})
        for r in rows:
            _png(base / f"cars_{split}" / r["fname"], (1, 2, 3), (6, 4))
    s = load_split("Cars", "test", tmp_path)
    assert s.labels.tolist() == [0, 195] and [f.name for f in s.files] == ["00001.jpg", "00002.jpg"]


def test_reference_layout_objectnet(tmp_path):
    """ObjectNet's own mapping files: classes that map onto ImageNet, logits as group maxima,
    a 2-pixel border cropped."""
    base = tmp_path / "objectnet-1.0"
    maps = base / "mappings"
    maps.mkdir(parents=True)
    (maps / "folder_to_objectnet_label.json").write_text(
        '{"alarm_clock": "Alarm clock", "fish": "Fish", "air_freshener": "Air freshener"}'
    )
    (maps / "objectnet_to_imagenet_1k.json").write_text(
        '{"Alarm clock": "analog clock; digital clock", "Fish": "tench"}'
    )
    (maps / "pytorch_to_imagenet_2012_id.json").write_text('{"0": 0, "409": 1, "530": 2}')
    (maps / "imagenet_to_label_2012_v2").write_text("tench\nanalog clock\ndigital clock\n")
    for folder in ("alarm_clock", "fish", "air_freshener"):
        _png(base / "images" / folder / "a.png", (5, 5, 5), (10, 8))
    s = load_split("ObjectNet", "test", tmp_path)
    assert [f.parent.name for f in s.files] == ["alarm_clock", "fish"]
    assert s.labels.tolist() == [0, 1]
    assert s.head_columns() == ((409, 530), (0,))
    assert s.image(0).size == (6, 4)
