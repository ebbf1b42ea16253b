"""Primitives of the spectral (SVD-based) merges — Iso-C, Iso-CTS, TSV-M — written to follow the
reference implementations in FusionBench (``fusion_bench.method.isotropic_merging.iso_utils``,
``task_singular_vector.utils.TSVM_utils``) operation for operation, so results agree with them
to float rounding. Every 2-D tensor gets the matrix rule; every other tensor (biases, norms,
1-D embeddings) is averaged, as there."""

from __future__ import annotations

import torch


def is_matrix(x: torch.Tensor) -> bool:
    """Whether the (N, …) stack holds 2-D task vectors (the matrix rule applies)."""
    return x.dim() == 3


def sequential_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ_i x[i] added one at a time in order (Python's ``sum`` over the task vectors, as the
    references do: a tree reduction would round differently)."""
    out = x[0].clone()
    for t in x[1:]:
        out += t
    return out


def running_mean(x: torch.Tensor) -> torch.Tensor:
    """m ← m + (x_i − m)/(i+1): the references' incremental mean of non-matrix tensors."""
    out = x[0].clone()
    for i, t in enumerate(x[1:], start=1):
        out += (t - out) / (i + 1)
    return out


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal factor U·Vᴴ of a = U·S·Vᴴ (the closest matrix with orthonormal columns,
    or rows): how TSV-M and Iso-CTS decorrelate stacked singular vectors."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh
