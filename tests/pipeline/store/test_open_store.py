"""Stores a GIS user can open: `open_store` over every committed shard, chips that rioxarray places where the
source raster says they are, dates as datetimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rioxarray  # noqa: F401 - registers the .rio accessor
from rasterio.windows import from_bounds

import pipeline
from pipeline.errors import StoreError
from pipeline.ingest.chips import SensorSpec, load_chip
from pipeline.ingest.grid import ChipPlan
from pipeline.store.shards import StoreLayout, write_shard
from pipeline.store.superseded import append_superseded

S2 = SensorSpec("s2", ("B02", "B04", "B11"), ("B2", "B4", "B11"), 10.0, scale=1e-4, harmonize_s2=True)


def _s2_items(catalog_files) -> dict[str, pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == "sentinel-2-l2a" and p.suffix == ".ndjson")
    return {i.id: i for i in (pystac.Item.from_dict(json.loads(x)) for x in path.read_text().splitlines())}


def _chip(item: pystac.Item, dx: float, dy: float, name: str):
    t = item.assets["B02"].extra_fields["proj:transform"]
    bounds = (t[2] + dx, t[5] - dy - 320, t[2] + dx + 320, t[5] - dy)  # 32 x 32 px at 10 m
    epsg = int(str(item.properties["proj:code"]).removeprefix("EPSG:"))
    chip, rejects = load_chip(ChipPlan(name, epsg, bounds, 0.0, 0.0, {"s2": (item.id,)}), {item.id: item}, {"s2": S2})
    assert chip is not None and rejects == []
    return chip


@pytest.fixture
def store(tmp_path: Path, catalog_files):
    a = next(iter(_s2_items(catalog_files).values()))
    chips = [[_chip(a, 0, 0, "a0"), _chip(a, 480, 160, "a1")], [_chip(a, 240, 640, "b0")]]  # three places
    layout = StoreLayout(str(tmp_path / "ds"), max_dates={"s2": 2})
    for k, shard in enumerate(chips):
        write_shard(shard, layout=layout, shard_id=f"shard-{k}")
    return layout.url, {c.chip_id: (c, a) for cs in chips for c in cs}


def test_a_stored_chip_is_placed_by_rioxarray_where_the_source_window_is(store) -> None:
    url, chips = store
    tree = pipeline.open_store(url)
    assert sorted(tree["s2"]["chip"].values.tolist()) == sorted(chips)
    assert tree["s2"]["dates"].dtype.kind == "M" and tree["s2"]["x"].dims == ("chip", "x")
    for chip_id, (chip, item) in chips.items():
        one = pipeline.chip_dataset(tree, chip_id, "s2")
        with rasterio.open(item.assets["B02"].href.removeprefix("file://")) as src:
            window = from_bounds(*chip.bounds, transform=src.transform)
            expected_transform, expected_crs = src.window_transform(window), src.crs
            pixels = src.read(1, window=window)
        assert one.rio.crs == expected_crs
        assert one["data"].rio.transform() == expected_transform
        assert one.rio.bounds() == pytest.approx(chip.bounds)
        stored = one["data"].sel(band="B2").values[0]  # uint16 DN + 1000 decoded by xarray (CF) in float64
        np.testing.assert_array_equal(stored.astype(np.float32), pixels * np.float32(1e-4))
        assert one["time"].dtype == np.dtype("datetime64[ns]") and one.sizes["time"] == 1  # padding dropped
        assert one["time"].values[0] == np.datetime64(item.datetime.replace(tzinfo=None), "ns")
        assert one["data"].attrs["grid_mapping"] == "spatial_ref"


def test_open_store_drops_superseded_chips_and_names_unknown_ones(store) -> None:
    url, chips = store
    append_superseded(url, [{"chip_id": "a1", "shard_id": "shard-0", "cell": "x", "superseded_by": "a9",
                             "run_id": "r"}])  # fmt: skip
    tree = pipeline.open_store(url)
    assert sorted(tree["s2"]["chip"].values.tolist()) == ["a0", "b0"]
    assert tree["s2"]["shard"].values.tolist() == ["shard-0", "shard-1"]
    assert sorted(tree["chips"]["chip"].values.tolist()) == ["a0", "b0"]
    with pytest.raises(StoreError, match="chip 'a1' is not in the store"):
        pipeline.chip_dataset(tree, "a1", "s2")
    with pytest.raises(StoreError, match="modality 's9' is not in the store"):
        pipeline.chip_dataset(tree, "a0", "s9")


def test_shards_in_different_crs_are_refused(tmp_path: Path, catalog_files) -> None:
    by_zone: dict[str, pystac.Item] = {}
    for item in _s2_items(catalog_files).values():
        by_zone.setdefault(str(item.properties["proj:code"]), item)
    a, b = list(by_zone.values())[:2]  # two BigEarthNet patches in two UTM zones
    layout = StoreLayout(str(tmp_path / "ds"))
    write_shard([_chip(a, 0, 0, "a")], layout=layout, shard_id="shard-0")
    write_shard([_chip(b, 0, 0, "b")], layout=layout, shard_id="shard-1")
    with pytest.raises(StoreError, match="do not share one CRS"):
        pipeline.open_store(layout.url)
    with pytest.raises(StoreError, match="must share a CRS"):
        write_shard([_chip(a, 0, 0, "a"), _chip(b, 0, 0, "b")], layout=layout, shard_id="shard-2")


def test_an_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        pipeline.open_store(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no committed shard"):
        pipeline.open_store(str(tmp_path / "empty"))


@pytest.fixture(scope="module")
def stac_url(tmp_path_factory: pytest.TempPathFactory, catalog_files):
    """A STAC API alone (the stack's own server) over the sample catalogs, for one real ingestion."""
    from infra.local.stack import LocalStack, StackConfig

    stack = LocalStack(StackConfig(state_dir=tmp_path_factory.mktemp("stac"), services=("stac",),
                                   stac_hrefs=tuple(catalog_files)))  # fmt: skip
    try:
        yield stack.up()["STAC_API_URL"]
    finally:
        stack.down()


@pytest.mark.stack
def test_open_store_returns_every_chip_of_the_ingested_demo_store(stac_url: str, tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.run import run_ingest
    from pipeline.store.shards import read_index

    config = load_config(IngestConfig, Path(__file__).resolve().parents[3] / "configs" / "ingest-demo.yaml",
                         [f"store={tmp_path / 'demo'}", "quicklooks=0", "chips_per_shard=1"])  # fmt: skip
    summary = run_ingest(config, stac_url=stac_url, use_ray=False)
    index = read_index(StoreLayout(config.store))
    tree = pipeline.open_store(config.store)
    expected = sorted(c for ids in index["chip_ids"] for c in ids)
    assert len(expected) == summary.chips_written >= 2 and len(index) >= 2
    for group in ("s2", "s1", "chips"):
        assert sorted(tree[group]["chip"].values.tolist()) == expected
    s1 = pipeline.chip_dataset(tree, expected[-1], "s1")
    assert s1.rio.crs.to_epsg() == int(expected[-1].split("_")[0]) and s1["data"].dtype == np.float32
    assert s1.rio.transform().a == 10.0 and s1["time"].dtype.kind == "M"
    # what `make demo` prints opens as printed (the Makefile's line, with this test's store for the demo's)
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    line = next(x for x in (root / "Makefile").read_text().splitlines() if "open_store(" in x)
    code = re.search(r'-c \\"(.+?)\\"', line).group(1).replace("$(CURDIR)/out/demo-dataset", config.store)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0 and "DataTree" in out.stdout and "/s2" in out.stdout, out.stderr[-2000:]
