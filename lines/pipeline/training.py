"""Stages ``heads`` and ``finetune``: linear probes on the pretrained features, then full
fine-tuning of the backbone with the probe frozen (so the task vector lives in the backbone only)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lines.data.prompts import prompts_for
from lines.errors import LinesError
from lines.io import load_state_dict, save_state_dict
from lines.pipeline.backbones import (
    Backbone,
    Head,
    TextBackbone,
    extract_features,
    load_backbone,
)
from lines.pipeline.common import class_names, read_json, read_split, seed_everything, write_json


def fit_linear_probe(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    C: float = 10.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L2, inverse strength ``C``) on the unit-norm features;
    returns (W [classes, D], b [classes])."""
    from sklearn.linear_model import LogisticRegression

    x = feats.double().numpy()
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(x, labels.numpy())
    w, b = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2 and w.shape[0] == 1:
        # sklearn keeps one row for binary problems: logits (−z/2, z/2) give the same softmax.
        w = np.concatenate([-w / 2, w / 2])
        b = np.concatenate([-b / 2, b / 2])
    if len(clf.classes_) != num_classes:
        # A class absent from the probe's examples is never predicted.
        full_w = np.zeros((num_classes, w.shape[1]))
        full_b = np.full(num_classes, -1e4)
        for row, cls in enumerate(clf.classes_):
            full_w[cls], full_b[cls] = w[row], b[row]
        w, b = full_w, full_b
    return torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def zeroshot_weights(
    embed: Callable[[list[str]], torch.Tensor],
    names: Sequence[str],
    templates: Sequence[str],
    logit_scale: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-shot head as CLIP builds one: for each class, the (unit-norm) embeddings of its
    name in every template, averaged, then normalised to unit length; the rows times a fixed
    ``logit_scale``; no bias. ``embed`` maps texts to L2-normalised features [n, D]. Returns
    (W [classes, D], b [classes])."""
    rows = []
    for name in names:
        e = embed([t.format(name) for t in templates]).double()
        rows.append(F.normalize(F.normalize(e, dim=-1).mean(0), dim=0))
    w = torch.stack(rows) * float(logit_scale)
    return w.float(), torch.zeros(len(names), dtype=torch.float32)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def run_heads(
    fetch_dir: Path,
    out_dir: Path,
    backbone_name: str,
    tasks: list[str],
    *,
    max_train: int,
    max_val: int,
    max_probe: int = 1000,
    max_len: int = 64,
    image_size: int = 64,
    C: float = 10.0,
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
    kind: str = "probe",
    logit_scale: float = 100.0,
) -> dict[str, Any]:
    """Build one frozen head per task on the pretrained encoder; write θ_0 in the backbone's own
    key layout (``backbone.safetensors``) and ``heads/<task>.safetensors``.

    ``kind`` "zeroshot" (text backbones; CLIP's recipe): the head is made of the pretrained
    encoder's own embeddings of class-name prompts (:mod:`lines.data.prompts`, see
    :func:`zeroshot_weights`), so θ_0 with its heads is a real zero-shot classifier and no
    training example is spent on heads. ``kind`` "probe": a linear probe; the vision CNNs have no
    text tower and always use probes.

    The probe is fitted on training examples that fine-tuning never sees (the slice after the
    first ``max_train`` of the seeded permutation; at most ``max_probe``), the analogue of CLIP's
    zero-shot heads: a probe fitted on the fine-tuning examples classifies them perfectly and
    leaves fine-tuning almost no gradient."""
    out_dir = Path(out_dir)
    (out_dir / "heads").mkdir(parents=True, exist_ok=True)
    if kind not in ("zeroshot", "probe"):
        raise LinesError(f"heads kind '{kind}': choose zeroshot or probe")
    bb = load_backbone(
        backbone_name,
        Path(fetch_dir) / "models",
        max_len=max_len,
        image_size=image_size,
        device=device,
    )
    if kind == "zeroshot" and not isinstance(bb, TextBackbone):
        raise LinesError(
            f"zero-shot heads need a text encoder; backbone '{backbone_name}' has none "
            "(use heads.kind: probe)"
        )
    save_state_dict(out_dir / "backbone.safetensors", bb.state_dict(), {"backbone": backbone_name})
    summary: dict[str, Any] = {"backbone": backbone_name, "kind": kind, "tasks": {}}
    if kind == "zeroshot":
        summary["logit_scale"] = float(logit_scale)
    for task in tqdm(tasks, desc="heads", unit="task"):
        t0 = time.perf_counter()
        if kind == "zeroshot":
            names = class_names(fetch_dir, task)
            pnames, templates = prompts_for(task, len(names))
            w, b = zeroshot_weights(
                lambda xs: extract_features(bb, bb.prepare(xs), batch_size),
                pnames,
                templates,
                logit_scale,
            )
            save_state_dict(out_dir / "heads" / f"{task}.safetensors", {"weight": w, "bias": b})
            va = read_split(fetch_dir, task, "val").subset(max_val, seed)
            fva = extract_features(bb, bb.prepare(va.inputs), batch_size)
            summary["tasks"][task] = {
                "num_classes": len(names),
                "prompt_names": list(pnames),
                "templates": list(templates),
                "zeroshot_val_acc": accuracy_from_logits(fva @ w.T + b, va.labels),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            continue
        full = read_split(fetch_dir, task, "train")
        offset = min(max_train, len(full) // 2)  # leave the probe at least half of a small set
        tr = full.subset(max_probe, seed, offset=offset)
        va = read_split(fetch_dir, task, "val").subset(max_val, seed)
        names = class_names(fetch_dir, task)
        ftr = extract_features(bb, bb.prepare(tr.inputs), batch_size)
        fva = extract_features(bb, bb.prepare(va.inputs), batch_size)
        w, b = fit_linear_probe(ftr, tr.labels, len(names), C=C, seed=seed)
        save_state_dict(out_dir / "heads" / f"{task}.safetensors", {"weight": w, "bias": b})
        summary["tasks"][task] = {
            "num_classes": len(names),
            "probe_examples": len(tr),
            "probe_train_acc": accuracy_from_logits(ftr @ w.T + b, tr.labels),
            "probe_val_acc": accuracy_from_logits(fva @ w.T + b, va.labels),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    write_json(out_dir / "heads.json", summary)
    return summary


def load_head(heads_dir: Path, task: str) -> Head:
    sd = load_state_dict(Path(heads_dir) / "heads" / f"{task}.safetensors")
    return Head(sd["weight"], sd["bias"])


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def finetune(
    fetch_dir: Path,
    heads_dir: Path,
    out_dir: Path,
    backbone_name: str,
    task: str,
    *,
    max_train: int,
    max_val: int,
    epochs: int = 2,
    steps: int = 0,
    lr: float = 5e-5,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    warmup_frac: float = 0.1,
    max_len: int = 64,
    image_size: int = 64,
    seed: int = 0,
    data_seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Full fine-tuning of the backbone on one task with its head frozen; writes
    ``model.safetensors`` (same keys as θ_0) and ``metrics.json``.

    The budget is ``steps`` optimiser steps when positive (the data is cycled, reshuffled each
    pass), else ``epochs`` passes; with ``lr`` it is the fine-tuning strength, the axis along which
    forgetting appears (issue 11)."""
    g = seed_everything(seed)
    bb: Backbone = load_backbone(
        backbone_name,
        Path(fetch_dir) / "models",
        max_len=max_len,
        image_size=image_size,
        device=device,
    )
    bb.load_weights(load_state_dict(Path(heads_dir) / "backbone.safetensors"))
    head = load_head(heads_dir, task).to(bb.device)  # frozen; on the backbone's device
    tr = read_split(fetch_dir, task, "train").subset(max_train, data_seed)
    va = read_split(fetch_dir, task, "val").subset(max_val, data_seed)
    prep_tr, prep_va = bb.prepare(tr.inputs), bb.prepare(va.inputs)
    params = [p for p in bb.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(tr) / batch_size)
    total = steps if steps > 0 else epochs * per_epoch
    warmup = max(1, int(warmup_frac * total))
    step, t0, losses = 0, time.perf_counter(), []
    bar = tqdm(total=total, desc=f"finetune {task} (seed {seed})", unit="step")
    while step < total:
        bb.model.train()
        # BatchNorm keeps its ImageNet statistics: batch statistics of small batches of
        # out-of-distribution images (MNIST in an ImageNet CNN) would move every feature the
        # frozen head reads. Its affine parameters are still fine-tuned.
        for m in bb.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        for batch in bb.batches(prep_tr, batch_size, shuffle=True, generator=g):
            if step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, lr)
            logits = head(bb.features(batch))
            loss = F.cross_entropy(logits, tr.labels[batch.index].to(bb.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_state_dict(
        out_dir / "model.safetensors", bb.state_dict(), {"task": task, "seed": str(seed)}
    )
    fva = extract_features(bb, prep_va)
    metrics = {
        "task": task,
        "seed": seed,
        "steps": step,
        "lr": lr,
        "batch_size": batch_size,
        "train_examples": len(tr),
        "final_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
        "val_acc": accuracy_from_logits(head.cpu()(fva), va.labels),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def read_heads_summary(heads_dir: Path) -> dict[str, Any]:
    return read_json(Path(heads_dir) / "heads.json")
