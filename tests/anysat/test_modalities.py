"""The modality table: official keys, sensors added by configuration, and clear input errors."""

from __future__ import annotations

import pytest
import torch

from anysat import OFFICIAL_MODALITIES, AnySat, AnySatConfig, Modality, check_inputs


def test_official_keys_and_facts() -> None:
    assert list(OFFICIAL_MODALITIES) == ["aerial", "aerial-flair", "spot", "naip", "s2", "s1-asc", "s1", "alos",
                                         "l7", "l8", "modis"]  # fmt: skip
    s2 = OFFICIAL_MODALITIES["s2"]
    assert s2.channels == 10 and s2.temporal and s2.in_norm and s2.res_m == 10
    assert OFFICIAL_MODALITIES["aerial"].subpatch_m == pytest.approx(2.0)
    assert OFFICIAL_MODALITIES["naip"].subpatch_m == pytest.approx(10.0)
    assert OFFICIAL_MODALITIES["l8"].doy_period == 366 and OFFICIAL_MODALITIES["l7"].reduce_scale == 3


def test_sensors_added_by_configuration_run_without_code_changes() -> None:
    sensors = [
        {"key": "vhr06", "bands": ["R", "G", "B"], "res_m": 0.6, "temporal": False, "subpatch_px": 5},  # 3 m tokens
        {"key": "neon", "bands": ["R", "G", "B"], "res_m": 0.1, "temporal": False, "subpatch_px": 20},
        {"key": "landsat", "bands": ["red", "nir08", "swir16"], "res_m": 30.0, "temporal": True},
    ]
    cfg = AnySatConfig.from_dict({"size": "tiny", "modalities": sensors})
    model = AnySat(cfg).eval()
    with torch.no_grad():
        y = model({"vhr06": torch.randn(1, 3, 100, 100)}, 30, "patch")
        assert y.shape == (1, 2, 2, 256)
        y = model({"neon": torch.randn(1, 3, 400, 400)}, 20, "dense")
        assert y.shape == (1, 20, 20, 512)
        y = model({"landsat": torch.randn(1, 5, 3, 6, 6), "landsat_dates": torch.tensor([[10, 50, 90, 130, 170]])},
                  60, "tile")  # fmt: skip
        assert y.shape == (1, 256)


@pytest.mark.parametrize(
    ("x", "patch", "match"),
    [
        ({"s3": torch.zeros(1, 1, 3, 4, 4)}, 10, "unknown modality 's3'"),
        ({"s2": torch.zeros(1, 2, 13, 4, 4), "s2_dates": torch.zeros(1, 2)}, 10, r"C=10 .* got \[1, 2, 13, 4, 4\]"),
        ({"s2": torch.zeros(1, 2, 10, 4, 6), "s2_dates": torch.zeros(1, 2)}, 10, "square"),
        ({"s2": torch.zeros(1, 2, 10, 4, 4)}, 10, "s2_dates"),
        ({"s2": torch.zeros(1, 1, 10, 4, 4), "s2_dates": torch.zeros(1, 1), "aerial": torch.zeros(1, 4, 100, 100)},
         10, "same ground extent"),
        ({"s2": torch.zeros(1, 1, 10, 6, 6), "s2_dates": torch.zeros(1, 1)}, 40, "does not divide"),
        ({"aerial": torch.zeros(1, 4, 100, 100)}, 15, "multiple of 10"),
        ({"l7": torch.zeros(1, 1, 6, 4, 4), "l7_dates": torch.zeros(1, 1)}, 20, "sub-patch grid"),
    ],
)
def test_input_errors_say_what_was_expected(x: dict, patch: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_inputs(x, OFFICIAL_MODALITIES, patch_size=patch)


def test_bad_modality_definitions() -> None:
    with pytest.raises(ValueError, match="unknown modality fields"):
        Modality.from_dict({"key": "x", "bands": ["a"], "res_m": 1, "temporal": False, "colour": "red"})
    with pytest.raises(ValueError, match="subpatch_px must be 1"):
        Modality("ts", ("a",), 10.0, True, subpatch_px=2)
    with pytest.raises(ValueError, match="unknown modality 'sentinel2'"):
        AnySatConfig(modalities=("sentinel2",))
    with pytest.raises(ValueError, match="twice"):
        AnySatConfig(modalities=("s2", "s2"))
