"""The JEPA predictor: a small ViT that reads context tokens and predicts the tokens at target positions."""

from __future__ import annotations

import torch
from torch import nn

from anysat.attention import Block
from anysat.pos_embed import sincos_2d

__all__ = ["Predictor"]


class Predictor(nn.Module):
    """ViT predictor (depth 4, 16 heads, width D) with the encoder's metre-based position encoding.

    Args:
        dim: Token width D (the encoder's).
        depth: Number of blocks.
        num_heads: Attention heads (must divide D).
    """

    def __init__(self, dim: int, *, depth: int = 4, num_heads: int = 16) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor, *, grid: int,
                scale: int) -> torch.Tensor:  # fmt: skip
        """Predict target tokens.

        Args:
            context: [B, Kc, D] fused context tokens (no CLS).
            context_idx: [B, Kc] their patch indices.
            target_idx: [B, Kt] patch indices to predict.
            grid: Patches per tile side.
            scale: Patch size in 10 m units.

        Returns:
            [B, Kt, D] predictions.
        """
        pos = sincos_2d(context.shape[-1], grid, float(scale), device=context.device).to(context.dtype)  # [N, D]
        queries = self.mask_token + pos[target_idx]  # [B, Kt, D]
        x = torch.cat([context + pos[context_idx], queries], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.proj(self.norm(x[:, context.shape[1] :]))
