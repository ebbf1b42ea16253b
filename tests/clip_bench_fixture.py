"""A tiny, complete CLIP benchmark on disk: random open_clip checkpoints in the tall_masks layout
(and the same weights in the FusionBench layout) for the 8 tasks of the registry's suite "8",
generated image folders for each task, and the clip/ pipeline's parameters pointing at them.

The "fine-tuned" models are the tiny pretrained model with its image tower moved at random (the
projection kept). Each task's images are labelled by its fine-tuned model (two thirds) and by the
zero-shot model (one third), so normalised accuracies are finite and in a sensible range and the
coefficient selection has something to choose."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fixtures_clip import EMBED_DIM, TEXT, VISION, openclip_state_dict
from PIL import Image

from lines.clip.datasets import get_suite, get_task

MODEL = "tiny"
SOUP_SEEDS = ("MNIST-seed1", "MNIST-seed2")
SPLIT_SIZES = {"train": 40, "test": 12}  # a val split of 4 (10% of train)


@dataclass
class Bench:
    root: Path
    tasks: list[str]
    pretrained: dict[str, torch.Tensor]  # the full open_clip CLIP
    finetuned: dict[str, dict[str, torch.Tensor]]  # key → full state dict
    tall_masks: dict[str, str] = field(default_factory=dict)  # sources in the tall_masks layout
    fusion_bench: dict[str, str] = field(default_factory=dict)  # the same weights, FusionBench
    data_root: Path | None = None


def _perturbed(sd: dict[str, torch.Tensor], seed: int, scale: float) -> dict[str, torch.Tensor]:
    """A "fine-tuned" model: the image tower's weights moved at random, the projection kept (as
    FusionBench's checkpoints keep it frozen)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=g)
        if k.startswith("visual.") and k != "visual.proj"
        else v.clone()
        for k, v in sd.items()
    }


def _tall_masks_file(path: Path, full: dict[str, torch.Tensor]) -> None:
    """task_vectors' ImageEncoder.state_dict(): 'model.' prefix, the text transformer dropped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"model.{k}": v for k, v in full.items() if not k.startswith("transformer.")}, path)


def _fusion_bench_vision(folder: Path, full: dict[str, torch.Tensor]) -> None:
    """A Hugging Face CLIPVisionModel folder as on the hub (vision_model.* keys, no projection;
    the config written as JSON, without importing transformers)."""
    from safetensors.torch import save_file

    from lines.clip.convert import openclip_to_hf

    folder.mkdir(parents=True, exist_ok=True)
    hf = openclip_to_hf(full, "vision", vision_prefix="vision_model.")
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
    config = {
        "architectures": ["CLIPVisionModel"],
        "model_type": "clip_vision_model",
        "hidden_size": VISION["width"],
        "intermediate_size": int(VISION["width"] * VISION["mlp_ratio"]),
        "num_hidden_layers": VISION["layers"],
        "num_attention_heads": VISION["heads"],
        "image_size": VISION["image_size"],
        "patch_size": VISION["patch_size"],
        "projection_dim": EMBED_DIM,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _hf_clip_model(folder: Path, full: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from lines.clip.convert import openclip_to_hf

    folder.mkdir(parents=True, exist_ok=True)
    hf = openclip_to_hf(full, "clip")
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))


def _images(rng: np.random.Generator, n: int) -> list[Image.Image]:
    """Random colour fields with noise of random strength (more varied features than noise)."""
    out = []
    for _ in range(n):
        c = rng.integers(0, 255, 3)
        a = np.clip(c + rng.normal(0, rng.uniform(5, 80), (40, 36, 3)), 0, 255)
        out.append(Image.fromarray(a.astype(np.uint8)))
    return out


def make_bench(root: Path, tasks: list[str] | None = None, *, fusion_bench: bool = True) -> Bench:
    """Write the benchmark under ``root`` (torch on one thread meanwhile: tiny models)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _make_bench(root, tasks, fusion_bench=fusion_bench)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _make_bench(root: Path, tasks: list[str] | None, *, fusion_bench: bool) -> Bench:
    from lines.clip.evaluate import Preprocess
    from lines.clip.heads import ZeroShotHead, build_head_weights
    from lines.clip.model import build_text_encoder
    from lines.clip.tower import build_vision_tower

    root = Path(root)
    tasks = list(tasks or get_suite("8"))
    pre_sd = openclip_state_dict(0)
    fts = {t: _perturbed(pre_sd, 100 + i, 0.05) for i, t in enumerate(tasks)}
    for i, k in enumerate(SOUP_SEEDS):
        fts[k] = _perturbed(fts["MNIST"], 200 + i, 0.005)
    b = Bench(root, tasks, pre_sd, fts)

    # Data: every third image carries the zero-shot model's prediction as its label, the others
    # the task's fine-tuned model's: the fine-tuned model is right on at least two thirds, the
    # zero-shot one on at least a third, merged models in between.
    text = build_text_encoder(pre_sd, heads=TEXT["heads"])
    pre = Preprocess(image_size=VISION["image_size"])
    steps = pre.pil_steps()
    zs_enc = build_vision_tower(pre_sd, heads=VISION["heads"])
    rng = np.random.default_rng(0)
    data = root / "data"
    for t in tasks:
        task = get_task(t)
        head = ZeroShotHead(t, build_head_weights(text, task.classnames, task.templates))
        ft_enc = build_vision_tower(fts[t], heads=VISION["heads"])
        for split, n in SPLIT_SIZES.items():
            imgs = _images(rng, n)
            x = pre.normalize(
                torch.stack([torch.from_numpy(np.array(steps(im))).permute(2, 0, 1) for im in imgs])
            )
            y_ft = head.logits(ft_enc(x)).argmax(1).tolist()
            y_zs = head.logits(zs_enc(x)).argmax(1).tolist()
            for j, im in enumerate(imgs):
                y = y_zs[j] if j % 3 == 2 else y_ft[j]
                p = data / t / split / str(y) / f"{j:03d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                im.save(p)
    b.data_root = data

    # tall_masks layout: single_task/<model>/<Task>Val/nonlinear_{finetuned,zeroshot}.pt; the
    # zero-shot file has no text transformer, so the heads come from a whole CLIP file.
    tm = root / "tall_masks" / "single_task" / MODEL
    _tall_masks_file(tm / "MNISTVal" / "nonlinear_zeroshot.pt", pre_sd)
    torch.save(pre_sd, root / "open_clip_full.pt")
    b.tall_masks = {
        "pretrained": str(tm / "MNISTVal" / "nonlinear_zeroshot.pt"),
        "text": str(root / "open_clip_full.pt"),
    }
    for k, sd in fts.items():
        f = tm / f"{k}Val" / "nonlinear_finetuned.pt"
        _tall_masks_file(f, sd)
        b.tall_masks[k] = str(f)
    if fusion_bench:  # HF CLIPModel pretrained + CLIPVisionModel fine-tuned folders
        fb = root / "fusion_bench"
        _hf_clip_model(fb / "clip-vit-tiny", pre_sd)
        b.fusion_bench = {"pretrained": str(fb / "clip-vit-tiny"), "text": ""}
        for k, sd in fts.items():
            _fusion_bench_vision(fb / f"clip-vit-tiny_{k.lower()}", sd)
            b.fusion_bench[k] = str(fb / f"clip-vit-tiny_{k.lower()}")
    return b


