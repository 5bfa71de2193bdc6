"""Contract tests of the AnySat encoder: every modality forward and backward, shapes, masks, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from anysat import OFFICIAL_MODALITIES, AnySat, AnySatConfig
from anysat.model import _valid_mask

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def _input(key: str, *, b: int = 2, t: int = 3, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A tile of 60 m (or 4 px for modis) for one modality."""
    mod = OFFICIAL_MODALITIES[key]
    if mod.tile_token:
        return {key: torch.randn(b, t, mod.channels, 4, 4, generator=gen), f"{key}_dates": torch.tensor([[5, 90, 200]] * b)}
    side = round(60 / mod.res_m)
    if mod.temporal:
        return {key: torch.randn(b, t, mod.channels, side, side, generator=gen),
                f"{key}_dates": torch.tensor([[5.0, 90.0, 200.0]] * b)}  # fmt: skip
    return {key: torch.randn(b, mod.channels, side, side, generator=gen)}


@pytest.fixture(scope="module")
def tiny() -> AnySat:
    torch.manual_seed(0)
    return AnySat(AnySatConfig(size="tiny"))


@pytest.mark.parametrize("key", [k for k in OFFICIAL_MODALITIES if k != "modis"])
def test_every_modality_forward_backward_no_nan_and_gradients(tiny: AnySat, key: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = _input(key, gen=gen)
    patch = 30 if OFFICIAL_MODALITIES[key].res_m == 30 else 20
    tiny.zero_grad()
    y = tiny(x, patch, "patch")
    n = 60 // patch
    assert y.shape == (2, n, n, 256) and torch.isfinite(y).all(), "Output included NaNs"
    y.square().mean().backward()
    used = {name for name, _ in tiny.named_parameters() if not name.startswith("projectors.") or f".{key}." in name}
    missing = [name for name, p in tiny.named_parameters() if name in used and p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all())]  # fmt: skip
    assert missing == [], f"no gradient for {missing}"


def test_modis_gives_a_tile_token_beside_a_grid_modality(tiny: AnySat) -> None:
    gen = torch.Generator().manual_seed(2)
    x = _input("s2", gen=gen) | {"modis": torch.randn(2, 3, 7, 2, 2, generator=gen),
                                 "modis_dates": torch.tensor([[5, 90, 200]] * 2)}  # fmt: skip
    with torch.no_grad():
        assert tiny(x, 20, "all").shape == (2, 1 + 9, 256)


def test_output_shapes_on_a_real_bigearthnet_pair(tiny: AnySat) -> None:
    s2 = next((SAMPLES / "bigearthnet" / "BigEarthNet-S2-Example").glob("*_87_48"))
    s1 = next((SAMPLES / "bigearthnet" / "BigEarthNet-S1-Example").glob("*_87_48"))
    bands = []
    for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"):
        a = rasterio.open(next(s2.glob(f"*_{b}.tif"))).read(1).astype(np.float32)
        bands.append(np.kron(a, np.ones((2, 2), np.float32)) if a.shape[0] == 60 else a)
    s2x = torch.from_numpy(np.stack(bands)[None, None, :, :60, :60] / 1e4)
    s1x = torch.from_numpy(np.stack([rasterio.open(next(s1.glob(f"*_{p}.tif"))).read(1) for p in ("VV", "VH")])
                           [None, None, :, :60, :60] / 10.0)  # fmt: skip
    x = {"s2": s2x, "s2_dates": torch.tensor([[164.0]]), "s1-asc": s1x, "s1-asc_dates": torch.tensor([[164.0]])}
    with torch.no_grad():
        assert tiny(x, 20, "tile").shape == (1, 256)
        assert tiny(x, 20, "patch").shape == (1, 30, 30, 256)
        assert tiny(x, 60, "all").shape == (1, 1 + 100, 256)
        assert tiny(x, 20, "dense", "s2").shape == (1, 60, 60, 512)
        assert tiny(x, 20, "dense", "s1-asc").shape == (1, 60, 60, 512)


