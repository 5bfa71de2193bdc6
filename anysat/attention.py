"""Transformer blocks: plain ViT blocks, blocks with iRPE on keys, and the cross-attention fusion block.

Every attention runs through `torch.nn.functional.scaled_dot_product_attention`; iRPE enters as its additive
mask. Parameter names follow the official checkpoint (`qkv`, `proj`, `rpe_k.lookup_table_weight`, `wk`, `wv`,
`q_learned`, `mlp.fc1`, `mlp.fc2`) so that conversion is a rename of prefixes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anysat.irpe import RelativePositionKeys

__all__ = ["Block", "FusionBlock", "Mlp", "RPEBlock"]


class Mlp(nn.Module):
    """Linear → GELU → Linear (ratio 4)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, rpe: bool, rpe_first_head: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} must be divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rpe_k = RelativePositionKeys(self.head_dim, first_head_only=rpe_first_head) if rpe else None

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape  # [B, N, D]
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = None
        if self.rpe_k is not None:
            if buckets is None:
                raise ValueError("an iRPE attention needs the bucket index of its tokens")
            q = q * self.scale  # the official iRPE reads the scaled queries
            bias = self.rpe_k(q, buckets).to(q.dtype)  # [B, H, N, N]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _SelfAttention(dim, num_heads, rpe=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RPEBlock(Block):
    """ViT block whose attention adds iRPE on keys (the shared spatial encoder's block)."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, eps: float = 1e-5,
                 rpe_first_head: bool = False) -> None:  # fmt: skip
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, eps=eps)
        self.attn = _SelfAttention(dim, num_heads, rpe=True, rpe_first_head=rpe_first_head)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        x = x + self.attn(self.norm1(x), buckets)
        return x + self.mlp(self.norm2(x))


class _CrossAttention(nn.Module):
    """Learned queries (+ their position encoding) attend to all modality tokens, with iRPE on keys."""

    def __init__(self, dim: int, num_heads: int, *, rpe_first_head: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.wk = nn.Linear(dim, dim, bias=True)
        self.wv = nn.Linear(dim, dim, bias=True)
        self.q_learned = nn.Parameter(torch.zeros(1, 1, dim))
        self.rpe_k = RelativePositionKeys(self.head_dim, first_head_only=rpe_first_head)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """x [B, Nk, D] keys/values; query_pos [B, Nq, D]; buckets [B, Nq, Nk] → [B, Nq, D]."""
        b, nk, c = x.shape
        nq = query_pos.shape[1]
        q = (self.q_learned + query_pos).reshape(b, nq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).reshape(b, nk, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).reshape(b, nk, self.num_heads, self.head_dim).transpose(1, 2)
        bias = self.rpe_k(q, buckets).to(q.dtype)  # the official code reads unscaled queries here
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class FusionBlock(nn.Module):
    """Cross-attention fusion: attention branch without residual (official) or with one given by the caller,
    MLP branch with one."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, eps: float = 1e-6,
                 rpe_first_head: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _CrossAttention(dim, num_heads, rpe_first_head=rpe_first_head)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, buckets: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """`residual` [B, Nq, D], when given, is added to the attention branch (not in the official block)."""
        x = self.attn(self.norm1(x), query_pos, buckets)
        if residual is not None:
            x = x + residual
        return x + self.mlp(self.norm2(x))
