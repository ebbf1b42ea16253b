"""The CLIP suite's checkpoints: stage ``prepare`` (every checkpoint source → canonical
safetensors + manifests under ``ckpt/``) and :class:`Checkpoints`, the prepared folder read by
key and by task."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lines.errors import LinesError
from lines.protocol.results import read_json, write_json

PRETRAINED = "pretrained.safetensors"
TEXT = "text.safetensors"
FINETUNED_DIR = "finetuned"
PREPARE_INDEX = "prepare.json"


def resolve_tasks(suite: str, tasks: Sequence[str]) -> list[str]:
    """Registry names of ``tasks`` (when given) or of the suite's tasks."""
    from lines.clip.datasets import get_suite, get_task

    names = list(tasks) if tasks else list(get_suite(str(suite)))
    out = [get_task(t).name for t in names]
    if len(set(out)) != len(out):
        raise LinesError(f"a task is listed twice: {names}")
    return out


# ----------------------------------------------------------------------------------------------
# prepare


def _stat_fingerprint(path: Path) -> list[list[Any]]:
    """Size and mtime of a file, or of the files directly inside a folder: cheap identity of a
    source between runs (the manifests also hold the sha256 of source files)."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for p in sorted(path.iterdir()):
        if p.is_file():
            st = p.stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


_MODEL_RX = re.compile(r"ViT-([BLHg])-(\d+)", re.IGNORECASE)
_WIDTHS = {"b": 768, "l": 1024, "h": 1280}


def check_model_name(model: str, spec: Mapping[str, Any]) -> None:
    """``ViT-B-32``-style names must agree with the weights' patch size and width."""
    m = _MODEL_RX.search(model or "")
    if not m:
        return
    size, patch = m.group(1).lower(), int(m.group(2))
    if spec["patch_size"] != patch or (size in _WIDTHS and spec["width"] != _WIDTHS[size]):
        raise LinesError(
            f"common.model is {model} but the pretrained weights are a ViT with patch "
            f"{spec['patch_size']} and width {spec['width']}: fix common.model or the sources"
        )


def run_prepare(
    pretrained: str,
    text: str,
    finetuned: Mapping[str, str],
    out: Path,
    *,
    model: str = "",
    hub_cache: str = "",
    offline: bool | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Canonical safetensors (+ manifests) of every source under ``out``; see the module doc."""
    from lines.clip.model import vision_spec
    from lines.clip.sources import fetch, prepare_checkpoint
    from lines.io import load_state_dict

    if not pretrained:
        raise LinesError("sources.pretrained is empty: name the pretrained CLIP")
    if not finetuned:
        raise LinesError("sources.finetuned is empty: give one fine-tuned checkpoint per task")
    for key in finetuned:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", key):
            raise LinesError(f"sources.finetuned key '{key}': use letters, digits, _ . + - only")
    cache = Path(hub_cache).expanduser() if hub_cache else _default_hub_cache()
    out = Path(out)
    (out / FINETUNED_DIR).mkdir(parents=True, exist_ok=True)
    index_path = out / PREPARE_INDEX
    old = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index: dict[str, Any] = {"model": model, "hub_cache": str(cache), "finetuned": {}}
    kw = dict(offline=offline, timeout=timeout)

    def one(name: str, ref: str, target: Path, prev: Mapping[str, Any] | None, **extra: Any):
        got = fetch(ref, cache, **kw)
        stat = _stat_fingerprint(got.path)
        if (
            prev
            and prev.get("ref") == ref
            and prev.get("stat") == stat
            and prev.get("extra") == {k: str(v) for k, v in extra.items()}
            and target.is_file()
            and target.with_suffix(".json").is_file()
        ):
            print(f"prepare: {name} unchanged ({ref})", file=sys.stderr)
            return prev
        t0 = time.perf_counter()
        man = prepare_checkpoint(ref, target, cache, overwrite=True, **kw, **extra)
        print(f"prepare: {name} <- {ref} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
        return {
            "ref": ref,
            "stat": stat,
            "extra": {k: str(v) for k, v in extra.items()},
            "path": str(target.relative_to(out)),
            "source": man["source"],
            "layout": man.get("layout"),
            "filled": man.get("filled", []),
            "sha256": man["output"]["sha256"],
        }

    pre_file = out / PRETRAINED
    index["pretrained"] = one("pretrained", pretrained, pre_file, old.get("pretrained"))
    index["text"] = one("text", text or pretrained, out / TEXT, old.get("text"), towers="full")
    if "model_id" not in index["text"]:  # identifies the heads' text tower whatever its layout
        index["text"]["model_id"] = text_model_id(out / TEXT)
    spec = vision_spec(load_state_dict(pre_file))
    index["spec"] = {k: v for k, v in vars(spec).items()}
    check_model_name(model, index["spec"])
    for key, ref in finetuned.items():
        index["finetuned"][key] = one(
            key,
            ref,
            out / FINETUNED_DIR / f"{key}.safetensors",
            (old.get("finetuned") or {}).get(key),
            projection_from=pre_file.resolve(),
        )
    # A source removed from the params leaves no stale checkpoint behind.
    keep = {f"{k}.safetensors" for k in finetuned} | {f"{k}.json" for k in finetuned}
    for p in (out / FINETUNED_DIR).iterdir():
        if p.name not in keep:
            p.unlink() if p.is_file() else shutil.rmtree(p)
    write_json(index_path, index)
    return index


def text_model_id(path: Path) -> str:
    """``TextEncoder.model_id`` of a whole-CLIP file: the content hash of its text tower."""
    from lines.clip.convert import split_openclip, to_openclip
    from lines.clip.model import tensors_digest
    from lines.io import load_state_dict

    full, _ = to_openclip(load_state_dict(path))
    _, text_sd, rest = split_openclip(full)
    if "logit_scale" not in rest:
        raise LinesError(f"{path}: no text tower (need a whole CLIP for the heads)")
    return tensors_digest({**text_sd, "logit_scale": rest["logit_scale"]})


def _default_hub_cache() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return Path("~/.cache/huggingface/hub").expanduser()


class Checkpoints:
    """The prepared checkpoints of a ``ckpt/`` folder: paths and sha256s by key and by task."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = read_json(self.folder / PREPARE_INDEX)
        self.pretrained = self.folder / PRETRAINED
        self.text = self.folder / TEXT

    def path(self, key: str) -> Path:
        if key not in self.index["finetuned"]:
            raise LinesError(
                f"no fine-tuned checkpoint '{key}' (sources.finetuned has: "
                f"{', '.join(self.index['finetuned']) or 'none'})"
            )
        return self.folder / self.index["finetuned"][key]["path"]

    def key_of(self, task: str) -> str:
        """The sources.finetuned key of a task: its registry name, case-insensitive, with or
        without a trailing ``Val`` (tall_masks' folder names)."""
        from lines.clip.datasets import get_task

        for key in self.index["finetuned"]:
            try:
                if get_task(key).name == task:
                    return key
            except LinesError:
                continue
        raise LinesError(
            f"no fine-tuned checkpoint for task {task}: add sources.finetuned.{task} to "
            "clip/params.yaml"
        )

    def for_task(self, task: str) -> Path:
        return self.path(self.key_of(task))

    def sha256(self, key: str) -> str:
        return self.index["finetuned"][key]["sha256"]
