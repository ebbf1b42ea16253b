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
from dataclasses import dataclass
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


def layout(model: Any, reqs: Sequence[Request], pad_id: int) -> dict[str, torch.Tensor]:
    """One padded batch of ``reqs`` as CPU tensors: what :func:`score_layout` feeds the model.
    Decoder-only: ``ids``/``mask`` (every token but the last, which predicts nothing), and per
    continuation token its ``rows``/``cols`` (the position predicting it), ``targets`` and
    ``owner`` (its request). Encoder–decoder: encoder ``ids``/``mask`` and decoder ``labels``."""
    if getattr(model.config, "is_encoder_decoder", False):
        S = max(len(c) for c, _ in reqs)
        T = max(len(k) for _, k in reqs)
        ids = torch.full((len(reqs), S), pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), S), dtype=torch.long)
        labels = torch.full((len(reqs), T), -100, dtype=torch.long)
        for i, (ctx, cont) in enumerate(reqs):
            ids[i, : len(ctx)] = torch.tensor(ctx)
            mask[i, : len(ctx)] = 1
            labels[i, : len(cont)] = torch.tensor(cont)
        return {"ids": ids, "mask": mask, "labels": labels}
    seqs = [c + k for c, k in reqs]
    T = max(len(s) for s in seqs) - 1
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, ((ctx, cont), s) in enumerate(zip(reqs, seqs, strict=True)):
        n = len(s) - 1
        ids[i, :n] = torch.tensor(s[:-1])
        mask[i, :n] = 1
        # Position p predicts token p+1: the continuation is predicted from len(ctx)-1 on.
        for j, tok in enumerate(cont):
            rows.append(i)
            cols.append(len(ctx) - 1 + j)
            targets.append(tok)
    return {
        "ids": ids,
        "mask": mask,
        "rows": torch.tensor(rows),
        "cols": torch.tensor(cols),
        "targets": torch.tensor(targets),
        "owner": torch.tensor(rows),  # each scored token belongs to its row's request
    }


def score_layout(model: Any, lay: dict[str, torch.Tensor], on_device: bool = False) -> torch.Tensor:
    """Summed log p(continuation | context) per request of one :func:`layout` (its tensors on the
    model's device, or moved there), float64; on the CPU unless ``on_device``."""
    device = next(model.parameters()).device
    t = {k: v.to(device, non_blocking=True) for k, v in lay.items()}
    if "labels" in t:  # encoder–decoder: teacher-forced from the decoder start token
        # transformers shifts the labels right (decoder_start_token_id, padding for -100) itself.
        logits = model(input_ids=t["ids"], attention_mask=t["mask"], labels=t["labels"]).logits
        logp = logits.float().log_softmax(-1)
        tok = logp.gather(2, t["labels"].clamp(min=0)[:, :, None])[:, :, 0]
        out = (tok * (t["labels"] >= 0)).sum(1).double()
        return out if on_device else out.cpu()
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=t["ids"], attention_mask=t["mask"]).last_hidden_state
    # The head only where a continuation token is predicted: full-vocabulary logits for every
    # position would cost batch × length × vocab floats (49k vocab for SmolLM2).
    h = hidden[t["rows"], t["cols"]]
    logp = model.get_output_embeddings()(h).float().log_softmax(-1)
    tok_lp = logp.gather(1, t["targets"][:, None])[:, 0]
    out = torch.zeros(len(t["ids"]), dtype=torch.float64, device=device)
    out = out.index_add(0, t["owner"], tok_lp.double())
    return out if on_device else out.cpu()


def logprob_batch(
    model: Any, reqs: Sequence[Request], pad_id: int, on_device: bool = False
) -> torch.Tensor:
    """Summed log p(continuation | context) of each request, in one padded forward pass (float64;
    on the CPU, or left on the model's device with its graph when ``on_device``)."""
    return score_layout(model, layout(model, reqs, pad_id), on_device)


@dataclass
class Collated:
    """A list of requests laid out once as padded batches (longest first, so each batch pads
    little), held on the model's device: a sweep that scores the same requests at every point
    then runs forwards only, with no per-point collation in Python and no copies to the device.
    ``batches[b]`` scores requests ``order[b]``."""

    order: list[list[int]]
    batches: list[dict[str, torch.Tensor]]
    n: int


def collate(model: Any, reqs: Sequence[Request], *, pad_id: int, batch_size: int = 32) -> Collated:
    """:class:`Collated` batches of ``reqs`` on ``model``'s device."""
    device = next(model.parameters()).device
    order = sorted(range(len(reqs)), key=lambda i: -(len(reqs[i][0]) + len(reqs[i][1])))
    chunks = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    batches = [
        {k: v.to(device) for k, v in layout(model, [reqs[i] for i in idx], pad_id).items()}
        for idx in chunks
    ]
    return Collated(chunks, batches, len(reqs))


def loglikelihoods(
    model: Any,
    reqs: Sequence[Request] | Collated,
    *,
    pad_id: int = 0,
    batch_size: int = 32,
    precision: str = "auto",
) -> torch.Tensor:
    """Summed continuation log-likelihood of every request (float64, request order), batched
    longest first so each batch pads little, under ``torch.inference_mode``. ``reqs`` may be
    :func:`collate`'s batches of them (then ``pad_id`` and ``batch_size`` were used there); the
    results are the same. The per-batch results stay on the device until the end: one
    synchronisation."""
    col = reqs if isinstance(reqs, Collated) else None
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast(device, precision):
        if col is None:
            col = collate(model, reqs, pad_id=pad_id, batch_size=batch_size)  # type: ignore[arg-type]
        parts = [score_layout(model, lay, on_device=True) for lay in col.batches]
    out = torch.empty(col.n, dtype=torch.float64)
    if parts:
        flat = torch.cat(parts).cpu()
        out[torch.tensor([i for idx in col.order for i in idx])] = flat
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
