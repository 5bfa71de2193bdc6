"""Skipping masked pixel-dates in the L-TAE equals the masked computation, forward and backward, on the real
Colorado Landsat series with its own `fmask` cloud, shadow and fill masks (and padded dates)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from anysat import AnySat, AnySatConfig, Modality
from anysat.ltae import LTAE

SERIES = Path(__file__).resolve().parents[2] / "data" / "samples" / "landsat-timeseries-colorado"
INVALID_FMASK = (2, 4, 255)  # cloud shadow, cloud, fill (the qa_pixel bits 0, 3, 4 of configs/ingest-landsat.yaml)
LANDSAT = Modality("landsat", ("red", "nir08", "swir16"), 30.0, True)


def _scenes() -> list[Path]:
    """Scene folders in date order (the names encode sensor, path/row, year and day of year)."""
    scenes = [p for p in SERIES.iterdir() if re.match(r"L[ET]\d{14}", p.name)]
    return sorted(scenes, key=lambda p: p.name[9:16])


def colorado(start: int, t: int, crop: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dates start..start+t of the real series: x [1, T, 3, crop, crop] (reflectance, 0 at nodata),
    day of year [1, T], valid [1, T, crop, crop] (not cloud, shadow, fill or nodata)."""
    xs, valid, doy = [], [], []
    for scene in _scenes()[start : start + t]:
        bands = []
        for band in ("b3", "b4", "b5"):
            with rasterio.open(scene / f"{scene.name}_{band}.tif") as ds:
                bands.append(ds.read(1)[:crop, :crop])
        with rasterio.open(scene / f"{scene.name}_fmask.tif") as ds:
            fmask = ds.read(1)[:crop, :crop]
        sr = np.stack(bands)
        ok = ~np.isin(fmask, INVALID_FMASK) & (sr != -9999).all(axis=0)
        xs.append(np.where(sr == -9999, 0, sr).astype(np.float32) * 1e-4)
        valid.append(ok)
        doy.append(float(scene.name[13:16]))
    return torch.from_numpy(np.stack(xs))[None], torch.tensor([doy]), torch.from_numpy(np.stack(valid))[None]


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp(min=1e-30))


