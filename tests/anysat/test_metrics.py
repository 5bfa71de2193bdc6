"""Collapse monitors: a rank-1 matrix has effective rank ~1, an isotropic Gaussian nearly full rank."""

from __future__ import annotations

import math

import pytest
import torch

from anysat.metrics import effective_rank, embedding_std


def test_effective_rank_of_rank_one_and_isotropic_matrices() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(500, 1, generator=gen), torch.randn(1, 32, generator=gen)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-3)
    iso = torch.randn(2000, 32, generator=gen)
    assert effective_rank(iso) > 30  # at most 32
    assert effective_rank(iso, center=True) > 30
    # two equal directions: 2; the measure follows the spectrum, not only the algebraic rank
    two = torch.cat([torch.randn(1000, 1, generator=gen)] * 2 + [torch.zeros(1000, 30)], dim=1)
    assert effective_rank(two) == pytest.approx(1.0, abs=0.01)  # identical columns: one direction
    basis = torch.zeros(1000, 32)
    basis[:500, 0], basis[500:, 1] = 1.0, 1.0
    assert effective_rank(basis) == pytest.approx(2.0, abs=1e-3)


def test_uncentred_rank_sees_a_shared_offset_the_centred_one_ignores() -> None:
    gen = torch.Generator().manual_seed(1)
    z = 100.0 + 0.01 * torch.randn(1000, 16, generator=gen)  # collapsed onto one vector plus noise
    assert effective_rank(z) < 1.1
    assert effective_rank(z, center=True) > 14
    assert effective_rank(torch.zeros(4, 8)) == 1.0
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        effective_rank(torch.zeros(8))


def test_embedding_std_is_zero_when_collapsed_and_one_over_sqrt_d_when_isotropic() -> None:
    gen = torch.Generator().manual_seed(2)
    assert embedding_std(torch.ones(100, 64) * 3.0) == pytest.approx(0.0, abs=1e-9)
    iso = torch.randn(5000, 64, generator=gen)
    assert embedding_std(iso) == pytest.approx(1 / math.sqrt(64), rel=0.05)
    assert embedding_std(iso.reshape(50, 100, 64)) == pytest.approx(embedding_std(iso))
