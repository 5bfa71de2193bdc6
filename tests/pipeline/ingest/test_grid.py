"""Chip planning over the sample catalogs: complete chips, deterministic ids, date choice, rejects."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pystac
import pytest
from pyproj import Transformer
from shapely.geometry import box, shape

from pipeline.ingest.grid import ChipGrid, plan_chips, utm_epsg
from pipeline.catalog.manifest import Manifest, manifest_rows


def _items(catalog_files: tuple[Path, ...], collection: str) -> list[pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return [pystac.Item.from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def _manifest(by_modality: dict[str, list[pystac.Item]]) -> Manifest:
    return Manifest("test", "memory://", manifest_rows(by_modality))


def test_utm_zones() -> None:
    assert utm_epsg(15.2, 48.2) == 32633 and utm_epsg(-105.0, 40.3) == 32613 and utm_epsg(18.0, -33.9) == 32734


def test_s2_s1_chips_lie_inside_both_footprints(catalog_files) -> None:
    s2, s1 = _items(catalog_files, "sentinel-2-l2a"), _items(catalog_files, "sentinel-1-rtc")
    area = tuple(s2[0].bbox)  # the 33UUP patch: one UTM zone, one S2 and one S1 item
    chips, rejects = plan_chips(_manifest({"s2": s2, "s1": s1}), grid=ChipGrid(480.0), area=area,
                                required=("s2", "s1"))  # fmt: skip
    assert len(chips) >= 1 and all(c.epsg == 32633 for c in chips)
    to_utm = Transformer.from_crs(4326, 32633, always_xy=True).transform
    from shapely.ops import transform

    s2_fp = transform(to_utm, shape(s2[0].geometry))
    for chip in chips:
        cell = box(*chip.bounds)
        assert cell.bounds[2] - cell.bounds[0] == 480 and chip.bounds[0] % 10 == 0
        assert s2_fp.buffer(1e-6).contains(cell)
        assert chip.items == {"s2": (s2[0].id,), "s1": (s1[0].id,)}
        assert chip.chip_id == f"32633_{int(chip.bounds[0])}_{int(chip.bounds[1])}_480"
    far = {r.subject for r in rejects if r.kind == "outside_area"}
    assert far == {i.id for i in s2[1:] + s1[1:]}  # the other places are recorded, not dropped silently
    again, _ = plan_chips(_manifest({"s1": s1, "s2": s2}), grid=ChipGrid(480.0), area=area, required=("s2", "s1"))
    assert again == chips


def test_landsat_dates_capped_by_cloud_cover_then_sorted_by_date(catalog_files) -> None:
    ls = _items(catalog_files, "landsat-c2-l2")
    area = tuple(ls[0].bbox)
    chips, rejects = plan_chips(_manifest({"landsat": ls}), grid=ChipGrid(900.0, align_m=30.0), area=area,
                                required=("landsat",), max_dates={"landsat": 8},
                                time_range=(datetime(2009, 1, 1, tzinfo=timezone.utc),
                                            datetime(2010, 12, 31, tzinfo=timezone.utc)))  # fmt: skip
    assert chips
    covers = {i.id: i.properties["eo:cloud_cover"] for i in ls}
    dates = {i.id: i.properties["datetime"] for i in ls}
    in_range = [i.id for i in ls if "2009" <= dates[i.id][:4] <= "2010"]
    for chip in chips:
        picked = chip.items["landsat"]
        assert len(picked) == 8 and list(picked) == sorted(picked, key=lambda i: dates[i])
        worst_picked = max(covers[i] for i in picked)
        assert all(covers[i] >= worst_picked for i in in_range if i not in picked)
    assert sum(r.kind == "dates_out_of_range" for r in rejects) == len(ls) - len(in_range)


def test_bad_geometry_is_rejected_with_a_reason(catalog_files) -> None:
    s2 = _items(catalog_files, "sentinel-2-l2a")[:1]
    broken = s2[0].clone()
    broken.id = "broken"
    broken.geometry = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}  # bow-tie
    chips, rejects = plan_chips(_manifest({"s2": s2 + [broken]}), grid=ChipGrid(600.0), area=tuple(s2[0].bbox),
                                required=("s2",))  # fmt: skip
    assert chips and [r.kind for r in rejects if r.subject == "broken"] == ["invalid_geometry"]
    with pytest.raises(ValueError, match="multiple of align_m"):
        ChipGrid(500.0, align_m=30.0)