def _run(model: torch.nn.Module, skip: bool, x: torch.Tensor, call) -> tuple[torch.Tensor, torch.Tensor, dict]:  # noqa: ANN001
    """Output, input gradient and parameter gradients of a fixed weighted sum of the output."""
    for m in model.modules():
        if isinstance(m, LTAE):
            m.skip_masked = skip
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = call(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return y.detach(), x.grad.detach().clone(), grads


def _assert_equal(a: tuple, b: tuple, tol: float) -> None:
    """Output and input gradient ≤ tol relative; parameter gradients ≤ tol relative to each tensor's norm, or
    to the largest gradient for tensors whose gradient vanishes mathematically (e.g. the key bias, which
    shifts every date's score equally)."""
    assert _rel(b[0], a[0]) <= tol
    assert _rel(b[1], a[1]) <= tol
    assert set(a[2]) == set(b[2])
    scale = max(float(g.norm()) for g in a[2].values())
    for name, g in a[2].items():
        ref = float(g.norm()) if float(g.norm()) > 1e-4 * scale else scale
        assert float((b[2][name] - g).norm()) <= tol * ref, name


@pytest.fixture(scope="module")
def cloudy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, doy, valid = colorado(24, 24)
    share = 1 - float(valid.float().mean())
    assert 0.3 < share < 0.7, share  # the real masks of these 24 dates leave about half the pixel-dates
    return x, doy, valid


@pytest.mark.parametrize("in_norm", [False, True], ids=["plain", "in_norm"])
def test_skipping_equals_masking_forward_and_backward_on_real_series(cloudy, in_norm: bool) -> None:
    x, doy, valid = cloudy
    torch.manual_seed(0)
    ltae = LTAE(3, 256, in_norm=in_norm)
    masked = _run(ltae, False, x, lambda v: ltae(v, doy, valid))
    skipped = _run(ltae, True, x, lambda v: ltae(v, doy, valid))
    _assert_equal(masked, skipped, 1e-5)
    assert float(masked[1][~valid[:, :, None].expand_as(x)].abs().max()) == 0.0  # masked inputs get no gradient
    assert float(skipped[1][~valid[:, :, None].expand_as(x)].abs().max()) == 0.0


def test_skipping_is_the_same_arithmetic_in_float64(cloudy) -> None:
    x, doy, valid = cloudy
    torch.manual_seed(1)
    ltae = LTAE(3, 64, in_norm=True).double()
    masked = _run(ltae, False, x.double(), lambda v: ltae(v, doy, valid))
    skipped = _run(ltae, True, x.double(), lambda v: ltae(v, doy, valid))
    _assert_equal(masked, skipped, 1e-12)


def test_pixels_without_a_valid_date_get_the_masked_output_chunked_and_checkpointed() -> None:
    x, doy, valid = colorado(12, 3)  # three cloudy dates: hundreds of pixels see no clear date
    empty = ~valid.any(dim=1)  # [1, H, W]
    assert 0 < int(empty.sum()) < empty.numel()
    torch.manual_seed(2)
    ltae = LTAE(3, 64, in_norm=True, chunk_pixels=100)
    masked = _run(ltae, False, x, lambda v: ltae(v, doy, valid))
    skipped = _run(ltae, True, x, lambda v: ltae(v, doy, valid, checkpoint=True))
    _assert_equal(masked, skipped, 1e-5)
    out = skipped[0].permute(0, 2, 3, 1)[empty]  # [n_empty, D]: one shared vector
    assert float((out - out[:1]).abs().max()) == 0.0
    with torch.no_grad():  # inference runs in chunks of 100 pixels on both paths
        ltae.skip_masked = True
        assert _rel(ltae(x, doy, valid), masked[0]) <= 1e-5


def test_only_valid_pixel_dates_are_computed_and_masked_values_are_never_read(cloudy) -> None:
    x, doy, valid = cloudy
    torch.manual_seed(3)
    ltae = LTAE(3, 64)
    rows: list[int] = []
    ltae.inconv[0].register_forward_hook(lambda _m, inp, _out: rows.append(inp[0].shape[0]))
    with torch.no_grad():
        ltae.skip_masked = False
        ref = ltae(x, doy, valid)
        dense_rows, rows[:] = sum(rows), []
        ltae.skip_masked = True
        poisoned = x.clone()
        poisoned[~valid[:, :, None].expand_as(x)] = float("nan")  # a masked value that would spread if read
        got = ltae(poisoned, doy, valid)
    assert dense_rows == x.shape[1] * x.shape[3] * x.shape[4]
    assert sum(rows) == int(valid.sum()) < 0.7 * dense_rows
    assert bool(torch.isfinite(got).all())
    assert _rel(got, ref) <= 1e-5


def test_model_with_padded_dates_and_cloud_masks_equal_with_and_without_skipping() -> None:
    """A batch of a 20-date and a 12-date series (padded), `<key>_mask` and `<key>_valid` combined."""
    long, doy_long, valid_long = colorado(40, 20, crop=12)
    short, doy_short, valid_short = colorado(70, 12, crop=12)
    t = 20
    x = torch.zeros(2, t, 3, 12, 12)
    x[0], x[1, :12] = long[0], short[0]
    doy = torch.zeros(2, t)
    doy[0], doy[1, :12] = doy_long[0], doy_short[0]
    valid = torch.ones(2, t, 12, 12, dtype=torch.bool)
    valid[0], valid[1, :12] = valid_long[0], valid_short[0]
    dates = torch.tensor([[True] * t, [True] * 12 + [False] * (t - 12)])
    torch.manual_seed(4)
    model = AnySat(AnySatConfig(size="tiny", modalities=(LANDSAT,)))

    def call(v: torch.Tensor) -> torch.Tensor:
        batch = {"landsat": v, "landsat_dates": doy, "landsat_mask": dates, "landsat_valid": valid}
        return model(batch, 120, "all")

    _assert_equal(_run(model, False, x, call), _run(model, True, x, call), 1e-5)
