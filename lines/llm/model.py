"""Loading a causal LM from an HF folder and swapping its weights, offline.

Tied weights (SmolLM2 ties ``lm_head`` to ``embed_tokens``) are stored once: θ_0 and every
fine-tuned checkpoint hold only the first key of each shared tensor, so a task vector never
counts the same parameter twice and LiNeS never gives one tensor two factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lines.errors import LinesError


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the keys that alias an earlier key's storage (tied
    weights), detached, on the CPU, contiguous."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        out[k] = v.detach().to("cpu").contiguous()
    return out


def tied_keys(model: torch.nn.Module) -> set[str]:
    """The keys :func:`unique_state_dict` leaves out."""
    return set(model.state_dict()) - set(unique_state_dict(model))


def load_folder(folder: Path, device: torch.device | str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of an HF folder written by the fetch stage, fp32, eval mode; never
    reaches a hub (``local_files_only``) and never runs remote code. A decoder-only LM loads as a
    causal LM, an encoder–decoder (T5) as a seq2seq LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise LinesError(f"{folder}: no config.json (run the llm fetch stage first)")
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(folder) else AutoModelForCausalLM
    model = auto.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tok.pad_token_id is None:
        # Padding is always masked (attention and loss), so any id works; the end token is the
        # usual choice for decoder-only models.
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


def is_encoder_decoder(folder: Path) -> bool:
    """Does the HF folder's config describe an encoder–decoder (T5, BART)?"""
    import json

    cfg = json.loads((Path(folder) / "config.json").read_text())
    return bool(cfg.get("is_encoder_decoder", False))


FAMILY_OF_MODEL_TYPE = {"llama": "llama", "t5": "t5", "mt5": "t5", "gpt2": "gpt2"}


def family_of(folder: Path) -> str:
    """The ``lines`` layer family of the model in an HF folder (its blocks for LiNeS)."""
    import json

    mt = json.loads((Path(folder) / "config.json").read_text()).get("model_type", "")
    if mt not in FAMILY_OF_MODEL_TYPE:
        raise LinesError(
            f"{folder}: model_type '{mt}' has no layer family here (known: "
            f"{', '.join(sorted(FAMILY_OF_MODEL_TYPE))})"
        )
    return FAMILY_OF_MODEL_TYPE[mt]


def assign_weights(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Copy ``sd`` into ``model`` in place (dtypes and device of the model); every parameter but
    the tied aliases must be given, and nothing else."""
    missing, unexpected = model.load_state_dict(dict(sd), strict=False)
    bad_missing = sorted(set(missing) - tied_keys(model))
    if bad_missing or unexpected:
        raise LinesError(
            f"weights do not match the model: missing {bad_missing[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}"
        )
