"""Stage entry points of the CLIP benchmark: ``python -m lines.clip.stages STAGE …``.

``clip/dvc.yaml`` calls these with the sections of ``clip/params.yaml`` unpacked as
``--key value`` (DVC's dict unpacking: lists become ``--key a b``, an empty list disappears, so
every list option defaults to "empty"). This module never reads params.yaml and imports neither
Prefect nor MLflow. Paths below are relative to the stage's working directory (``clip/``).

=============== ===================================================================================
stage           what it writes
=============== ===================================================================================
prepare         ``ckpt/``: every checkpoint source (``openclip:``/``hf:`` references or local
                files and folders in any community layout) in canonical form —
                ``pretrained.safetensors`` (image tower), ``text.safetensors`` (the whole CLIP,
                for the heads), ``finetuned/<key>.safetensors`` — each with its manifest, and
                ``prepare.json`` (sources, sha256s, the tower's sizes). Unchanged sources are
                not converted again (the output persists between runs).
heads           ``out/heads/``: the zero-shot head of every task (``heads.safetensors``,
                ``heads.json``); computed through the content-keyed cache under ``cache_dir``.
finetuned_eval  ``out/eval/base.json``: zero-shot accuracy of θ_0 on every task and of each
                fine-tuned model on its own task, val and test (or read from a reference JSON
                such as tall_masks' ``nonlinear_ft_accuracies.json``).
merge           ``out/merge/merge.json`` + ``merge_sweep.csv``: task arithmetic, TIES, Consensus
                (any ``lines`` method), each without LiNeS (uniform λ) and with LiNeS (β, α from
                the rule); every coefficient chosen on val by average normalised accuracy,
                reported on test, absolute and normalised, per task and on average.
edit            ``out/edit/``: single-task LiNeS editing over γ (target vs control).
wiseft          ``out/wiseft/``: WiSE-FT with and without LiNeS, target task → shifted tasks
                (ImageNet → its OOD sets in the reference).
soups           ``out/soups/``: uniform and greedy soups, with and without LiNeS.
report          ``out/report/``: report.md (tables, plots), metrics.json, merge_table.csv.
=============== ===================================================================================

The output shapes are those of the text/vision pipeline (``out/merge/merge.json`` etc.), so the
orchestration's records and the report helpers read both. Every task vector goes through the
engine (``build_task_vector``, once per method); a sweep then costs one scaled add per tensor
and one evaluation per point.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lines.errors import LinesError

PRETRAINED = "pretrained.safetensors"
TEXT = "text.safetensors"
FINETUNED_DIR = "finetuned"
PREPARE_INDEX = "prepare.json"
HEADS_FILE = "heads.safetensors"
HEADS_INDEX = "heads.json"
SPLITS = ("val", "test")

# ----------------------------------------------------------------------------------------------
# Small helpers


def mean(xs: Any) -> float:
    xs = [float(x) for x in xs]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _finite_or(x: float, default: float = float("-inf")) -> float:
    return x if isinstance(x, int | float) and math.isfinite(x) else default


def write_json(path: Path, obj: Any) -> None:
    from lines.io import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(path), obj)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LinesError(f"{path}: missing (run the upstream stage first)") from None


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows → CSV; floats written with repr (exact), so the CSV and the JSON agree."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (repr(v) if isinstance(v, float) else v) for c, v in r.items()})
    tmp.replace(path)


def normalise(acc: Mapping[str, float], ref: Mapping[str, float]) -> dict[str, float]:
    return {t: (acc[t] / ref[t] if ref.get(t) else float("nan")) for t in acc}


def resolve_tasks(suite: str, tasks: Sequence[str]) -> list[str]:
    """Registry names of ``tasks`` (when given) or of the suite's tasks."""
    from lines.clip.datasets import get_suite, get_task

    names = list(tasks) if tasks else list(get_suite(str(suite)))
    out = [get_task(t).name for t in names]
    if len(set(out)) != len(out):
        raise LinesError(f"a task is listed twice: {names}")
    return out


def _device(name: str) -> torch.device:
    from lines.clip.evaluate import _device as dev

    return dev(name)


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


# ----------------------------------------------------------------------------------------------
# Evaluation: one image tower, the heads, the cached splits


