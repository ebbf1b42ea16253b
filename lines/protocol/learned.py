"""The learned baselines the LiNeS paper argues against, and output ensembles, with their cost.

- **Fisher merging** (Matena & Raffel, NeurIPS 2022): θ = Σ_t F_t θ_t / Σ_t F_t, F_t the diagonal
  Fisher of fine-tuned model t, E_x E_{y∼p_θt(y|x)} [(∇_θ log p_θt(y|x))²], estimated from
  ``fisher_examples`` inputs of task t (one label sampled from the model per input, their
  estimator; ``fisher_labels: true`` uses the gold label: the empirical Fisher), plus a floor
  ε so that a parameter no task's Fisher sees falls back to the average. The Fishers are written
  to disk and the merge streams tensor by tensor, so memory stays near one model.
- **AdaMerging** (Yang et al., ICLR 2024): θ = θ_0 + Σ_t λ_t τ_t (task-wise) or
  θ_0 + Σ_t Σ_k λ_{t,k} τ_{t,k} (layer-wise: one coefficient per parameter tensor k), λ found by
  minimising the prediction entropy on *unlabelled* inputs — test inputs in the paper
  (``inputs: test``), or val inputs (``inputs: val``: the report names the choice). Adam, λ
  initialised at ``init`` (the paper's 0.3), layer-wise λ clamped to [0, 1] as in FusionBench.
- **aTLAS** (Zhang et al., NeurIPS 2024): the same parameterisation with one coefficient per
  parameter tensor and task, learned with cross-entropy on a *labelled* val subset.
- **Output ensembles**: the average of the fine-tuned models' logits (or probabilities) — not a
  single model; an upper reference for the merges and a comparison for soups.

Each result carries its cost on this machine: wall time, examples passed forward and backward, the
bytes of model-sized tensors it holds at once and, on CUDA,
the peak allocated memory — beside the same figures for task arithmetic + LiNeS (its β sweep on
val and one test evaluation), the paper's cost argument measured.

A suite supports them by being :class:`Differentiable`: its ``model`` (the module whose state
dict keys are the checkpoints'), ``logits(task, split, index)`` with the module's current
weights, and ``labels(task, split)``; parameters are swapped in with ``torch.func.functional_call``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from lines.errors import LinesError

Params = Mapping[str, torch.Tensor]


@runtime_checkable
class Differentiable(Protocol):
    """What a suite implements for the learned baselines (see the module docstring)."""

    @property
    def model(self) -> nn.Module: ...

    def logits(self, task: str, split: str, index: Sequence[int]) -> torch.Tensor: ...

    def labels(self, task: str, split: str) -> torch.Tensor: ...

    def num_examples(self, task: str, split: str) -> int: ...


@dataclass
class Cost:
    """What a method spent: wall seconds, examples passed forward and backward (an evaluation of a
    split counts its examples), the bytes of the model-sized tensors held at once, and the CUDA
    peak (None on CPU)."""

    wall_s: float = 0.0
    forward: int = 0
    backward: int = 0
    held_bytes: int = 0
    cuda_peak_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_s": round(self.wall_s, 3)}


def nbytes(sd: Params) -> int:
    return sum(v.numel() * v.element_size() for v in sd.values())


@contextmanager
def measured(cost: Cost, device: torch.device) -> Iterator[Cost]:
    """Time the block into ``cost`` and, on CUDA, its peak allocated memory."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            cost.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(device))
        cost.wall_s += time.perf_counter() - t0


class _Wrap(nn.Module):
    """``suite.model`` under a parent whose forward is the suite's ``logits``: functional_call
    on it swaps the weights of every submodule the suite's forward touches."""

    def __init__(self, suite: Differentiable):
        super().__init__()
        self.m = suite.model
        self._suite = (suite,)  # a tuple, so nn.Module does not register it

    def forward(self, task: str, split: str, index: Sequence[int]) -> torch.Tensor:
        return self._suite[0].logits(task, split, index)


def logits_with(
    suite: Differentiable, params: Params, task: str, split: str, index: Sequence[int]
) -> torch.Tensor:
    """The suite's logits of examples ``index`` with weights ``params`` (a full state dict whose
    tensors may require grad), without touching the module's own weights."""
    wrap = _Wrap(suite)
    swapped = {f"m.{k}": v for k, v in params.items()}
    return torch.func.functional_call(wrap, swapped, (task, split, index), strict=False)


