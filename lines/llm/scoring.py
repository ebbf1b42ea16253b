"""Rank classification (lm-evaluation-harness's multiple-choice convention, and the T5
evaluations of TIES and LiNeS): the answer is the option whose continuation has the highest
log-likelihood given the prompt, length-normalised.

``norm``: ``chars`` divides the summed log-probability by the option's length in characters
(lm-evaluation-harness's ``acc_norm``), ``tokens`` by its number of tokens (the mean token
log-probability), ``none`` keeps the sum (``acc``). Ties go to the first option.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch

Norm = Literal["chars", "tokens", "none"]
NORMS: tuple[Norm, ...] = ("chars", "tokens", "none")
Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode(
    tokenizer: Any, context: str, continuation: str, encoder_decoder: bool = False
) -> Request:
    """Context and continuation ids, encoded separately (no special tokens added: the chat
    template already wrote them), so the continuation's tokens are exactly its own. For an
    encoder–decoder the context is a whole encoder input, with the tokenizer's end token (T5's
    ``</s>``)."""
    ctx = tokenizer(context, add_special_tokens=encoder_decoder)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ctx or not cont:
        raise ValueError("empty context or continuation after tokenisation")
    return list(ctx), list(cont)


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast on CUDA (fp32 master weights), nothing on CPU (fp32)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _logprob_batch_seq2seq(
    model: Any, reqs: Sequence[Request], pad_id: int, on_device: bool = False
) -> torch.Tensor:
    """Encoder–decoder (T5): the context is the encoder's input, the continuation the decoder's
    target (teacher-forced from the decoder start token); summed log-probabilities."""
    device = next(model.parameters()).device
    S = max(len(c) for c, _ in reqs)
    T = max(len(k) for _, k in reqs)
    ids = torch.full((len(reqs), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(reqs), S), dtype=torch.long)
    labels = torch.full((len(reqs), T), -100, dtype=torch.long)
    for i, (ctx, cont) in enumerate(reqs):
        ids[i, : len(ctx)] = torch.tensor(ctx)
        mask[i, : len(ctx)] = 1
        labels[i, : len(cont)] = torch.tensor(cont)
    labels = labels.to(device)
    # transformers shifts the labels right (decoder_start_token_id, padding for -100) itself.
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels).logits
    logp = logits.float().log_softmax(-1)
    tok = logp.gather(2, labels.clamp(min=0)[:, :, None])[:, :, 0]
    out = (tok * (labels >= 0)).sum(1).double()
    return out if on_device else out.cpu()


def logprob_batch(
    model: Any, reqs: Sequence[Request], pad_id: int, on_device: bool = False
) -> torch.Tensor:
    """Summed log p(continuation | context) of each request, in one padded forward pass (float64;
    on the CPU, or left on the model's device with its graph when ``on_device``)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return _logprob_batch_seq2seq(model, reqs, pad_id, on_device)
    device = next(model.parameters()).device
    seqs = [c + k for c, k in reqs]
    # The last token is never an input: nothing after it is scored.
    T = max(len(s) for s in seqs) - 1
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    rows, cols, targets, owner = [], [], [], []
    for i, ((ctx, cont), s) in enumerate(zip(reqs, seqs, strict=True)):
        n = len(s) - 1
        ids[i, :n] = torch.tensor(s[:-1])
        mask[i, :n] = 1
        # Position p predicts token p+1: the continuation is predicted from len(ctx)-1 on.
        for j, tok in enumerate(cont):
            rows.append(i)
            cols.append(len(ctx) - 1 + j)
            targets.append(tok)
            owner.append(i)
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    # The head only where a continuation token is predicted: full-vocabulary logits for every
    # position would cost batch × length × vocab floats (49k vocab for SmolLM2).
    h = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    logp = model.get_output_embeddings()(h).float().log_softmax(-1)
    tok_lp = logp.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
    out = torch.zeros(len(seqs), dtype=torch.float64, device=device)
    out = out.index_add(0, torch.tensor(owner, device=device), tok_lp.double())
    return out if on_device else out.cpu()


def loglikelihoods(
    model: Any,
    reqs: Sequence[Request],
    *,
    pad_id: int,
    batch_size: int = 32,
    precision: str = "auto",
) -> torch.Tensor:
    """Summed continuation log-likelihood of every request (float64, request order), batched
    longest first so each batch pads little, under ``torch.inference_mode``."""
    order = sorted(range(len(reqs)), key=lambda i: -(len(reqs[i][0]) + len(reqs[i][1])))
    out = torch.empty(len(reqs), dtype=torch.float64)
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast(device, precision):
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            out[idx] = logprob_batch(model, [reqs[i] for i in idx], pad_id)
    return out


def normalisers(
    options: Sequence[str], cont_ids: Sequence[Sequence[int]], norm: Norm
) -> list[float]:
    """What each option's summed log-likelihood is divided by."""
    if norm == "chars":
        return [float(len(o)) for o in options]
    if norm == "tokens":
        return [float(len(c)) for c in cont_ids]
    if norm == "none":
        return [1.0] * len(options)
    raise ValueError(f"unknown norm '{norm}' (chars, tokens or none)")


def rank_classify(ll: torch.Tensor, denom: Sequence[float]) -> torch.Tensor:
    """``ll`` (examples × options) divided by ``denom`` (per option) → predicted option per
    example; the first of equal scores wins (``torch.argmax``'s rule)."""
    return (ll / torch.tensor(denom, dtype=ll.dtype)).argmax(1)


def choose_norm(
    ll: torch.Tensor,
    options: Sequence[str],
    cont_ids: Sequence[Sequence[int]],
    labels: torch.Tensor,
) -> tuple[Norm, dict[str, float]]:
    """The normalisation with the highest accuracy of ``ll`` (θ_0's val log-likelihoods,
    examples × options) against ``labels``, and each one's accuracy; ties go to the first of
    chars, tokens, none. Per-character normalisation favours long multi-token options (TREC's
    "abbreviation"), so it is a per-task choice made on val, never a fixed convention."""
    accs = {
        n: float((rank_classify(ll, normalisers(options, cont_ids, n)) == labels).float().mean())
        for n in NORMS
    }
    best = max(NORMS, key=lambda n: accs[n])  # max keeps the first of equal values
    return best, accs
