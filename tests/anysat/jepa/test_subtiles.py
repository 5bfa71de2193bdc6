"""The sub-tile contrast: quadrant split of the batch contract, and its InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch

from anysat import AnySat, AnySatConfig
from anysat.jepa import Jepa, JepaConfig
from anysat.jepa.subtiles import ContrastHead, quadrants, subtile_nce


def _batch(b: int = 3, t: int = 2, side: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"s2": torch.randn(b, t, 10, side, side, generator=gen),
            "s2_dates": torch.tensor([[10, 200]] * b), "s2_mask": torch.tensor([[True, False]] * b),
            "s2_valid": torch.rand(b, t, side, side, generator=gen) > 0.1,
            "aerial": torch.randn(b, 4, side * 50, side * 50, generator=gen)}  # fmt: skip


def test_quadrants_are_the_four_corners_of_each_tile_quadrant_major() -> None:
    x = _batch()
    q = quadrants(x, ["s2", "aerial"], grid=3)  # odd grid: the last patch row/column is left out
    assert q["s2"].shape == (12, 2, 10, 4, 4) and q["s2_valid"].shape == (12, 2, 4, 4)
    assert q["aerial"].shape == (12, 4, 200, 200)
    assert torch.equal(q["s2_dates"], x["s2_dates"].repeat(4, 1))
    assert torch.equal(q["s2_mask"], x["s2_mask"].repeat(4, 1))
    # sample 1, quadrant 3 (bottom right) is rows/cols 4..8 of sample 1
    assert torch.equal(q["s2"][3 * 3 + 1], x["s2"][1, :, :, 4:8, 4:8])
    assert torch.equal(q["s2_valid"][2 * 3 + 0], x["s2_valid"][0, :, 4:8, 0:4])
    assert torch.equal(q["aerial"][1 * 3 + 2], x["aerial"][2, :, 0:200, 200:400])
    assert "aerial_valid" not in q and set(quadrants(x, ["s2"], grid=2)) == {"s2", "s2_dates", "s2_mask", "s2_valid"}
    with pytest.raises(ValueError, match="at least 2x2 patches"):
        quadrants(x, ["s2"], grid=1)


def test_subtile_nce_rewards_telling_tiles_apart_and_scores_a_constant_at_chance() -> None:
    b, d = 8, 16
    gen = torch.Generator().manual_seed(0)
    places = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=-1)
    apart = places.repeat(4, 1)  # the quadrants of a tile agree, tiles differ
    constant = places[:1].expand(4 * b, d)
    assert float(subtile_nce(apart, b, temperature=0.1)) < 0.2 * math.log(31 / 3)
    assert abs(float(subtile_nce(constant, b)) - math.log(31 / 3)) < 1e-4
    shuffled = apart[torch.randperm(4 * b, generator=gen)]  # quadrants no longer sit with their own tile
    assert float(subtile_nce(shuffled, b)) > float(subtile_nce(apart, b)) + 1.0
    assert ContrastHead(32)(torch.randn(5, 32)).norm(dim=-1).allclose(torch.ones(5))


def test_jepa_with_the_contrast_trains_its_head_and_off_leaves_it_out() -> None:
    x = {k: v for k, v in _batch(b=4, side=8).items() if k.startswith("s2")}
    batch = {**x, "patch_size": 20}  # 8 px at 10 m, 20 m patches: a 4x4 grid, 2x2 per quadrant
    torch.manual_seed(0)
    jepa = Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2",))),
                JepaConfig(predictor_depth=1, tile_nce_weight=1.0))  # fmt: skip
    out = jepa(batch)
    assert out.loss_tile is not None and float(out.loss_tile) > 0
    out.loss.backward()
    assert jepa.contrast_head is not None and jepa.contrast_head.net[0].weight.grad is not None
    off = Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2",))), JepaConfig(predictor_depth=1, tile_nce_weight=0))
    assert off.contrast_head is None and float(off(batch).loss_tile) == 0.0
