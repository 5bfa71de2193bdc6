"""Property-based fuzzing of item JSON through parsing, the manifest and the planner: no crash, only rejects."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.catalog.manifest import Manifest, manifest_rows
from pipeline.catalog.search import parse_item
from pipeline.ingest.grid import ChipGrid, plan_chips

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

AREA = (13.70, 48.21, 13.74, 48.235)
GRID = ChipGrid(480.0, align_m=10.0)
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=12), st.lists(st.floats(allow_nan=True), max_size=6),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))  # fmt: skip
FIELDS = ("datetime", "start_datetime", "end_datetime", "proj:code", "proj:epsg", "eo:cloud_cover", "updated",
          "s2:processing_baseline")  # fmt: skip
PATHS = ("id", "bbox", "geometry", "geometry.type", "geometry.coordinates", "assets", "properties", "collection",
         "stac_version", "type")  # fmt: skip


def _set(item: dict, path: str, value: object) -> None:
    node = item
    *parents, last = path.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            return
        node = node[p]
    node[last] = value


mutation = st.one_of(
    st.tuples(st.just("prop"), st.sampled_from(FIELDS), JUNK),
    st.tuples(st.just("prop"), st.sampled_from(("datetime", "start_datetime", "end_datetime")),
              st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat())),
    st.tuples(st.just("set"), st.sampled_from(PATHS), JUNK),
    st.tuples(st.just("del"), st.sampled_from(PATHS + tuple(f"properties.{f}" for f in FIELDS)), st.none()),
    st.tuples(st.just("bbox"), st.just("bbox"), st.lists(st.floats(-400, 400), min_size=4, max_size=4)),
)


def _mutate(item: dict, steps: list[tuple[str, str, object]]) -> dict:
    out = copy.deepcopy(item)
    for kind, path, value in steps:
        if kind == "prop" and isinstance(out.get("properties"), dict):
            out["properties"][path] = value
        elif kind == "set":
            _set(out, path, value)
        elif kind == "del":
            node, *rest = path.split(".")
            target = out.get(node) if rest else out
            if isinstance(target, dict):
                target.pop(rest[0] if rest else node, None)
        elif kind == "bbox":
            w, s, e, n = value  # type: ignore[misc]
            out["bbox"] = [w, s, e, n]
            out["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return out


@pytest.fixture(scope="module")
def base_item(sample_items) -> dict:
    _, rows = sample_items("sentinel-2-l2a")
    return next(r for r in rows if r["id"].endswith("_87_48"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_items_never_crash_the_manifest_or_the_planner(base_item: dict, steps) -> None:
    raw = json.loads(json.dumps(_mutate(base_item, steps), allow_nan=True))
    item, (item_id, why) = parse_item(raw)
    if item is None:
        assert why.startswith("not a valid STAC item")  # recorded as invalid_item by the run
        return
    rows = manifest_rows({"s2": [item]})
    manifest = Manifest("fuzz", "memory://fuzz", rows, tuple(rows.attrs.get("conflicts", ())))
    plans, rejects = plan_chips(manifest, grid=GRID, area=AREA, required=("s2",), max_dates={"s2": 4},
                                time_range=(datetime(2017, 6, 1, tzinfo=timezone.utc),
                                            datetime(2017, 6, 30, 23, 59, 59, tzinfo=timezone.utc)))  # fmt: skip
    assert plans or rejects, "an item must become a chip or a reject, never vanish"
    for r in rejects:
        assert r.kind and r.subject and r.reason


def test_an_item_whose_collection_is_not_a_string_is_an_invalid_item(base_item: dict) -> None:
    """Found by the fuzzing above (`collection: [0.0]` passed pystac and crashed the manifest's de-duplication)."""
    item, (item_id, why) = parse_item(_mutate(base_item, [("set", "collection", [0.0])]))
    assert item is None and item_id == base_item["id"]
    assert why == "not a valid STAC item: ValueError: its collection is [0.0], not a string"
    kept, _ = parse_item(_mutate(base_item, [("del", "collection", None)]))  # absent is allowed (STAC: optional)
    assert kept is not None and manifest_rows({"s2": [kept]})["collection"].tolist() == [""]