class Bench:
    """Accuracy of image-tower state dicts on tasks: the pretrained tower is built once, a state
    dict is loaded into it per evaluation point, the heads come from ``out/heads`` (else the
    content-keyed cache under ``cache_dir``, computed from ``ckpt/text.safetensors``) and the
    images from the preprocessed-tensor cache under ``cache_dir``."""

    def __init__(self, a: argparse.Namespace, ckpt: Path, heads_dir: Path | None = None):
        from lines.clip.evaluate import preprocess_for
        from lines.families import partition_keys
        from lines.io import load_state_dict

        self.a = a
        self.ck = Checkpoints(ckpt)
        self.dev = _device(a.device)
        self.quick_gelu = a.act == "quick_gelu"
        base = load_state_dict(self.ck.pretrained)
        if a.tower == "open_clip":
            from lines.clip.model import build_image_encoder as build
        else:  # the same module without importing open_clip (see lines.clip.tower)
            from lines.clip.tower import build_vision_tower as build
        self.encoder = build(base, heads=a.heads or None, quick_gelu=self.quick_gelu)
        self.encoder.eval().to(self.dev)
        self.preprocess = preprocess_for(self.encoder)
        self.base = {k: v.to(self.dev, torch.float32) for k, v in base.items()}
        self.dtypes = {k: v.dtype for k, v in base.items()}
        self.part = partition_keys(list(base), None, a.block_policy)
        self._blocks = {k: self.part.block_of(k) for k in base}
        self.heads_dir = Path(heads_dir) if heads_dir else None
        self._heads: dict[str, Any] = {}
        self._splits: dict[tuple[str, str], Any] = {}
        self._text_id: str | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=".lines-clip-", dir=self._scratch_dir()))
        self.calls = 0
        self.eval_seconds = 0.0
        self.images = 0

    def _scratch_dir(self) -> Path:
        d = Path(self.a.cache_dir) / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def L(self) -> int:
        return self.part.num_blocks

    # -- heads ---------------------------------------------------------------------------
    def _text_model_id(self) -> str:
        if self._text_id is None:
            self._text_id = self.ck.index["text"].get("model_id") or text_model_id(self.ck.text)
        return self._text_id

    def head(self, task: str):  # noqa: ANN201 - ZeroShotHead
        from lines.clip.datasets import get_task

        name = get_task(task).head_spec().name
        if name not in self._heads:
            from lines.clip.heads import ZeroShotHead, zero_shot_head

            h = None
            if self.heads_dir is not None and (self.heads_dir / HEADS_FILE).is_file():
                from lines.io import load_state_dict

                info = read_json(self.heads_dir / HEADS_INDEX)
                if name in info["tasks"]:
                    if info.get("model_id") != self._text_model_id():
                        raise LinesError(
                            f"{self.heads_dir}: heads of another text tower; rerun the heads stage"
                        )
                    w = load_state_dict(self.heads_dir / HEADS_FILE)[name]
                    h = ZeroShotHead(name, w, None, info["model_id"], info["tasks"][name]["key"])
            if h is None:  # a task outside the suite (WiSE-FT's, the soups' controls)
                h = zero_shot_head(
                    name,
                    lambda: _text_encoder(self.ck.text, self.a),
                    cache_dir=self.a.cache_dir,
                    model_id=self._text_model_id(),
                    device=self.dev,
                )
            h.weight = h.weight.to(self.dev)
            self._heads[name] = h
        return self._heads[name]

    # -- data ----------------------------------------------------------------------------
    def split(self, task: str, split: str):  # noqa: ANN201 - Split
        from lines.clip.datasets import load_split

        key = (task, split)
        if key not in self._splits:
            s = load_split(task, split, self.a.data_root, layout=self.a.layout)  # type: ignore[arg-type]
            limit = self.a.max_val if split == "val" else self.a.max_test
            if limit and limit < len(s):
                g = torch.Generator().manual_seed(self.a.seed)
                idx = torch.randperm(len(s), generator=g)[:limit].sort().values.tolist()
                s = s.subset(idx, split)
            # The files do not change during a stage: fingerprint them (a stat of every file,
            # which keys the tensor cache) once, not at every evaluation of a sweep.
            fp = s.fingerprint()
            s.fingerprint = lambda fp=fp: fp  # type: ignore[method-assign]
            self._splits[key] = s
        return self._splits[key]

    def num_examples(self, task: str, split: str) -> int:
        return len(self.split(task, split))

    # -- weights -------------------------------------------------------------------------
    def load(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load an image-tower state dict (``visual.*`` keys) into the encoder."""
        own = self.encoder.state_dict()
        with torch.no_grad():
            for k, v in sd.items():
                own[k[len("visual.") :]].copy_(v)

    def theta(
        self, tau: Mapping[str, torch.Tensor] | None, lambdas: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        """θ = θ_0 + λ(ℓ)·τ on the device (the arithmetic of ``apply_task_vector``)."""
        if tau is None:
            return self.base
        out = {}
        for k, b in self.base.items():
            t = tau.get(k)
            out[k] = b if t is None else b + lambdas[self._blocks[k] - 1] * t
        return out

    def task_vector(
        self, name: str, finetuned: Sequence[Path], method: Any, norm: str = "l1"
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """τ_MTL of ``method`` over ``finetuned`` through the engine, held on the device."""
        from lines.engine import build_task_vector
        from lines.io import load_state_dict

        path = self.tmp / f"{name}.safetensors"
        man = build_task_vector(
            self.ck.pretrained,
            list(finetuned),
            method,
            path,
            block_policy=self.a.block_policy,
            norm=norm,  # type: ignore[arg-type]
            overwrite=True,
            progress=False,
            device=str(self.dev),
        )
        tau = {k: v.to(self.dev, torch.float32) for k, v in load_state_dict(path).items()}
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        return tau, man

    def finetuned_state(self, path: Path) -> dict[str, torch.Tensor]:
        from lines.io import load_state_dict

        return {k: v.to(self.dev, torch.float32) for k, v in load_state_dict(path).items()}

    # -- accuracy ------------------------------------------------------------------------
    def accuracy(
        self,
        sd: Mapping[str, torch.Tensor] | None,
        split: str,
        tasks: Sequence[str],
    ) -> dict[str, float]:
        """Top-1 accuracy per task of the tower with weights ``sd`` (None: as loaded)."""
        from lines.clip.evaluate import evaluate

        if sd is not None:
            self.load(sd)
        self.calls += 1
        out = {}
        for t in tasks:
            s = self.split(t, split)
            t0 = time.perf_counter()
            r = evaluate(
                self.encoder,
                self.head(t),
                s,
                cache_dir=self.a.cache_dir,
                preprocess=self.preprocess,
                device=self.dev,
                batch_size=self.a.batch_size,
                num_workers=self.a.num_workers,
                precision=self.a.precision,
            )
            if self.dev.type == "cuda":
                torch.cuda.synchronize()
            self.eval_seconds += time.perf_counter() - t0
            self.images += r.total
            out[t] = r.top1
        return out


def _text_encoder(path: Path, a: argparse.Namespace):  # noqa: ANN202 - TextEncoder
    from lines.clip.model import build_text_encoder
    from lines.io import load_state_dict

    return build_text_encoder(
        load_state_dict(path), heads=a.text_heads or None, quick_gelu=a.act == "quick_gelu"
    )


# ----------------------------------------------------------------------------------------------
# heads


def run_heads(a: argparse.Namespace, ckpt: Path, out: Path) -> dict[str, Any]:
    """The zero-shot head of every task of the suite, into ``out`` (and the shared cache)."""
    from lines.clip.datasets import get_task
    from lines.clip.heads import zero_shot_head
    from lines.io import save_state_dict

    ck = Checkpoints(ckpt)
    tasks = resolve_tasks(a.suite, a.tasks)
    dev = _device(a.device)
    enc = _text_encoder(ck.text, a)
    weights, info = {}, {}
    t0 = time.perf_counter()
    for t in tasks:
        task = get_task(t)
        h = zero_shot_head(task, enc, cache_dir=a.cache_dir, device=dev)
        weights[t] = h.weight.cpu().contiguous()
        info[t] = {
            "key": h.key,
            "num_classes": h.num_classes,
            "num_templates": len(task.templates),
        }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(out / HEADS_FILE, weights)
    res = {
        "model_id": enc.model_id,
        "text_sha256": ck.index["text"]["sha256"],
        "text_tower": enc.describe(),
        "tasks": info,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out / HEADS_INDEX, res)
    return res


# ----------------------------------------------------------------------------------------------
# finetuned_eval


def run_finetuned_eval(
    a: argparse.Namespace, ckpt: Path, heads: Path, out: Path, reference: str = ""
) -> dict[str, Any]:
    """Zero-shot accuracy of θ_0 on every task, and each fine-tuned model's on its own task
    (val and test), in the text pipeline's ``base.json`` shape. With ``reference`` (a JSON file
    of fine-tuned accuracies, tall_masks' format) those are read from it where it has them."""
    from lines.clip.evaluate import reference_accuracies

    tasks = resolve_tasks(a.suite, a.tasks)
    refs = {s: reference_accuracies(reference, s) if reference else {} for s in SPLITS}
    res: dict[str, Any] = {
        "tasks": tasks,
        "pretrained": {},
        "finetuned": {},
        "source": {},
        "reference_file": reference or None,
    }
    with Bench(a, ckpt, heads) as b:
        for s in SPLITS:
            res["pretrained"][s] = b.accuracy(b.base, s, tasks)
        for t in tasks:
            res["finetuned"][t] = {}
            res["source"][t] = {}
            missing = [s for s in SPLITS if t not in refs[s]]
            if missing:
                b.load(b.finetuned_state(b.ck.for_task(t)))
            for s in SPLITS:
                if t in refs[s]:
                    res["finetuned"][t][s] = {t: refs[s][t]}
                    res["source"][t][s] = "reference"
                else:
                    res["finetuned"][t][s] = b.accuracy(None, s, [t])
                    res["source"][t][s] = "measured"
        res["examples"] = {s: {t: b.num_examples(t, s) for t in tasks} for s in SPLITS}
        res["sha256"] = {
            "pretrained": b.ck.index["pretrained"]["sha256"],
            **{t: b.ck.sha256(b.ck.key_of(t)) for t in tasks},
        }
    write_json(Path(out), res)
    return res


def ft_reference(base: Mapping[str, Any], split: str, tasks: Sequence[str]) -> dict[str, float]:
    return {t: base["finetuned"][t][split][t] for t in tasks}


# ----------------------------------------------------------------------------------------------
# merge


def method_params(name: str, a: argparse.Namespace) -> dict[str, Any]:
    if name == "ties":
        return {"density": a.ties_density, "scope": a.ties_scope}
    if name == "consensus":
        return {"k": a.consensus_k, "tall_lambda": a.tall_lambda}
    if name == "dare":
        return {"drop_rate": a.dare_drop_rate, "seed": a.seed}
    if name == "magnitude_prune":
        return {"density": a.ties_density}
    return {}


def select(
    evaluate: Callable[[float], dict[str, float]],
    grid: Sequence[float],
    ref_val: Mapping[str, float],
    timing: list[float] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate every grid point on val; the coefficient with the best average normalised
    accuracy (the first on ties; NaN never wins) and the sweep rows."""
    if not grid:
        raise LinesError("empty coefficient grid")
    sweep = []
    for c in grid:
        t0 = time.perf_counter()
        acc = evaluate(c)
        if timing is not None:
            timing.append(time.perf_counter() - t0)
        sweep.append(
            {
                "coef": float(c),
                "val_avg_norm": mean(normalise(acc, ref_val).values()),
                "val_avg_acc": mean(acc.values()),
                **{f"val_acc_{t}": v for t, v in acc.items()},
            }
        )
    best = max(sweep, key=lambda r: _finite_or(r["val_avg_norm"]))
    return best["coef"], sweep


def _test_report(acc: Mapping[str, float], ref: Mapping[str, float]) -> dict[str, Any]:
    nrm = normalise(acc, ref)
    return {
        "test_acc": dict(acc),
        "test_norm": nrm,
        "test_avg_acc": mean(acc.values()),
        "test_avg_norm": mean(nrm.values()),
    }


def run_merge(
    a: argparse.Namespace, ckpt: Path, heads: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Each method with and without LiNeS on the suite; coefficients chosen on val."""
    from lines.merging import make_method
    from lines.scaling import auto_alpha, lines_lambdas

    tasks = resolve_tasks(a.suite, a.tasks)
    base = read_json(base_eval)
    ft_val, ft_test = ft_reference(base, "val", tasks), ft_reference(base, "test", tasks)
    rows: list[dict[str, Any]] = []
    with Bench(a, ckpt, heads) as b:
        L = b.L
        fts = [b.ck.for_task(t) for t in tasks]
        res: dict[str, Any] = {
            "model": a.model,
            "suite": str(a.suite),
            "tasks": tasks,
            "block_policy": b.part.policy,
            "num_blocks": L,
            "alpha_norm": a.alpha_norm,
            "methods": {},
        }
        for name in a.methods:
            method = make_method(name, **method_params(name, a))
            t0 = time.perf_counter()
            tau, man = b.task_vector(f"merge-{name}", fts, method, a.alpha_norm)
            build_s = time.perf_counter() - t0
            lam_grid = getattr(a, f"{name}_lambdas", None) or a.lambdas
            beta_grid = getattr(a, f"{name}_betas", None) or a.betas
            times: list[float] = []
            lam, sweep_b = select(
                lambda c, tau=tau: b.accuracy(b.theta(tau, [c] * L), "val", tasks),
                lam_grid,
                ft_val,
                times,
            )
            norms = man["norms"]
            alpha = auto_alpha(norms["task_vector_sum"], norms["merged_task_vector"], len(tasks))
            beta, sweep_l = select(
                lambda c, tau=tau, alpha=alpha: b.accuracy(
                    b.theta(tau, lines_lambdas(L, alpha, c)), "val", tasks
                ),
                beta_grid,
                ft_val,
                times,
            )
            base_rep = _test_report(b.accuracy(b.theta(tau, [lam] * L), "test", tasks), ft_test)
            lines_l = lines_lambdas(L, alpha, beta)
            lines_rep = _test_report(b.accuracy(b.theta(tau, lines_l), "test", tasks), ft_test)
            res["methods"][name] = {
                "params": method.params(),
                "input_sha256": [c["sha256"] for c in man["inputs"]["finetuned"]],
                "pretrained_sha256": man["inputs"]["pretrained"]["sha256"],
                "grids": {
                    "lambda": [float(x) for x in lam_grid],
                    "beta": [float(x) for x in beta_grid],
                },
                "baseline": {"lambda": lam, **base_rep},
                "lines": {"alpha": alpha, "beta": beta, "lambdas": lines_l, **lines_rep},
                "norms": norms,
                "timing": {
                    "build_task_vector_s": round(build_s, 3),
                    "val_points": len(times),
                    "val_point_mean_s": round(mean(times), 4),
                },
            }
            rows += [{"method": name, "variant": "baseline", **r} for r in sweep_b]
            rows += [{"method": name, "variant": "lines", **r} for r in sweep_l]
            del tau
        res["examples"] = {s: {t: b.num_examples(t, s) for t in tasks} for s in SPLITS}
        res["device"] = str(b.dev)
    out = Path(out)
    write_json(out / "merge.json", res)
    write_csv(out / "merge_sweep.csv", rows)
    return res


# ----------------------------------------------------------------------------------------------
# edit


def target_control(
    acc: Mapping[str, float],
    target: str,
    controls: Sequence[str],
    ft_ref: float,
    zs_ref: Mapping[str, float],
) -> dict[str, float]:
    """Target accuracy (normalised by the fine-tuned model's) and the mean control accuracy
    (normalised by the zero-shot model's), as the paper's Fig. 2."""
    return {
        "target_acc": acc[target],
        "target_norm": acc[target] / ft_ref if ft_ref else float("nan"),
        "control_acc": mean(acc[o] for o in controls),
        "control_norm": mean(acc[o] / zs_ref[o] for o in controls if zs_ref.get(o)),
    }


def run_edit(
    a: argparse.Namespace, ckpt: Path, heads: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Single-task LiNeS editing: θ_0 + λ(ℓ)τ_t with λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1) for each task t
    of ``edit_tasks`` (default: the suite) and γ; target = t, control = the suite's other tasks;
    γ chosen on val by 2·target_norm + control_norm (the reference's rule)."""
    from lines.merging.methods.wise_ft import WiseFT
    from lines.scaling import single_task_lambdas

    tasks = resolve_tasks(a.suite, a.tasks)
    edit_tasks = resolve_tasks(a.suite, a.edit_tasks) if a.edit_tasks else tasks
    base = read_json(base_eval)
    zs = base["pretrained"]
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"gammas": [float(g) for g in a.gammas], "tasks": {}}
    with Bench(a, ckpt, heads) as b:
        for t in edit_tasks:
            if t not in tasks:
                raise LinesError(f"edit task {t} is not in the suite")
            tau, _ = b.task_vector(f"edit-{t}", [b.ck.for_task(t)], WiseFT(gamma=1.0))
            controls = [o for o in tasks if o != t]
            per = []
            for g in a.gammas:
                sd = b.theta(tau, single_task_lambdas(b.L, float(g)))
                rec: dict[str, Any] = {"task": t, "gamma": float(g)}
                for s in SPLITS:
                    acc = b.accuracy(sd, s, tasks)
                    ft = base["finetuned"][t][s][t]
                    tc = target_control(acc, t, controls, ft, zs[s])
                    rec.update({f"{s}_{k}": v for k, v in tc.items()})
                rec["val_score"] = 2 * rec["val_target_norm"] + _finite_or(
                    rec["val_control_norm"], 0.0
                )
                per.append(rec)
                rows.append(rec)
            best = max(per, key=lambda r: _finite_or(r["val_score"]))
            summary["tasks"][t] = {
                "best_gamma": best["gamma"],
                "best": best,
                "finetuned": next((r for r in per if r["gamma"] == 1.0), None),
            }
            del tau
    summary["average_at_best"] = {
        k: mean(summary["tasks"][t]["best"][k] for t in edit_tasks)
        for k in ("test_target_norm", "test_control_norm", "test_target_acc", "test_control_acc")
    }
    summary["block_policy"] = a.block_policy
    out = Path(out)
    write_json(out / "edit.json", summary)
    write_csv(out / "edit_sweep.csv", rows)
    return summary


# ----------------------------------------------------------------------------------------------
# wiseft


def run_wiseft(a: argparse.Namespace, ckpt: Path, heads: Path, out: Path) -> dict[str, Any]:
    """WiSE-FT θ_0 + γτ against θ_0 + γ·λ(ℓ)τ (λ from ``lines_gamma``) over the γ grid, on the
    test split of the target task (ImageNet) and of the shifted tasks (its OOD sets). Target
    accuracy is normalised by the fine-tuned model's, the shifted tasks' by the zero-shot's."""
    from lines.clip.datasets import get_task
    from lines.merging.methods.wise_ft import WiseFT
    from lines.scaling import single_task_lambdas

    out = Path(out)
    if not a.wiseft_model:
        res = {"skipped": "wiseft.wiseft_model is empty", "tasks": [], "gammas": [], "rows": []}
        write_json(out / "wiseft.json", res)
        write_csv(out / "wiseft_sweep.csv", [])
        return res
    task = get_task(a.wiseft_task).name
    shifts = [get_task(t).name for t in a.ood_tasks]
    if not shifts:
        raise LinesError("wiseft.ood_tasks is empty: name the shifted test sets")
    every = [task, *shifts]
    rows = []
    with Bench(a, ckpt, heads) as b:
        tau, _ = b.task_vector("wiseft", [b.ck.path(a.wiseft_model)], WiseFT(gamma=1.0))
        zs = b.accuracy(b.base, "test", every)
        ft = b.accuracy(b.theta(tau, [1.0] * b.L), "test", every)
        edit = single_task_lambdas(b.L, a.lines_gamma)
        for g in a.gammas:
            for variant, lams in (
                ("wiseft", [float(g)] * b.L),
                ("wiseft+lines", [float(g) * x for x in edit]),
            ):
                acc = b.accuracy(b.theta(tau, lams), "test", every)
                rows.append(
                    {
                        "task": task,
                        "variant": variant,
                        "gamma": float(g),
                        **target_control(acc, task, shifts, ft[task], zs),
                        **{f"acc_{t}": acc[t] for t in every},
                    }
                )
        examples = {t: b.num_examples(t, "test") for t in every}
    res = {
        "model": a.wiseft_model,
        "tasks": [task],
        "ood_tasks": shifts,
        "gammas": [float(g) for g in a.gammas],
        "lines_gamma": a.lines_gamma,
        "zeroshot": zs,
        "finetuned": ft,
        "examples": examples,
        "rows": rows,
    }
    write_json(out / "wiseft.json", res)
    write_csv(out / "wiseft_sweep.csv", rows)
    return res


# ----------------------------------------------------------------------------------------------
# soups


def run_soups(a: argparse.Namespace, ckpt: Path, heads: Path, out: Path) -> dict[str, Any]:
    """Uniform and greedy soups of ``soup_members`` (fine-tuned models of ``soup_task``), each
    with and without LiNeS (the soup's task vector edited with λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1), γ
    chosen on val by 2·target + control). Target accuracy is normalised by the first member's,
    control (``control_tasks``) by the zero-shot model's. The greedy soup adds members in order
    of val accuracy while the val accuracy of the soup does not drop (Wortsman et al. 2022)."""
    from lines.clip.datasets import get_task
    from lines.merging.greedy import greedy_soup
    from lines.merging.methods.uniform_soup import UniformSoup
    from lines.merging.methods.wise_ft import WiseFT
    from lines.scaling import single_task_lambdas

    out = Path(out)
    if not a.soup_members:
        res = {"skipped": "soups.soup_members is empty", "soups": {}}
        write_json(out / "soups.json", res)
        return res
    if len(a.soup_members) < 2:
        raise LinesError("soups.soup_members: a soup needs at least two models")
    task = get_task(a.soup_task).name
    controls = [get_task(t).name for t in a.control_tasks]
    every = [task, *controls]
    res: dict[str, Any] = {
        "task": task,
        "control_tasks": controls,
        "num_models": len(a.soup_members),
        "members": list(a.soup_members),
        "gammas": [float(g) for g in a.gammas],
        "soups": {},
    }
    with Bench(a, ckpt, heads) as b:
        paths = [b.ck.path(k) for k in a.soup_members]
        zs = {s: b.accuracy(b.base, s, every) for s in SPLITS}
        individual, member_acc = [], []
        for p in paths:
            sd = b.finetuned_state(p)
            acc = {s: b.accuracy(sd, s, every) for s in SPLITS}
            member_acc.append(acc)
        ref = {s: member_acc[0][s][task] for s in SPLITS}  # the first member: the reference
        for k, acc in zip(a.soup_members, member_acc, strict=True):
            individual.append(
                {
                    "model": k,
                    **{
                        f"{s}_{m}": v
                        for s in SPLITS
                        for m, v in target_control(acc[s], task, controls, ref[s], zs[s]).items()
                    },
                }
            )
        res["individual"] = individual
        res["zeroshot"] = zs

        def val_target(path: Path) -> float:
            from lines.io import load_state_dict

            return b.accuracy(load_state_dict(path), "val", [task])[task]

        g_man = greedy_soup(
            b.ck.pretrained,
            paths,
            [r["val_target_acc"] for r in individual],
            val_target,
            b.tmp / "greedy.safetensors",
            block_policy=a.block_policy,
            progress=False,
        )
        (b.tmp / "greedy.safetensors").unlink(missing_ok=True)
        selected = g_man["greedy_soup"]["selected"]
        for kind, members in (
            ("uniform", list(range(len(paths)))),
            ("greedy", list(selected)),
        ):
            mpaths = [paths[i] for i in members]
            method = UniformSoup() if len(mpaths) > 1 else WiseFT(gamma=1.0)
            tau, _ = b.task_vector(f"soup-{kind}", mpaths, method)
            entry: dict[str, Any] = {"members": [a.soup_members[i] for i in members]}
            plain = b.theta(tau, [1.0] * b.L)
            entry["plain"] = {
                f"{s}_{m}": v
                for s in SPLITS
                for m, v in target_control(
                    b.accuracy(plain, s, every), task, controls, ref[s], zs[s]
                ).items()
            }
            sweep = []
            for g in a.gammas:
                acc = b.accuracy(b.theta(tau, single_task_lambdas(b.L, float(g))), "val", every)
                tc = target_control(acc, task, controls, ref["val"], zs["val"])
                score = 2 * tc["target_norm"] + _finite_or(tc["control_norm"], 0.0)
                sweep.append(
                    {
                        "gamma": float(g),
                        "val_score": score,
                        **{f"val_{m}": v for m, v in tc.items()},
                    }
                )
            best = max(sweep, key=lambda r: _finite_or(r["val_score"]))
            acc_t = b.accuracy(b.theta(tau, single_task_lambdas(b.L, best["gamma"])), "test", every)
            entry["lines"] = {
                "gamma": best["gamma"],
                **{
                    f"test_{m}": v
                    for m, v in target_control(
                        acc_t, task, controls, ref["test"], zs["test"]
                    ).items()
                },
            }
            entry["sweep"] = sweep
            res["soups"][kind] = entry
            del tau
        res["greedy_history"] = g_man["greedy_soup"]["history"]
    write_json(out / "soups.json", res)
    return res


# ----------------------------------------------------------------------------------------------
# Command line


def _bool_or_auto(s: str) -> bool | None:
    v = str(s).strip().lower()
    if v in ("auto", ""):
        return None
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, true or false, got '{s}'")


def _common(p: argparse.ArgumentParser) -> None:
    """The ``common`` section of clip/params.yaml (every evaluating stage takes all of it)."""
    p.add_argument("--model", default="", help="e.g. ViT-B-32 (checked against the weights)")
    p.add_argument("--suite", default="8", help="8, 14 or 20 (the merged tasks)")
    p.add_argument("--tasks", nargs="*", default=[], help="explicit tasks instead of the suite")
    p.add_argument("--data_root", type=Path, default=Path("data"), help="datasets folder")
    p.add_argument("--layout", default="auto", help="auto, reference or imagefolder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16, fp16")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=4, help="decoding workers (first use)")
    p.add_argument(
        "--heads", type=int, default=0, help="attention heads, image tower (0: width/64)"
    )
    p.add_argument("--text_heads", type=int, default=0, help="attention heads, text tower")
    p.add_argument("--act", default="quick_gelu", choices=["quick_gelu", "gelu"])
    p.add_argument(
        "--tower",
        default="lines",
        choices=["lines", "open_clip"],
        help="image tower module: lines.clip.tower (no open_clip import) or open_clip's",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: default)")
    p.add_argument("--block_policy", default="reference", choices=["reference", "depth"])
    p.add_argument("--cache_dir", type=Path, default=Path("cache"), help="image and head cache")
    p.add_argument("--max_val", type=int, default=0, help="val images per task (0: all)")
    p.add_argument("--max_test", type=int, default=0, help="test images per task (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the max_val/max_test subsets")


def _io(p: argparse.ArgumentParser, *names: str) -> None:
    defaults = {
        "ckpt": Path("ckpt"),
        "heads_dir": Path("out/heads"),
        "base_eval": Path("out/eval/base.json"),
    }
    for n in names:
        p.add_argument(f"--{n}", type=Path, default=defaults[n])
    p.add_argument("--out", type=Path, required=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lines.clip.stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="stage", required=True)

    p = sub.add_parser(
        "prepare",
        help="checkpoint sources → canonical safetensors + manifests",
        description="Sources: --pretrained REF, --text REF (a whole CLIP for the heads; empty: "
        "the pretrained one), and one --finetuned.KEY REF per fine-tuned model (what DVC's "
        "unpacking of the 'sources' section gives) or --finetuned KEY=REF ...",
    )
    p.add_argument("--pretrained", required=True)
    p.add_argument("--text", default="")
    p.add_argument("--finetuned", nargs="*", default=[], metavar="KEY=REF")
    p.add_argument("--model", default="")
    p.add_argument("--hub_cache", default="", help="Hugging Face cache (empty: HF's default)")
    p.add_argument("--offline", type=_bool_or_auto, default=None, help="auto, true or false")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the Hub")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("heads", help="zero-shot heads of the suite's tasks")
    _common(p)
    _io(p, "ckpt")

    p = sub.add_parser("finetuned_eval", help="zero-shot and fine-tuned accuracies, val and test")
    _common(p)
    _io(p, "ckpt", "heads_dir")
    p.add_argument("--reference", default="", help="JSON of fine-tuned accuracies (optional)")

    p = sub.add_parser("merge", help="multi-task merging with and without LiNeS")
    _common(p)
    _io(p, "ckpt", "heads_dir", "base_eval")
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--lambdas", nargs="+", type=float, required=True, help="uniform λ grid")
    p.add_argument("--betas", nargs="+", type=float, required=True, help="LiNeS β grid")
    for m in ("task_arithmetic", "ties", "consensus", "dare", "magnitude_prune"):
        p.add_argument(f"--{m}_lambdas", nargs="*", type=float, default=None)
        p.add_argument(f"--{m}_betas", nargs="*", type=float, default=None)
    p.add_argument("--ties_density", type=float, default=0.2)
    p.add_argument("--ties_scope", default="global")
    p.add_argument("--consensus_k", type=int, default=2)
    p.add_argument("--tall_lambda", type=float, default=0.4)
    p.add_argument("--dare_drop_rate", type=float, default=0.9)
    p.add_argument("--alpha_norm", default="l1", choices=["l1", "l2"])

    p = sub.add_parser("edit", help="single-task LiNeS editing over γ")
    _common(p)
    _io(p, "ckpt", "heads_dir", "base_eval")
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--edit_tasks", nargs="*", default=[], help="tasks edited (default: suite)")

    p = sub.add_parser("wiseft", help="WiSE-FT with and without LiNeS")
    _common(p)
    _io(p, "ckpt", "heads_dir")
    p.add_argument("--wiseft_model", default="", help="sources.finetuned key (empty: skip)")
    p.add_argument("--wiseft_task", default="ImageNet")
    p.add_argument("--ood_tasks", nargs="*", default=[])
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--lines_gamma", type=float, default=0.5)

    p = sub.add_parser("soups", help="uniform and greedy soups with and without LiNeS")
    _common(p)
    _io(p, "ckpt", "heads_dir")
    p.add_argument("--soup_members", nargs="*", default=[], help="sources.finetuned keys")
    p.add_argument("--soup_task", default="")
    p.add_argument("--control_tasks", nargs="*", default=[])
    p.add_argument("--gammas", nargs="+", type=float, required=True)

    p = sub.add_parser("report", help="report.md, metrics.json, tables and plots")
    p.add_argument("--model", default="")
    p.add_argument("--suite", default="8")
    p.add_argument("--ckpt", type=Path, default=Path("ckpt"))
    p.add_argument("--heads_dir", type=Path, default=Path("out/heads"))
    p.add_argument("--base_eval", type=Path, default=Path("out/eval/base.json"))
    for n in ("merge", "edit", "wiseft", "soups"):
        p.add_argument(f"--{n}", type=Path, default=Path(f"out/{n}"))
    p.add_argument("--out", type=Path, required=True)
    return ap


def parse_finetuned(pairs: Sequence[str], extra: Sequence[str]) -> dict[str, str]:
    """``KEY=REF`` items of ``--finetuned`` and ``--finetuned.KEY REF`` pairs (DVC's unpacking
    of a nested mapping), in order; anything else is an error."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, ref = item.partition("=")
        if not sep or not key:
            raise LinesError(f"--finetuned {item!r}: expected KEY=REF")
        out[key] = ref
    it = iter(extra)
    for tok in it:
        if not tok.startswith("--finetuned."):
            raise LinesError(f"unrecognised argument {tok!r}")
        key = tok[len("--finetuned.") :]
        ref = next(it, None)
        if ref is None or ref.startswith("--"):
            raise LinesError(f"{tok} needs a reference")
        out[key] = ref
    return out


def run(a: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    if a.stage != "prepare" and extra:
        raise LinesError(f"unrecognised arguments: {' '.join(extra)}")
    if a.stage == "prepare":
        return run_prepare(
            a.pretrained,
            a.text,
            parse_finetuned(a.finetuned, extra),
            a.out,
            model=a.model,
            hub_cache=a.hub_cache,
            offline=a.offline,
            timeout=a.timeout,
        )
    if a.stage == "heads":
        return run_heads(a, a.ckpt, a.out)
    if a.stage == "finetuned_eval":
        return run_finetuned_eval(a, a.ckpt, a.heads_dir, a.out, a.reference)
    if a.stage == "merge":
        return run_merge(a, a.ckpt, a.heads_dir, a.base_eval, a.out)
    if a.stage == "edit":
        return run_edit(a, a.ckpt, a.heads_dir, a.base_eval, a.out)
    if a.stage == "wiseft":
        return run_wiseft(a, a.ckpt, a.heads_dir, a.out)
    if a.stage == "soups":
        return run_soups(a, a.ckpt, a.heads_dir, a.out)
    if a.stage == "report":
        from lines.clip.report import run_report

        return run_report(
            a.out,
            model=a.model,
            suite=a.suite,
            ckpt=a.ckpt,
            heads=a.heads_dir,
            base_eval=a.base_eval,
            merge=a.merge,
            edit=a.edit,
            wiseft=a.wiseft,
            soups=a.soups,
        )
    raise LinesError(f"unknown stage {a.stage}")  # pragma: no cover - argparse refuses it


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    t0 = time.perf_counter()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(args, extra)
    except LinesError as e:
        print(f"lines: error: {e}", file=sys.stderr)
        return 2
    print(f"stage {args.stage} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
