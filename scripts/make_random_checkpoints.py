#!/usr/bin/env python
"""Write a pretrained checkpoint and N "fine-tuned" ones with the exact keys and shapes of a real
model, for merge benchmarks and acceptance runs without any download.

    python scripts/make_random_checkpoints.py --kind vit-b-32 --image-only -n 8 --out ckpts/vit
    python scripts/make_random_checkpoints.py --kind vit-b-32 --tall-masks -n 8 --out ckpts/tall
    python scripts/make_random_checkpoints.py --kind minilm -n 8 --out ckpts/minilm

Kinds:
  vit-b-32  open_clip ``create_model('ViT-B-32', pretrained=None)``: the full CLIP state dict, or
            the image tower only (``--image-only``: ``visual.*``), or the tall_masks layout
            (``--tall-masks``: prefix ``model.``, text transformer removed, the text leftovers
            token_embedding, positional_embedding, ln_final, text_projection, logit_scale kept).
            ``--prefix`` adds a key prefix to any layout.
  minilm    a ``BertModel`` with all-MiniLM-L6-v2's configuration (6 layers, hidden 384, 12 heads,
            intermediate 1536, vocab 30522, 512 positions), built from ``BertConfig``.

The pretrained checkpoint is the model's random initialisation (seed ``--seed``); fine-tuned
model i is pretrained + ``--noise`` · N(0, 1) on every floating tensor (seed ``--seed + 1 + i``),
so τ_i = θ_i − θ_0 is dense Gaussian noise of that scale. Files: ``pretrained.safetensors``,
``ft_0.safetensors`` … ``ft_{N-1}.safetensors`` in ``--out``. With ``--hf-folder`` (minilm only)
the pretrained checkpoint is also written as a Hugging Face folder ``pretrained/`` (config.json +
model.safetensors) so folder outputs load with ``AutoModel.from_pretrained``.

Each file is streamed tensor by tensor (one model in memory, whatever N).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

MINILM_CONFIG = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
}


def vit_b_32_state_dict(
    seed: int, image_only: bool = False, tall_masks: bool = False, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """open_clip ViT-B-32 at random init, in the requested layout."""
    from lines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import logging

    import open_clip

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded" is the point
    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    sd = model.state_dict()
    if image_only:
        sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
    elif tall_masks:
        # tall_masks' ImageEncoder deletes the text transformer and keeps the rest of the CLIP model.
        sd = {k: v for k, v in sd.items() if not k.startswith("transformer.")}
        prefix = prefix or "model."
    return {prefix + k: v.detach().contiguous() for k, v in sd.items()}


def minilm_model(seed: int):  # noqa: ANN201 - transformers type
    from lines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(**MINILM_CONFIG))


def write_family(
    sd: dict[str, torch.Tensor], out: Path, n: int, seed: int, noise: float, quiet: bool = False
) -> list[Path]:
    """pretrained.safetensors + ft_i.safetensors, streamed one tensor at a time."""
    from lines.io import SafetensorsWriter, TensorInfo, save_state_dict

    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "producer": "scripts/make_random_checkpoints.py"}
    paths = [save_state_dict(out / "pretrained.safetensors", sd, meta)]
    specs = [(k, TensorInfo(tuple(v.shape), v.dtype)) for k, v in sd.items()]
    for i in range(n):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed + 1 + i)
        target = out / f"ft_{i}.safetensors"
        with SafetensorsWriter(target, specs, meta) as w:
            for k, v in sd.items():
                if v.is_floating_point():
                    eps = torch.randn(v.shape, generator=g, dtype=torch.float32) * noise
                    v = (v.float() + eps).to(v.dtype)
                w.write(k, v)
            w.commit()
        paths.append(target)
        if not quiet:
            print(f"wrote {target} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kind", required=True, choices=["vit-b-32", "minilm"])
    p.add_argument("-n", "--num", type=int, default=8, help="number of fine-tuned checkpoints")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=1e-3, help="std of the fine-tuning perturbation")
    p.add_argument("--image-only", action="store_true", help="vit-b-32: the visual.* keys only")
    p.add_argument(
        "--tall-masks",
        action="store_true",
        help="vit-b-32: tall_masks layout ('model.' prefix, no text transformer)",
    )
    p.add_argument("--prefix", default="", help="prefix added to every key (e.g. 'model.')")
    p.add_argument(
        "--hf-folder",
        action="store_true",
        help="minilm: also save the pretrained model as an HF folder 'pretrained/'",
    )
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.num < 0:
        p.error("--num must be ≥ 0")
    out = Path(a.out)
    if a.kind == "vit-b-32":
        if a.image_only and a.tall_masks:
            p.error("--image-only and --tall-masks are different layouts; pick one")
        if a.hf_folder:
            p.error("--hf-folder applies to --kind minilm")
        sd = vit_b_32_state_dict(a.seed, a.image_only, a.tall_masks, a.prefix)
    else:
        if a.image_only or a.tall_masks:
            p.error("--image-only / --tall-masks apply to --kind vit-b-32")
        model = minilm_model(a.seed)
        if a.hf_folder:
            model.save_pretrained(out / "pretrained")
        sd = {a.prefix + k: v.detach().contiguous() for k, v in model.state_dict().items()}
    paths = write_family(sd, out, a.num, a.seed, a.noise, a.quiet)
    nbytes = sum(v.numel() * v.element_size() for v in sd.values())
    if not a.quiet:
        print(
            f"{a.kind}: {len(sd)} tensors, {nbytes / 1e6:.1f} MB per checkpoint, "
            f"{len(paths)} files in {out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
