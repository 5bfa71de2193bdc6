"""SDPA + iRPE attention equals a naive implementation; buckets and position encodings are as specified."""

from __future__ import annotations

import math

import torch

from anysat.attention import RPEBlock
from anysat.irpe import bucket_ids
from anysat.pos_embed import sincos_2d


def test_buckets_of_a_small_grid() -> None:
    b = bucket_ids(3, prefix=1)
    assert b.shape == (10, 10)
    assert (b[0] == 7).all() and (b[:, 0] == 7).all()  # CLS bucket
    inner = b[1:, 1:]
    assert inner[0, 0] == 3 and inner[0, 1] == 4 and inner[0, 4] == 4  # distance 0, 1, sqrt(2) -> 1
    assert inner[0, 2] == 5 and inner[0, 8] == 5  # distances 2 and sqrt(8) ~ 3 share the log bucket 5
    assert int(inner.max()) == 5 and int(inner.min()) == 3
    wide = bucket_ids(5, prefix=1)[1:, 1:]
    assert wide[0, 4] == 6 and wide[0, 24] == 6  # distances 4 and sqrt(32) ~ 6 -> bucket 6 (clipped at beta)


def test_sdpa_irpe_attention_equals_naive_math() -> None:
    torch.manual_seed(0)
    blk = RPEBlock(32, 4).eval()
    x = torch.randn(2, 1 + 16, 32)
    buckets = bucket_ids(4, prefix=1)
    attn = blk.attn
    h = blk.norm1(x)
    qkv = attn.qkv(h).reshape(2, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    table = attn.rpe_k.lookup_table_weight[0]  # [head_dim, 8]
    bias = torch.empty(2, 4, 17, 17)
    for i in range(17):
        for j in range(17):
            bias[:, :, i, j] = q[:, :, i, :] @ table[:, buckets[i, j]]
    weights = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
    naive = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, 32))
    assert torch.allclose(attn(h, buckets), naive, atol=1e-5)


def test_position_encoding_is_in_metres() -> None:
    pe = sincos_2d(16, 2, 10.0, prefix_tokens=1)
    assert pe.shape == (5, 16) and torch.equal(pe[0], torch.zeros(16))
    # token (row 0, col 1) at 10 m: first half encodes the column position 10
    assert math.isclose(float(pe[2, 0]), math.sin(10.0), abs_tol=1e-6)
    assert math.isclose(float(pe[3, 8]), math.sin(10.0), abs_tol=1e-6)  # (row 1, col 0): second half, row 10 m
    assert torch.allclose(sincos_2d(16, 2, 20.0)[1], sincos_2d(16, 3, 20.0)[1])
