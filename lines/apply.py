"""θ = θ_0 + λ(ℓ)·τ in memory: the one "apply" of the library (LiNeS, Wang et al. ICLR 2025,
Eq. 1 — τ_LiNeS = concat(λ^(1)τ^(1), …, λ^(L)τ^(L)) added to the pretrained weights).

The streaming engine writes θ to a file; evaluation sweeps (every point of a λ, β or γ grid) build
θ here instead, one scaled add per tensor, on whatever device the tensors live on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def scaled_add(
    base: torch.Tensor, tau: torch.Tensor, lam: float, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """θ_0 + λ·τ for one tensor (or slice), added in float32 and cast to ``dtype`` (default: θ_0's
    dtype). Every θ the library builds, in memory or streamed to a file, goes through here."""
    return (base.float() + lam * tau.float()).to(dtype or base.dtype)


def apply_lambdas(
    base: Mapping[str, torch.Tensor],
    tau: Mapping[str, torch.Tensor] | None,
    block_of: Mapping[str, int],
    lambdas: Sequence[float],
) -> dict[str, torch.Tensor]:
    """θ_0 + λ(ℓ(k))·τ_k for every floating key ``k`` of ``tau``; other keys are θ_0's tensors
    (not copied). The add runs in float32 and is cast back to θ_0's dtype, as the engine does.

    ``block_of`` maps a key to its block ℓ in 1..L and ``lambdas[ℓ-1]`` is λ(ℓ)."""
    if tau is None:
        return dict(base)
    out = {}
    for k, b in base.items():
        t = tau.get(k)
        if t is None or not b.is_floating_point():
            out[k] = b
        else:
            out[k] = scaled_add(b, t, lambdas[block_of[k] - 1])
    return out
