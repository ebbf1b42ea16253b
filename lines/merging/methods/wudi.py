from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, stacked
from lines.merging.spectral import is_matrix


@dataclasses.dataclass
class Wudi(MergeMethod):
    """WUDI-Merging (Cheng et al., "Whoever Started the Interference Should End It", ICML 2025):
    data-free, per weight matrix, τ_m starts at Σ τ_i and takes ``iterations`` Adam steps
    (learning rate ``lr``) on Σ_i ‖(τ_m − τ_i)·τ_iᵀ‖²_F / ‖τ_i‖²_F — the interference each task
    vector's own row space sees; other tensors are averaged. As FusionBench's ``wudi_merging``
    (its default of 400 iterations; a task whose matrix is unchanged contributes nothing, where
    FusionBench's division by ‖τ_i‖² = 0 makes the merge NaN). Every 2-D tensor is a weight
    matrix here, as in FusionBench (embedding tables included). The loss (:func:`interference`) is
    quadratic in τ_m, so its gradient is 2(τ_m·G − B) with G = Σ_i τ_iᵀτ_i/‖τ_i‖² and
    B = Σ_i τ_i·τ_iᵀτ_i/‖τ_i‖², both formed once (:func:`quadratic_form`): each Adam step is one
    (rows × cols)·(cols × cols) product instead of N autograd passes, the same steps up to
    rounding, and no (rows × rows) product is ever formed (30,522² per task for BERT's word
    embeddings). Runs on the merge device when the suite has a GPU."""

    name: ClassVar[str] = "wudi"
    summary: ClassVar[str] = "data-free per-matrix optimisation of the merged task vector"
    reference: ClassVar[str] = "Cheng et al., ICML 2025, arXiv 2503.08099"
    accelerated: ClassVar[bool] = True  # 400 Adam steps per matrix: merge on the suite's GPU

    iterations: int = dataclasses.field(default=400, metadata={"help": "Adam steps, ≥ 0"})
    lr: float = dataclasses.field(default=1e-5, metadata={"help": "Adam learning rate, > 0"})

    def validate(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise LinesError(f"wudi iterations out of range: {self.iterations!r} (must be ≥ 0)")
        if not self.lr > 0:
            raise LinesError(f"wudi lr out of range: {self.lr} (must be > 0)")

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        tvs = stacked(taus).detach()
        merged = torch.nn.Parameter(torch.sum(tvs, dim=0))
        if not is_matrix(tvs):
            return (merged / tvs.shape[0]).detach()
        l2 = torch.square(torch.norm(tvs.reshape(tvs.shape[0], -1), p=2, dim=-1))
        # A task that left this matrix unchanged (τ_i = 0) contributes (τ_m − 0)·0ᵀ = 0: its
        # term is 0, not 0/0 (FusionBench divides by zero there and the merge turns NaN).
        l2 = torch.where(l2 > 0, l2, torch.ones_like(l2))
        g, b = quadratic_form(tvs, l2)
        opt = torch.optim.Adam([merged], lr=self.lr, weight_decay=0)
        for _ in range(self.iterations):
            # ∂/∂τ_m Σ_i ‖(τ_m − τ_i)τ_iᵀ‖²/‖τ_i‖² = 2(τ_m·G − B): Adam sees the autograd gradient
            merged.grad = 2.0 * (torch.matmul(merged.detach(), g) - b)
            opt.step()
        return merged.detach()


def quadratic_form(tvs: torch.Tensor, l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G = Σ_i τ_iᵀτ_i / ‖τ_i‖² (cols × cols) and B = Σ_i τ_i·τ_iᵀτ_i / ‖τ_i‖² (rows × cols): WUDI's
    loss is tr(τ_m G τ_mᵀ) − 2 tr(τ_m Bᵀ) + const, so its gradient is 2(τ_m G − B)."""
    w = (1.0 / l2).reshape(-1, 1, 1)
    grams = gram_of(tvs) * w
    return grams.sum(0), torch.matmul(tvs, grams).sum(0)


def gram_of(tvs: torch.Tensor) -> torch.Tensor:
    """τ_iᵀ τ_i per task, (N, cols, cols)."""
    return torch.matmul(tvs.transpose(1, 2), tvs)


def interference(merged: torch.Tensor, tvs: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Σ_i ‖(τ_m − τ_i)·τ_iᵀ‖²_F / ‖τ_i‖²_F, WUDI's loss (what :class:`Wudi` minimises through its
    gradient; kept as the definition the tests check the gradient against)."""
    product = torch.matmul(merged.unsqueeze(0) - tvs, tvs.transpose(1, 2))
    return torch.sum(torch.square(product) / l2.unsqueeze(-1).unsqueeze(-1))


METHOD = Wudi
