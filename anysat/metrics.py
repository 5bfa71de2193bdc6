"""Collapse monitors for embeddings: effective rank (RankMe) and the per-dimension std of normalised embeddings.

Both take a matrix of embeddings `z` [N, D] (one row per sample or token) and return a float. They are what the
training loop watches to tell learning from representation collapse: a loss that falls says nothing when the
encoder can reach a low loss by giving every input the same output.

- `effective_rank`: RankMe (Garrido et al., 2023): exp of the Shannon entropy of the singular values of `z`
  normalised to sum to one. It lies in [1, min(N, D)]; one dominant direction gives ~1. We use the uncentred
  matrix, as RankMe does, by default: an encoder whose outputs collapse onto one common vector then scores ~1
  even if tiny residual variations remain, which is the failure we want to see. `center=True` measures the rank
  of the spread around the mean instead (blind to a shared offset, sensitive to scale-free structure).
- `embedding_std`: mean over dimensions of the std across samples of the L2-normalised rows (the collapse
  monitor of I-JEPA/VICReg-style training). A collapsed encoder gives 0; isotropic embeddings give ~1/sqrt(D).
"""

from __future__ import annotations

import torch

__all__ = ["effective_rank", "embedding_std"]


def _as_matrix(z: torch.Tensor) -> torch.Tensor:
    if z.ndim < 2:
        raise ValueError(f"embeddings must be [N, D] (or [..., D]), got shape {list(z.shape)}")
    return z.detach().reshape(-1, z.shape[-1]).double()


def effective_rank(z: torch.Tensor, *, center: bool = False, eps: float = 1e-12) -> float:
    """RankMe effective rank of embeddings `z` [N, D] (leading dimensions are flattened into N).

    Args:
        z: Embeddings, one per row.
        center: Subtract the mean row first (default False: RankMe's uncentred definition, see module doc).
        eps: Added to the normalised singular values before the logarithm (RankMe's epsilon).

    Returns:
        exp(-Σ p_k log p_k) with p_k = σ_k / Σ σ; 1.0 for an all-zero matrix.
    """
    m = _as_matrix(z)
    if center:
        m = m - m.mean(0, keepdim=True)
    s = torch.linalg.svdvals(m)
    total = s.sum()
    if not torch.isfinite(total) or total <= 0:
        return 1.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std (across rows) of the L2-normalised rows of `z` [N, D]; 0 means collapsed."""
    m = _as_matrix(z)
    if m.shape[0] < 2:
        raise ValueError("embedding_std needs at least two embeddings")
    m = torch.nn.functional.normalize(m, dim=-1)
    return float(m.std(0).mean())