def clip_params(bench: Bench, layout: str = "tall_masks", **over: Any) -> dict[str, Any]:
    """clip/params.yaml for the tiny benchmark (small grids; WiSE-FT MNIST → SVHN; soups of the
    MNIST models with SVHN and EuroSAT as controls)."""
    src = bench.tall_masks if layout == "tall_masks" else bench.fusion_bench
    params: dict[str, Any] = {
        "common": {
            "model": MODEL,
            "suite": "8",
            "tasks": [],
            "data_root": str(bench.data_root),
            "layout": "auto",
            "device": "cpu",
            "precision": "fp32",
            "batch_size": 64,
            "num_workers": 0,
            "heads": VISION["heads"],
            "text_heads": TEXT["heads"],
            "act": "quick_gelu",
            "tower": "lines",
            "threads": 1,
            "block_policy": "reference",
            "cache_dir": "cache",
            "max_val": 0,
            "max_test": 0,
            "seed": 0,
        },
        "hub": {"hub_cache": str(bench.root / "hub"), "offline": "true", "timeout": 1},
        "sources": {
            "pretrained": src["pretrained"],
            "text": src["text"],
            "finetuned": {k: v for k, v in src.items() if k not in ("pretrained", "text")},
        },
        "finetuned_eval": {"reference": ""},
        "merge": {
            "methods": ["task_arithmetic", "ties", "consensus"],
            "lambdas": [0.3, 1.0],
            "betas": [0.3, 1.0],
            "ties_lambdas": [0.5, 1.5],
            "ties_betas": [0.5, 1.5],
            "ties_density": 0.2,
            "ties_scope": "global",
            "consensus_k": 2,
            "tall_lambda": 0.4,
            "alpha_norm": "l1",
        },
        "edit": {"gammas": [0.0, 0.5, 1.0], "edit_tasks": ["MNIST", "SVHN"]},
        "wiseft": {
            "wiseft_model": "MNIST",
            "wiseft_task": "MNIST",
            "ood_tasks": ["SVHN"],
            "gammas": [0.5, 1.0],
            "lines_gamma": 0.5,
        },
        "soups": {
            "soup_members": ["MNIST", *SOUP_SEEDS],
            "soup_task": "MNIST",
            "control_tasks": ["SVHN", "EuroSAT"],
            "gammas": [0.5, 1.0],
        },
        "schedules": {
            "specs": ["linear", "reversed"],
            "budget": 2,
            "beta_max": 1.0,
            "alpha_mults": [1.0],
            "methods": ["task_arithmetic"],
            "edit_tasks": ["MNIST"],
            "bootstrap": 50,
            "bootstrap_seed": 0,
        },
        "learned": {
            "methods": ["lines", "fisher", "adamerging_task", "atlas", "ensemble"],
            "betas": [0.5, 1.0],
            "fisher_examples": 4,
            "steps": 2,
            "lr": 1e-2,
            "batch_size": 4,
            "bootstrap": 50,
            "bootstrap_seed": 0,
        },
    }
    for k, v in over.items():
        sec, key = k.split(".", 1)
        params[sec][key] = v
    return params
