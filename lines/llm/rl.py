"""Rewarded soups with real RL (Ramé et al., NeurIPS 2023; LiNeS Sec. 5): an SFT policy that
continues review openings, then one policy per reward trained by reinforcement learning from it.

Prompts are the openings (first ``opening_words`` words) of the registry's movie reviews
(``rotten_tomatoes``: train reviews for SFT and RL, test reviews for evaluation), as one chat turn
"Continue this movie review: …". The SFT target is the review's actual rest.

RL is GRPO (Shao et al. 2024, DeepSeekMath), on-policy with one update per batch: for each prompt,
``group`` completions are sampled; a completion's advantage is its reward standardised within its
group, A = (r − mean)/(std + ε); the loss per completion is the mean over its tokens of
−A·log π(token) + β_KL·k3, with k3 = exp(q) − q − 1, q = log π_ref − log π (Schulman's unbiased,
non-negative KL estimator, GRPO's), π_ref the frozen SFT policy. With one update per batch the
PPO ratio is 1, so no clipping is needed. This is a small loop of our own rather than TRL: TRL
1.16 pulls ``datasets`` and ``pyarrow`` (more than the GPU machine's transfers carry) for what is
sixty lines here, and its loop cannot be driven tensor-by-tensor from our checkpoints without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lines.llm.finetune import IGNORE, answer_labels
from lines.llm.rewards import Reward, words
from lines.llm.scoring import autocast

INSTRUCTION = "Continue this movie review with one or two sentences."
PROMPT_TASK = "rotten_tomatoes"


def opening(text: str, n_words: int) -> tuple[str, str] | None:
    """``(opening, rest)`` of a review split after ``n_words`` whitespace words; None when the
    review has no rest (too short to continue)."""
    parts = text.split()
    if len(parts) <= n_words:
        return None
    return " ".join(parts[:n_words]), " ".join(parts[n_words:])


def review_openings(
    split: str, limit: int | None, n_words: int, seed: int = 0
) -> list[tuple[str, str]]:
    """``(opening, rest)`` pairs of the prompt task's ``split`` (``train``/``val``/``test``),
    at most ``limit`` (a seeded subset, taken before dropping reviews too short to split)."""
    from lines.llm.evaluate import examples

    s = examples(PROMPT_TASK, split, limit, seed)
    return [p for p in (opening(t, n_words) for t in s.inputs) if p is not None]


def render_opening(tokenizer: Any, text: str) -> str:
    """The chat context of one opening, ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{INSTRUCTION}\n\nReview: {text}"}],
        tokenize=False,
        add_generation_prompt=True,
    )


def sft_items(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_target_tokens: int
) -> list[tuple[list[int], list[int]]]:
    """Supervised items: the chat context, then the review's rest (cut at
    ``max_target_tokens``) and the end-of-turn token; loss on the answer only."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    items = []
    for op, rest in pairs:
        ctx = tokenizer(render_opening(tokenizer, op), add_special_tokens=False)["input_ids"]
        ans = tokenizer(" " + rest, add_special_tokens=False)["input_ids"][:max_target_tokens]
        if ans:
            items.append(answer_labels(ctx, ans + eos))
    return items


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = torch.tensor(list(s))
        mask[i, T - len(s) :] = 1
    return ids, mask


def completion_mask(gen: torch.Tensor, eos_id: int | None, pad_id: int) -> torch.Tensor:
    """1 on each generated token up to and including the first end token, 0 after it."""
    if eos_id is None:
        return torch.ones_like(gen)
    is_end = gen == eos_id
    # Tokens strictly after the first end token: the cumulative count of end tokens before them.
    after = (is_end.long().cumsum(1) - is_end.long()) > 0
    return (~after).long()


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Sample ``n`` completions per context (pure sampling at ``temperature``, seeded).
    Returns (prompt ids, prompt mask, completion ids, completion mask) — prompts left-padded and
    repeated ``n`` times, example-major — and the completions' texts (up to the end token)."""
    dev = next(model.parameters()).device
    pad = int(tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    ctx = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    ids, mask = _left_pad(ctx, pad)
    ids, mask = ids.repeat_interleave(n, 0).to(dev), mask.repeat_interleave(n, 0).to(dev)
    torch.manual_seed(seed)  # one stream for the batch: the same seed gives the same samples
    with autocast(dev, precision):
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,
            pad_token_id=pad,
            eos_token_id=eos,
        )
    gen = out[:, ids.shape[1] :]
    cmask = completion_mask(gen, eos, pad)
    texts = [
        tokenizer.decode(g[: int(m.sum())], skip_special_tokens=True).strip()
        for g, m in zip(gen.cpu(), cmask.cpu(), strict=True)
    ]
    return ids, mask, gen, cmask, texts