def test_masked_dates_and_pixels_do_not_influence_the_output(tiny: AnySat) -> None:
    gen = torch.Generator().manual_seed(3)
    x = _input("s2", b=1, t=4, gen=gen) | {"s2_dates": torch.tensor([[10.0, 80.0, 150.0, 300.0]])}
    x["s2_mask"] = torch.tensor([[True, True, False, True]])
    valid = torch.ones(1, 4, 6, 6, dtype=torch.bool)
    valid[0, 0, :3, :3] = False  # clouds on the first date, top-left
    x["s2_valid"] = valid
    tiny.eval()
    with torch.no_grad():
        ref = tiny(x, 20, "patch")
        changed = dict(x)
        s2 = x["s2"].clone()
        s2[0, 2] = 1e3  # the masked date
        s2[0, 0, :, :3, :3] = -1e3  # the cloudy pixels
        changed["s2"] = s2
        changed["s2_dates"] = torch.tensor([[10.0, 80.0, 333.0, 300.0]])
        assert torch.allclose(tiny(changed, 20, "patch"), ref, atol=1e-5)
        s2[0, 1, :, 4, 4] += 1.0  # an unmasked value does change it
        assert not torch.allclose(tiny(changed, 20, "patch"), ref, atol=1e-5)


def test_a_padded_batch_equals_each_sample_alone(tiny: AnySat) -> None:
    gen = torch.Generator().manual_seed(4)
    short = _input("s2", b=1, t=2, gen=gen) | {"s2_dates": torch.tensor([[30.0, 60.0]])}
    long = _input("s2", b=1, t=4, gen=gen) | {"s2_dates": torch.tensor([[20.0, 40.0, 200.0, 220.0]])}
    padded = torch.zeros(2, 4, 10, 6, 6)
    padded[0, :2], padded[1] = short["s2"][0], long["s2"][0]
    batch = {"s2": padded, "s2_dates": torch.tensor([[30.0, 60.0, 0.0, 0.0], [20.0, 40.0, 200.0, 220.0]]),
             "s2_mask": torch.tensor([[True, True, False, False], [True] * 4])}  # fmt: skip
    with torch.no_grad():
        both = tiny(batch, 20, "all")
        assert torch.allclose(both[0], tiny(short, 20, "all")[0], atol=1e-5)
        assert torch.allclose(both[1], tiny(long, 20, "all")[0], atol=1e-5)


def test_chunked_ltae_equals_unchunked_and_checkpointing_keeps_values() -> None:
    torch.manual_seed(5)
    a = AnySat(AnySatConfig(size="tiny", modalities=("s2",), ltae_chunk_pixels=7)).eval()
    b = AnySat(AnySatConfig(size="tiny", modalities=("s2",), ltae_chunk_pixels=100000,
                            grad_checkpointing=True)).eval()  # fmt: skip
    b.load_state_dict(a.state_dict())
    gen = torch.Generator().manual_seed(6)
    x = _input("s2", gen=gen)
    ya, yb = a(x, 20, "patch"), b(x, 20, "patch")
    assert torch.allclose(ya, yb, atol=1e-5)
    ya.sum().backward()
    yb.sum().backward()
    ga = a.projectors["s2"].patch_embed.inconv[0].weight.grad
    gb = b.projectors["s2"].patch_embed.inconv[0].weight.grad
    assert float((ga - gb).abs().max()) <= 1e-4 * float(ga.abs().max())


def test_bf16_autocast_runs(tiny: AnySat) -> None:
    gen = torch.Generator().manual_seed(7)
    x = _input("s2", gen=gen) | _input("aerial", gen=gen)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = tiny(x, 20, "patch")
    assert torch.isfinite(y.float()).all() and y.shape == (2, 3, 3, 256)


def test_save_load_round_trip_is_bit_identical(tiny: AnySat, tmp_path: Path) -> None:
    from anysat import load

    cfg = AnySatConfig(size="tiny", modalities=("s2", {"key": "neon", "bands": ["R", "G", "B"], "res_m": 0.1,
                                                       "temporal": False, "subpatch_px": 20}))  # fmt: skip
    model = AnySat(cfg).eval()
    out = model.save(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    back = load(str(out)).eval()
    assert back.config == model.config
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x = _input("s2", gen=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(model(x, 20, "tile"), back(x, 20, "tile"))


def test_valid_mask_shapes_are_checked() -> None:
    x = {"s2": torch.zeros(1, 2, 10, 4, 4), "s2_mask": torch.ones(1, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"s2_mask must be \[B, T\]"):
        _valid_mask(x, "s2")
