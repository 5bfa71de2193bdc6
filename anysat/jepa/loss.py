"""JEPA losses: smooth-L1 on predicted target tokens, MIL-NCE across modalities on per-modality patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mil_nce", "multi_positive_nce", "prediction_loss", "prediction_nce"]


def prediction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 1) between predictions and targets, both [B, K, D]; mean over everything."""
    return F.smooth_l1_loss(pred, target.detach())


def prediction_nce(pred: torch.Tensor, target: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """Contrastive prediction loss (InfoNCE, as in contrastive predictive coding) over the batch's target tokens.

    Each prediction [B, K, D] must pick its own target token among all B·K targets of the batch (cosine
    similarity / `temperature`); the other targets — other patches of the same tile and of the other tiles —
    are the negatives. Unlike a regression, a constant prediction scores at least log(B·K), so the encoder
    cannot lower it by discarding its input.
    """
    p = F.normalize(pred.float().reshape(-1, pred.shape[-1]), dim=-1)
    t = F.normalize(target.detach().float().reshape(-1, target.shape[-1]), dim=-1)
    logits = p @ t.T / temperature
    return F.cross_entropy(logits, torch.arange(len(p), device=p.device))


def multi_positive_nce(sim: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """−log Σ_pos exp(s) / Σ_candidates exp(s), averaged over rows: the InfoNCE of MIL-NCE and the sub-tile contrast.

    Args:
        sim: [N, N] scaled similarities.
        candidates: [N, N] bool, the entries each row is scored against (positives included).
        positive: [N, N] bool, each row's positives (a subset of `candidates`).
    """
    logits_all = sim.masked_fill(~candidates, float("-inf"))
    logits_pos = sim.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(logits_all, dim=1) - torch.logsumexp(logits_pos, dim=1)).mean()


def mil_nce(tokens: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """Multiple-instance NCE across modalities.

    Each token's positives are the tokens of the same patch (same sample) in the other modalities; every other
    token of another modality in the batch is a negative: loss = −log Σ_pos exp(s/τ) / Σ_pos∪neg exp(s/τ),
    with s the cosine similarity.

    Args:
        tokens: [B, M, N, D] per-modality patch tokens (M ≥ 2).

    Returns:
        Scalar loss (0 when M < 2).
    """
    b, m, n, d = tokens.shape
    if m < 2:
        return tokens.new_zeros(())
    z = F.normalize(tokens.float(), dim=-1).permute(1, 0, 2, 3).reshape(m, b * n, d)  # [M, BN, D]
    flat = z.reshape(m * b * n, d)
    sim = flat @ flat.T / temperature  # [MBN, MBN]
    modality = torch.arange(m, device=z.device).repeat_interleave(b * n)
    patch = torch.arange(b * n, device=z.device).repeat(m)
    other = modality[:, None] != modality[None, :]
    positive = other & (patch[:, None] == patch[None, :])
    return multi_positive_nce(sim, other, positive)