def _batches(n: int, size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled batches of range(n) (reshuffled at each pass)."""
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for s in range(0, n, size):
            yield perm[s : s + size]


# ----------------------------------------------------------------------------------------------
# Fisher merging


def fisher_diagonal(
    suite: Differentiable,
    params: Params,
    task: str,
    split: str,
    n_examples: int,
    *,
    labels: str = "sampled",
    seed: int = 0,
    cost: Cost | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the model with weights ``params`` on ``n_examples`` inputs of
    ``task``: the mean over inputs of (∇ log p(y|x))², y sampled from the model (``sampled``)
    or the gold label (``true``); one forward and one backward pass per input."""
    if labels not in ("sampled", "true"):
        raise LinesError(f"fisher labels '{labels}': choose sampled or true")
    gen = torch.Generator().manual_seed(seed)
    n = min(n_examples, suite.num_examples(task, split))
    if n <= 0:
        raise LinesError(f"fisher: {task} {split} has no examples")
    idx = torch.randperm(suite.num_examples(task, split), generator=gen)[:n].tolist()
    # Gradients for the module's parameters only (not buffers such as BatchNorm statistics).
    names = {k for k, _ in suite.model.named_parameters()}
    leaves = {
        k: v.detach().requires_grad_(k in names and v.is_floating_point())
        for k, v in params.items()
    }
    trainable = [k for k, v in leaves.items() if v.requires_grad]
    acc = {k: torch.zeros_like(leaves[k]) for k in trainable}
    gold = suite.labels(task, split)
    for i in idx:
        logp = torch.log_softmax(logits_with(suite, leaves, task, split, [i]).float(), dim=-1)[0]
        if labels == "sampled":
            y = int(torch.multinomial(logp.detach().exp().cpu(), 1, generator=gen))
        else:
            y = int(gold[i])
        grads = torch.autograd.grad(logp[y], [leaves[k] for k in trainable], allow_unused=True)
        for k, g in zip(trainable, grads, strict=True):
            if g is not None:
                acc[k] += g.detach().square()
        if cost is not None:
            cost.forward += 1
            cost.backward += 1
    return {k: v / n for k, v in acc.items()}


def fisher_merge(
    models: Sequence[Callable[[], Params]],
    fishers: Sequence[Callable[[], Params]],
    *,
    floor: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """θ[k] = Σ_t (F_t[k] + floor) θ_t[k] / Σ_t (F_t[k] + floor), one tensor at a time: each
    ``models[t]()`` / ``fishers[t]()`` returns a lazily read mapping (a safetensors file opened
    with ``safe_open``), so only the tensors of one key are in memory besides the result. Keys
    without a Fisher (buffers, integer tensors) are the first model's."""
    if len(models) != len(fishers) or not models:
        raise LinesError("fisher merge: one Fisher per model, at least one model")
    ms = [m() for m in models]
    fs = [f() for f in fishers]
    out: dict[str, torch.Tensor] = {}
    for k in ms[0].keys():
        first = ms[0][k]
        if not first.is_floating_point() or any(k not in f for f in fs):
            out[k] = first
            continue
        num = torch.zeros_like(first, dtype=torch.float32)
        den = torch.zeros_like(first, dtype=torch.float32)
        for m, f in zip(ms, fs, strict=True):
            w = f[k].float() + floor
            num += w * m[k].float()
            den += w
        out[k] = (num / den).to(first.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# AdaMerging and aTLAS: coefficients of θ_0 + Σ_t Σ_k λ_{t,k} τ_{t,k} learned by gradient descent


def coefficient_groups(keys: Sequence[str], granularity: str) -> tuple[dict[str, int], int]:
    """Each key's coefficient column and the number of columns: ``task`` (one λ per task: 0 for
    every key) or ``tensor`` (one λ per parameter tensor, the layer-wise variant)."""
    if granularity == "task":
        return dict.fromkeys(keys, 0), 1
    if granularity == "tensor":
        return {k: i for i, k in enumerate(keys)}, len(keys)
    raise LinesError(f"granularity '{granularity}': choose task or tensor")


def combine(
    base: Params, taus: Sequence[Params], coefs: torch.Tensor, group: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """θ_0[k] + Σ_t coefs[t, group[k]] · τ_t[k] (differentiable in ``coefs``); keys without a
    group are θ_0's."""
    out: dict[str, torch.Tensor] = {}
    for k, b in base.items():
        g = group.get(k)
        if g is None:
            out[k] = b
            continue
        v = b.float()
        for t, tau in enumerate(taus):
            v = v + coefs[t, g] * tau[k].float()
        out[k] = v.to(b.dtype) if b.dtype != torch.float32 else v
    return out


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax of ``logits`` (B, C), AdaMerging's objective (Yang et
    al., ICLR 2024, Eq. 5), through log-softmax (FusionBench's ``entropy_loss`` uses
    log(p + 1e-8): the same up to that ε)."""
    p = torch.softmax(logits, dim=-1)
    return (-(p * torch.log_softmax(logits, dim=-1)).sum(-1)).mean()


def learn_coefficients(
    suite: Differentiable,
    base: Params,
    taus: Sequence[Params],
    tasks: Sequence[str],
    *,
    loss: str,
    split: str,
    granularity: str,
    steps: int,
    lr: float,
    batch_size: int,
    init: float,
    clamp: tuple[float, float] | None,
    seed: int = 0,
    cost: Cost | None = None,
    label: str = "",
) -> tuple[torch.Tensor, dict[str, int], list[float]]:
    """λ (tasks × groups) minimising, summed over tasks, the mean prediction entropy
    (``loss='entropy'``: AdaMerging, unlabelled) or the cross-entropy (``loss='ce'``: aTLAS,
    labelled) on batches of ``split``; Adam, ``steps`` steps, one batch of every task per step.
    Returns λ, the key → column map and the loss per step."""
    if loss not in ("entropy", "ce"):
        raise LinesError(f"loss '{loss}': choose entropy or ce")
    # Coefficients for the module's parameters only: buffers (BatchNorm statistics) stay θ_0's.
    names = {k for k, _ in suite.model.named_parameters()}
    keys = [
        k
        for k, v in base.items()
        if k in names and v.is_floating_point() and all(k in t for t in taus)
    ]
    group, n_groups = coefficient_groups(keys, granularity)
    device = next(iter(base.values())).device
    coefs = torch.full((len(taus), n_groups), float(init), device=device, requires_grad=True)
    opt = torch.optim.Adam([coefs], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    feeds = {t: _batches(suite.num_examples(t, split), batch_size, gen) for t in tasks}
    labels = {t: suite.labels(t, split) for t in tasks} if loss == "ce" else {}
    history: list[float] = []
    for _ in tqdm(range(steps), desc=label or f"learn λ ({loss})", leave=False, disable=not label):
        params = combine(base, taus, coefs, group)
        total = torch.zeros((), device=device)
        for t in tasks:
            idx = next(feeds[t])
            z = logits_with(suite, params, t, split, idx).float()
            if loss == "entropy":
                total = total + entropy(z)
            else:
                y = labels[t][idx].to(z.device)
                total = total + torch.nn.functional.cross_entropy(z, y)
            if cost is not None:
                cost.forward += len(idx)
                cost.backward += len(idx)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if clamp is not None:
            with torch.no_grad():
                coefs.clamp_(*clamp)
        history.append(float(total.detach()))
    return coefs.detach(), group, history


# ----------------------------------------------------------------------------------------------
# Output ensembles


@torch.no_grad()
def ensemble_correct(
    suite: Differentiable,
    members: Sequence[Params],
    tasks: Sequence[str],
    split: str,
    *,
    combine_by: str = "logits",
    batch_size: int = 256,
    cost: Cost | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example correctness of the ensemble of ``members`` on each task: the argmax of the
    mean logits (``logits``) or of the mean probabilities (``probs``)."""
    if combine_by not in ("logits", "probs"):
        raise LinesError(f"ensemble combine '{combine_by}': choose logits or probs")
    out = {}
    for t in tasks:
        n = suite.num_examples(t, split)
        total: torch.Tensor | None = None
        for m in members:
            parts = []
            for s in range(0, n, batch_size):
                z = logits_with(suite, m, t, split, list(range(s, min(n, s + batch_size))))
                parts.append(z.float().cpu())
                if cost is not None:
                    cost.forward += z.shape[0]
            z = torch.cat(parts)
            z = z if combine_by == "logits" else torch.softmax(z, dim=-1)
            total = z if total is None else total + z
        assert total is not None
        out[t] = total.argmax(-1) == suite.labels(t, split).cpu()
    return out


def lazy(path: Path) -> Callable[[], Any]:
    """A factory of a lazily read safetensors mapping (``safe_open``) of ``path``."""

    def open_() -> Any:
        from safetensors import safe_open

        f = safe_open(str(path), framework="pt")
        names = set(f.keys())

        class _Lazy(Mapping[str, torch.Tensor]):
            def __getitem__(self, k: str) -> torch.Tensor:
                if k not in names:
                    raise KeyError(k)
                return f.get_tensor(k)

            def __contains__(self, k: object) -> bool:
                return k in names

            def __iter__(self) -> Iterator[str]:
                return iter(f.keys())

            def __len__(self) -> int:
                return len(f.keys())

        return _Lazy()

    return open_
