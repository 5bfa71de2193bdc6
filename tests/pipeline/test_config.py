"""Ingestion config: YAML + overrides into typed dataclasses, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config, to_dict
from pipeline.ingest.config import IngestConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("ingest*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(IngestConfig, path)
    ratio = config.grid.chip_size_m / config.grid.align_m
    assert config.sensors and abs(ratio - round(ratio)) < 1e-9


def test_overrides_types_and_round_trip() -> None:
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         ["chips_per_shard=5", "grid.chip_size_m=600", "sensors.0.max_dates=2", "store=s3://b/x"])  # fmt: skip
    assert config.chips_per_shard == 5 and config.grid.chip_size_m == 600.0 and config.sensors[0].max_dates == 2
    assert isinstance(config.bbox, tuple) and config.store == "s3://b/x"
    back = to_dict(config)
    assert back["sensors"][0]["assets"]["B02"] == "B2" and back["grid"]["chip_size_m"] == 600.0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("colour=red", r"unknown keys \['colour'\]; valid keys are"),
        ("grid.chip_size_m=475", "multiple of align_m"),
        ("chips_per_shard=zero", "expected int"),
        ("datetime='2017-06-01'", "interval"),
        ("datetime=2017-06-01", "expected str"),
        ("sensors.0.sign=azure", "planetary-computer"),
        ("grid.align_m=5", "coarsest GSD"),
    ],
)
def test_bad_values_are_explained(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml", [override])
