"""Full fine-tuning of the LLM on one task, the loss on the answer tokens only (instruction
tuning's convention: prompt tokens are context, not targets). Seeded; bf16 autocast on GPU with
fp32 master weights, fp32 on CPU. The checkpoint holds θ_0's keys (tied aliases left out) in
fp32, so τ = θ_t − θ_0 is exact.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lines.io import save_state_dict
from lines.llm.evaluate import examples, prompt_of
from lines.llm.model import load_folder, unique_state_dict
from lines.llm.prompts import render
from lines.llm.scoring import autocast, encode

IGNORE = -100  # the label id that Hugging Face's causal-LM loss skips


def answer_labels(context: Sequence[int], answer: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: labels are ``IGNORE`` on the context and the answer's ids on the
    answer (transformers shifts labels itself: position p's logits are scored on label p+1)."""
    return list(context) + list(answer), [IGNORE] * len(context) + list(answer)


def collate(items: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE`` on padding)."""
    T = max(len(i) for i, _ in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    lab = torch.full((len(items), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    for r, (i, y) in enumerate(items):
        ids[r, : len(i)] = torch.tensor(i)
        lab[r, : len(y)] = torch.tensor(y)
        mask[r, : len(i)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def training_items(
    tokenizer: Any,
    task: str,
    limit: int | None,
    seed: int,
    max_chars: int,
    encoder_decoder: bool = False,
) -> list[tuple[list[int], list[int]]]:
    """The task's training examples as (input_ids, labels): the chat prompt, then the label's
    verbaliser and the end-of-turn token, so the model learns to answer and stop."""
    s = examples(task, "train", limit, seed)
    p = prompt_of(task)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    items = []
    for text, y in zip(s.inputs, s.labels.tolist(), strict=True):
        ctx, ans = encode(
            tokenizer, render(tokenizer, p, text, max_chars), p.verbalisers[y], encoder_decoder
        )
        items.append(answer_labels(ctx, ans + eos))
    return items


def collate_seq2seq(
    items: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """The same items for an encoder–decoder: the context (where labels are ``IGNORE``) is the
    encoder's input, the answer the decoder's labels (transformers shifts them in itself)."""
    ctxs, answers = [], []
    for ids, lab in items:
        n = sum(1 for y in lab if y == IGNORE)
        ctxs.append(ids[:n])
        answers.append(ids[n:])
    S, T = max(len(c) for c in ctxs), max(len(a) for a in answers)
    ids_t = torch.full((len(items), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), S), dtype=torch.long)
    lab_t = torch.full((len(items), T), IGNORE, dtype=torch.long)
    for r, (c, a) in enumerate(zip(ctxs, answers, strict=True)):
        ids_t[r, : len(c)] = torch.tensor(c)
        mask[r, : len(c)] = 1
        lab_t[r, : len(a)] = torch.tensor(a)
    return {"input_ids": ids_t, "attention_mask": mask, "labels": lab_t}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def finetune(
    model_dir: Path,
    task: str,
    out: Path,
    *,
    epochs: float = 1.0,
    lr: float = 1e-5,
    batch_size: int = 16,
    max_train: int = 0,
    weight_decay: float = 0.0,
    warmup: float = 0.06,
    max_chars: int = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> dict[str, Any]:
    """Fine-tune θ_0 (the folder ``model_dir``) on ``task``: AdamW, linear warm-up then linear
    decay, gradient clipping at 1; writes ``out`` (safetensors) and returns the training log."""
    seed_all(seed)
    dev = torch.device(device)
    model, tok = load_folder(model_dir, dev)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    items = training_items(tok, task, max_train or None, seed, max_chars, enc_dec)
    log = train_items(
        model,
        tok,
        items,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        warmup=warmup,
        seed=seed,
        precision=precision,
        desc=f"finetune {task}",
    )
    save_model(model, out, {"lines_llm": f"finetuned:{task}", "seed": str(seed)})
    return {"task": task, **log}


def save_model(model: torch.nn.Module, out: Path, meta: dict[str, str]) -> None:
    """θ_0's keys (tied aliases left out) in fp32, as safetensors."""
    sd = {k: v.float() for k, v in unique_state_dict(model).items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(out, sd, {"format": "pt", **meta})


def train_items(
    model: Any,
    tok: Any,
    items: Sequence[tuple[list[int], list[int]]],
    *,
    epochs: float = 1.0,
    lr: float = 1e-5,
    batch_size: int = 16,
    weight_decay: float = 0.0,
    warmup: float = 0.06,
    seed: int = 0,
    precision: str = "auto",
    desc: str = "train",
) -> dict[str, Any]:
    """Supervised training of ``model`` in place on ``(input_ids, labels)`` items (the loss where
    labels are not ``IGNORE``): AdamW, linear warm-up then linear decay, gradient clipping at 1,
    batches in a seeded order. Returns the training log; leaves the model in eval mode."""
    dev = next(model.parameters()).device
    coll = collate_seq2seq if getattr(model.config, "is_encoder_decoder", False) else collate
    steps_per_epoch = math.ceil(len(items) / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    warm = int(warmup * total)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    while step < total:
        perm = torch.randperm(len(items), generator=g).tolist()
        for b in range(0, len(perm), batch_size):
            if step >= total:
                break
            batch = {
                k: v.to(dev)
                for k, v in coll(
                    [items[i] for i in perm[b : b + batch_size]], int(tok.pad_token_id)
                ).items()
            }
            with autocast(dev, precision):
                loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
    bar.close()
    model.eval()
    return {
        "examples": len(items),
        "steps": total,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(dev),
        "precision": "bf16-autocast" if dev.type == "cuda" and precision != "fp32" else "fp32",
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_mean_last_10pct": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "seconds": round(time.perf_counter() - t0, 3),
    }
