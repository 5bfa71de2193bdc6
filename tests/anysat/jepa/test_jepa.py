"""The JEPA objective: mask constraints, EMA arithmetic, losses, gradients, and learning on real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from torch import nn

from anysat import AnySat, AnySatConfig
from anysat.jepa import Jepa, JepaConfig, MaskConfig, drop_dates, ema_update, mil_nce, momentum_at, prediction_loss
from anysat.jepa import sample_masks
from anysat.jepa.loss import prediction_nce
from anysat.jepa.objective import normalise_targets, variance_covariance
from anysat.metrics import effective_rank

SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples" / "bigearthnet"


@pytest.mark.parametrize("grid", [3, 6, 12])
def test_masks_meet_their_constraints(grid: int) -> None:
    cfg = MaskConfig()
    gen = torch.Generator().manual_seed(grid)
    for _ in range(20):
        m = sample_masks(grid, 8, cfg, generator=gen)
        assert m.context.shape[0] == 8 and m.targets.shape[:2] == (8, cfg.n_targets)
        assert m.context.shape[1] >= cfg.min_context
        for b in range(8):
            ctx = set(m.context[b].tolist())
            tgt = set(m.targets[b].flatten().tolist())
            assert not ctx & tgt, "context overlaps a target"
            assert all(0 <= i < grid * grid for i in ctx | tgt)
    if grid == 12:  # block geometry: one un-truncated target block is a rectangle within the ranges
        m = sample_masks(grid, 1, cfg, generator=torch.Generator().manual_seed(0))
        idx = m.targets[0, 0]
        rows, cols = idx // grid, idx % grid
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert h * w == len(idx)
        area = h * w / grid**2
        assert cfg.target_scale[0] * 0.5 <= area <= cfg.target_scale[1] * 1.6
        assert 0.5 <= h / w <= 2.0


def test_masks_are_deterministic_for_the_same_generator_and_fail_clearly() -> None:
    a = sample_masks(8, 4, MaskConfig(), generator=torch.Generator().manual_seed(3))
    b = sample_masks(8, 4, MaskConfig(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    with pytest.raises(ValueError, match="cannot hold"):
        sample_masks(1, 2, MaskConfig(), generator=torch.Generator())


def test_ema_arithmetic_and_schedule() -> None:
    target, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.bias.fill_(0.0)
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(1.0)
    ema_update(target, student, 0.75)
    assert torch.allclose(target.weight, torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(target.bias, torch.tensor([0.25]))
    assert momentum_at(0, 100) == 0.996 and momentum_at(100, 100) == 1.0
    assert math.isclose(momentum_at(50, 100), 0.998)


def test_losses() -> None:
    gen = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    assert torch.allclose(prediction_loss(p, t), F.smooth_l1_loss(p, t))
    z = torch.randn(2, 1, 9, 16, generator=gen)
    aligned = torch.cat([z, z + 0.01 * torch.randn(z.shape, generator=gen)], dim=1)  # [B, M=2, N, D]
    shuffled = torch.cat([z, z[:, :, torch.randperm(9, generator=gen)]], dim=1)
    assert float(mil_nce(aligned)) < float(mil_nce(shuffled))
    assert float(mil_nce(z)) == 0.0  # one modality: no cross-modal pairs


def test_date_dropout_keeps_at_least_one_valid_date() -> None:
    x = {"s2": torch.zeros(3, 4, 10, 2, 2), "s2_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]).bool()}
    out = drop_dates(x, ["s2"], 0.5, torch.Generator().manual_seed(0))
    kept = out["s2_mask"]
    assert kept.sum(1).tolist() == [2, 1, 1]
    assert not (kept & ~x["s2_mask"]).any()


def _real_batch() -> dict[str, object]:
    """The 6 BigEarthNet S2+S1 pairs: 10 s2 bands at 10 m, s1-asc VV/VH in dB, 30x30 px (a 6x6 grid of 50 m patches), standardised."""
    s2s, s1s = [], []
    for s2_dir in sorted((SAMPLES / "BigEarthNet-S2-Example").iterdir()):
        suffix = "_".join(s2_dir.name.split("_")[-2:])
        s1_dir = next((SAMPLES / "BigEarthNet-S1-Example").glob(f"*_{suffix}"))
        bands = []
        for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"):
            a = rasterio.open(next(s2_dir.glob(f"*_{b}.tif"))).read(1).astype(np.float32)
            bands.append(np.kron(a, np.ones((2, 2), np.float32)) if a.shape[0] == 60 else a)
        s2s.append(np.stack(bands)[:, :30, :30])
        s1s.append(np.stack([rasterio.open(next(s1_dir.glob(f"*_{p}.tif"))).read(1) for p in ("VV", "VH")])[:, :30, :30])
    s2, s1 = torch.from_numpy(np.stack(s2s))[:, None], torch.from_numpy(np.stack(s1s))[:, None]
    s2 = (s2 - s2.mean((0, 1, 3, 4), keepdim=True)) / s2.std((0, 1, 3, 4), keepdim=True)
    s1 = (s1 - s1.mean((0, 1, 3, 4), keepdim=True)) / s1.std((0, 1, 3, 4), keepdim=True)
    dates = torch.tensor([[164.0], [168.0], [168.0], [355.0], [267.0], [35.0]])
    return {"s2": s2, "s2_dates": dates, "s1-asc": s1, "s1-asc_dates": dates, "patch_size": 50}


def test_target_gets_no_gradient_and_the_student_does() -> None:
    torch.manual_seed(0)
    jepa = Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2", "s1-asc"))), JepaConfig(predictor_depth=1))
    out = jepa(_real_batch())
    out.loss.backward()
    assert all(p.grad is None for p in jepa.target.parameters())
    assert jepa.student.cls_token.grad is not None and jepa.predictor.mask_token.grad is not None
    assert torch.isfinite(out.loss) and out.loss_nce > 0 and out.loss_pred > 0


def _rank(model: AnySat, batch: dict[str, object]) -> float:
    """Effective rank of the fused patch tokens of the full input (what the training monitor watches)."""
    with torch.no_grad():
        x = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out = model(x, patch_size=int(batch["patch_size"]), output="all")  # type: ignore[call-overload]
    return effective_rank(out[:, 1:].reshape(-1, out.shape[-1]))


@pytest.mark.xfail(strict=False, raises=AssertionError, reason="Issue 10 is open: with the new defaults the effective rank of these tiny real batches still falls below half its first value (measured: 29.5 -> 13.5 over 50 steps on 6 BigEarthNet pairs; 4.1 -> 1.7 on the demo store). Not strict: near the threshold (13.5 vs 14.8) a CPU with other rounding may pass it; an XPASS is shown in the summary.")
def test_loss_falls_over_50_steps_on_a_real_batch_without_collapse() -> None:
    torch.manual_seed(0)
    jepa = Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2", "s1-asc"))), JepaConfig(seed=1))
    params = [p for p in jepa.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)
    batch = _real_batch()
    rank0 = _rank(jepa.student, batch)
    losses = []
    for step in range(50):
        out = jepa(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        jepa.update_target(momentum_at(step, 50))
        losses.append(float(out.loss))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert np.isfinite(losses).all()
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"
    rank = _rank(jepa.student, batch)
    assert rank >= 0.5 * rank0, f"the effective rank collapsed from {rank0:.2f} to {rank:.2f}"


def test_contrastive_prediction_loss_scores_a_constant_predictor_at_chance_or_worse() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(4, 6, 32, generator=gen)
    constant = torch.randn(1, 1, 32, generator=gen).expand(4, 6, 32)
    assert float(prediction_nce(constant, targets)) >= math.log(24) - 1e-4  # chance or worse: mean(lse - s) >= log N
    assert float(prediction_nce(targets * 3.0, targets)) < 0.05 * math.log(24)  # each picks its own target
    jepa = Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2", "s1-asc"))),
                JepaConfig(pred_loss="nce", predictor_depth=1))  # fmt: skip
    out = jepa(_real_batch())
    assert torch.isfinite(out.loss) and 0 < float(out.loss_pred) < 2 * math.log(6 * 36)
    with pytest.raises(ValueError, match="pred_loss"):
        JepaConfig(pred_loss="mse")


def test_target_normalisation_and_variance_covariance_terms() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = 5.0 + torch.randn(4, 9, 16, generator=gen) * torch.linspace(0.1, 3.0, 16)
    layer = normalise_targets(tokens, "layer")
    assert torch.allclose(layer.mean(-1), torch.zeros(4, 9), atol=1e-5)
    batch = normalise_targets(tokens, "batch").reshape(-1, 16)
    assert torch.allclose(batch.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(batch.std(0, unbiased=False), torch.ones(16), atol=1e-3)
    # a constant predictor scores ~0.02 on near-constant layer-normed targets, ~0.4 on batch-standardised ones
    near_const = torch.randn(1, 1, 16, generator=gen) + 0.05 * torch.randn(8, 9, 16, generator=gen)
    const_pred = normalise_targets(near_const, "layer").mean((0, 1), keepdim=True).expand(8, 9, 16)
    assert float(prediction_loss(const_pred, normalise_targets(near_const, "layer"))) < 0.05
    assert float(prediction_loss(torch.zeros(8, 9, 16), normalise_targets(near_const, "batch"))) > 0.3
    healthy = torch.randn(32, 2, 9, 16, generator=gen)
    var_h, cov_h = variance_covariance(healthy)
    collapsed = torch.randn(1, 2, 9, 16, generator=gen).expand(32, -1, -1, -1)  # same for every sample
    var_c, _ = variance_covariance(collapsed + torch.randn(1, 1, 9, 1))  # a position-only signal does not help
    correlated = torch.randn(32, 2, 9, 1, generator=gen).expand(-1, -1, -1, 16)  # one direction repeated
    _, cov_c = variance_covariance(correlated)
    assert float(var_h) < 0.1 and float(var_c) > 0.95 and float(cov_c) > 10 * float(cov_h)
    with pytest.raises(ValueError, match="target_norm"):
        JepaConfig(target_norm="none")