def token_logprobs(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    gen: torch.Tensor,
    cmask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log π(token) of every generated token (batch × completion length), one forward pass over
    prompt + completion; the head only at the completion's positions (the vocabulary is 49k).
    Logits are divided by the sampling ``temperature``, so π is the distribution the completions
    were drawn from (the policy gradient needs exactly that one)."""
    full = torch.cat([ids, gen], 1)
    am = torch.cat([mask, cmask], 1)
    # Left padding: positions count real tokens only, as generate() numbered them.
    pos = (am.cumsum(1) - 1).clamp(min=0)
    base = getattr(model, model.base_model_prefix)
    h = base(input_ids=full, attention_mask=am, position_ids=pos).last_hidden_state
    T = ids.shape[1]
    logits = model.get_output_embeddings()(h[:, T - 1 : -1]).float() / temperature
    return logits.log_softmax(-1).gather(2, gen[:, :, None])[:, :, 0]


def grpo_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    cmask: torch.Tensor,
    advantages: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's loss (one on-policy update): mean over completions of the mean over their tokens
    of −A·log π + β_KL·(exp(q) − q − 1), q = log π_ref − log π; and the mean per-token KL."""
    m = cmask.to(logp.dtype)
    q = ref_logp - logp
    kl = torch.exp(q) - q - 1
    per_tok = -advantages[:, None] * logp + kl_coef * kl
    n = m.sum(1).clamp(min=1)
    loss = ((per_tok * m).sum(1) / n).mean()
    return loss, ((kl * m).sum(1) / n).mean().detach()


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    """(r − mean of its group)/(std of its group + ε), groups of ``group`` consecutive samples."""
    r = rewards.view(-1, group)
    std = r.std(1, keepdim=True) if group > 1 else torch.zeros_like(r[:, :1])
    return ((r - r.mean(1, keepdim=True)) / (std + eps)).view(-1)


def grpo(
    policy: Any,
    ref: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    reward: Reward,
    *,
    steps: int = 100,
    prompts_per_step: int = 8,
    group: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    lr: float = 1e-6,
    kl_coef: float = 0.05,
    seed: int = 0,
    precision: str = "auto",
    desc: str = "grpo",
) -> dict[str, Any]:
    """Train ``policy`` in place with GRPO on ``reward`` over the rendered ``contexts``; ``ref``
    is the frozen reference policy of the KL term. Returns the training log (reward and KL per
    step)."""
    dev = next(policy.parameters()).device
    ref.eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    log: dict[str, list[float]] = {"reward": [], "kl": [], "loss": [], "length": []}
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, unit="step", leave=False):
        idx = torch.randint(len(contexts), (prompts_per_step,), generator=g).tolist()
        policy.eval()  # sampling without dropout
        ids, mask, gen, cmask, texts = generate(
            policy,
            tokenizer,
            [contexts[i] for i in idx],
            n=group,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed * 1_000_003 + step,
            precision=precision,
        )
        r = torch.tensor(reward(texts), dtype=torch.float32)
        adv = group_advantages(r, group).to(dev)
        policy.train()
        with autocast(dev, precision):
            logp = token_logprobs(policy, ids, mask, gen, cmask, temperature)
            with torch.no_grad():
                ref_logp = token_logprobs(ref, ids, mask, gen, cmask, temperature)
        loss, kl = grpo_loss(logp, ref_logp, cmask, adv, kl_coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        log["reward"].append(float(r.mean()))
        log["kl"].append(float(kl))
        log["loss"].append(float(loss.detach()))
        log["length"].append(float(np.mean([len(words(t)) for t in texts])))
    policy.eval()
    k = max(1, steps // 10)
    return {
        "steps": steps,
        "prompts_per_step": prompts_per_step,
        "group": group,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "lr": lr,
        "kl_coef": kl_coef,
        "seed": seed,
        "device": str(dev),
        "reward_first_10pct": float(np.mean(log["reward"][:k])),
        "reward_last_10pct": float(np.mean(log["reward"][-k:])),
        "kl_last_10pct": float(np.mean(log["kl"][-k:])),
        "curve": log,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def score_policy(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    rewards: dict[str, Reward],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    precision: str = "auto",
) -> dict[str, Any]:
    """One sampled completion per held-out context (the same seed for every model, so the
    comparison between models uses common random numbers), scored by every reward: per-example
    values, and a few sample texts."""
    per: dict[str, list[float]] = {k: [] for k in rewards}
    samples: list[str] = []
    for b in range(0, len(contexts), batch_size):
        *_, texts = generate(
            model,
            tokenizer,
            contexts[b : b + batch_size],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed + b,
            precision=precision,
        )
        for k, fn in rewards.items():
            per[k] += fn(texts)
        samples += texts
    return {"values": per, "samples": samples[:5]}


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and its normal-approximation interval (the t quantile is 1.96 at n ≥ 100 within
    1%; held-out sets here are larger)."""
    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean()) if x.size else math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}[level]
    return {"value": m, "lo": m - z * se, "hi": m + z * se, "level": level}


def dominated(p: Sequence[float], q: Sequence[float]) -> bool:
    """Is point ``p`` dominated by ``q`` (≥ on every reward, > on one)?"""
    return all(b >= a for a, b in zip(p, q, strict=True)) and any(
        b > a for a, b in zip(p, q, strict=True)
    )


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points."""
    return [i for i, p in enumerate(points) if not any(dominated(p, q) for q in points)]


def hypervolume_2d(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Area dominated by ``points`` (two rewards, maximised) above the reference point ``ref``."""
    pts = sorted(
        (p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0]
    )  # by the first reward, descending
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


__all__ = [
    "IGNORE",
    "dominated",
    "generate",
    "grpo",
    "grpo_loss",
    "group_advantages",
    "hypervolume_2d",
    "mean_ci",
    "pareto_front",
    "review_openings",
    "score_policy",
    "sft_items",
]
