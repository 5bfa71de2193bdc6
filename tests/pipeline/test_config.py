"""Job configs: YAML + overrides into typed dataclasses, strictly validated, every error naming its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelops.pretrain_config import PretrainConfig
from pipeline.config import ConfigError, load_config, to_dict, to_yaml
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
        ("colour=red", r"^IngestConfig: unknown key 'colour'; valid keys are \['bbox', "),
        ("grid.chip_size_m=475", r"^IngestConfig.grid: chip_size_m 475.0 must be a multiple of align_m"),
        ("chips_per_shard=zero", r"^IngestConfig.chips_per_shard: expected an integer, got 'zero'$"),
        ("chips_per_shard=yes", r"^IngestConfig.chips_per_shard: expected an integer, got True"),
        ("chips_per_shard=2.0", r"^IngestConfig.chips_per_shard: expected an integer, got 2.0$"),
        ("sensors.0.res_m='10'", r"^IngestConfig.sensors.0.res_m: expected a number, got '10'$"),
        ("sensors.0.harmonize_s2=1", r"^IngestConfig.sensors.0.harmonize_s2: expected true or false, got 1$"),
        ("datetime='2017-06-01'", r"^IngestConfig.datetime: expected an RFC 3339 date-time"),
        ("datetime=2017-06-01", r"^IngestConfig.datetime: expected an RFC 3339 date-time"),
        ("datetime=../..", r"^IngestConfig.datetime: an interval needs at least one closed end"),
        ("sensors.0.sign=azure", r"^IngestConfig.sensors.0: .*planetary-computer"),
        ("sensors.0.max_cloud_cover=120", r"^IngestConfig.sensors.0: .*max_cloud_cover is a percentage"),
        ("grid.align_m=5", "coarsest GSD"),
        ("bbox=[1, 2, 3]", r"^IngestConfig.bbox: expected 4 numbers"),
        ("bbox=[13, 48, 14, 95]", r"^IngestConfig.bbox: .* outside \[-180, 180\] x \[-90, 90\]"),
        ("grid.chip_size_m", r"must look like key.sub=value"),
        ("sensors.9.res_m=1", r"sensors is a list of 2 items"),
    ],
)
def test_bad_values_are_explained(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml", [override])


def test_every_problem_is_listed_with_its_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "ingest-demo.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        load_config(IngestConfig, bad, ["chips_per_shard=yes", "sensors.1.max_dates=two", "page_size=null"])
    assert str(err.value).splitlines() == [
        "IngestConfig.sensors.1.max_dates: expected an integer, got 'two'",
        "IngestConfig.chips_per_shard: expected an integer, got True (YAML reads yes/no/on/off/true/false as booleans)",
        "IngestConfig.page_size: expected an integer, got None"]


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("bbox: [1, 2, 3, 4]\nsensors:\n  - modality: s2\n   collection: x\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:4:\d+: "):
        load_config(IngestConfig, bad)
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        load_config(IngestConfig, tmp_path / "missing.yaml")


def test_yaml_dates_stay_text_and_open_intervals_pass() -> None:
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         ["datetime=2017-06-01T00:00:00Z/..", "bbox=[13.7, 48.21, 13.74, 48.235]"])  # fmt: skip
    assert config.datetime == "2017-06-01T00:00:00Z/.."
    assert yaml.safe_load(to_yaml(config))["datetime"] == "2017-06-01T00:00:00Z/.."


def test_a_pretraining_config_declares_a_new_sensor() -> None:
    sensor = "{key: hyper, bands: [b1, b2, b3], res_m: 5, temporal: false, subpatch_px: 2}"
    config = load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml",
                         [f"model.modalities=[s2, s1-asc, {sensor}]"])  # fmt: skip
    hyper = config.model.anysat().table["hyper"]
    assert (hyper.bands, hyper.res_m, hyper.temporal, hyper.subpatch_px) == (("b1", "b2", "b3"), 5.0, False, 2)
    with pytest.raises(ConfigError, match=r"^PretrainConfig.model.modalities.2.res_m: expected a number, got 'x'"):
        load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml",
                    [f"model.modalities=[s2, s1-asc, {sensor.replace('res_m: 5', 'res_m: x')}]"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"modalities.2: unknown key 'colour'; valid keys are \['bands'"):
        load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml",
                    [f"model.modalities=[s2, s1-asc, {sensor.replace('key:', 'colour: red, key:')}]"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"^PretrainConfig.run.workers: expected an integer, got True"):
        load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml", ["run.workers=yes"])
