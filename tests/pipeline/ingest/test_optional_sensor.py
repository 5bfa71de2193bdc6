"""`required: false` sensors: a chip is kept without an optional modality, and shards without it still load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pystac
import torch

from pipeline.ingest.chips import SensorSpec, load_chip
from pipeline.ingest.grid import ChipPlan
from pipeline.ingest.run import write_quicklooks
from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches
from pipeline.store.records import Chip
from pipeline.store.shards import StoreLayout, rebuild_index, write_shard
from pipeline.store.stats import DB_RANGE, REFLECTANCE_RANGE, chip_stats, stats_to_json

S2 = SensorSpec("s2", ("B02", "B03", "B04"), ("B2", "B3", "B4"), 10.0, scale=1e-4, harmonize_s2=True)
S1 = SensorSpec("s1", ("vv", "vh"), ("VV", "VH"), 10.0, to_db=True, nodata=None, required=False)


def _items(catalog_files, collection: str) -> dict[str, pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return {i.id: i for i in (pystac.Item.from_dict(json.loads(x)) for x in path.read_text().splitlines())}


def _plan(chip_id: str, s2: pystac.Item, s1: pystac.Item, dx: float) -> ChipPlan:
    t = s2.assets["B02"].extra_fields["proj:transform"]
    bounds = (t[2] + dx, t[5] - 480, t[2] + dx + 480, t[5])
    return ChipPlan(chip_id, 32633, bounds, 0.0, 0.0, {"s2": (s2.id,), "s1": (s1.id,)})


def test_optional_modality_without_usable_item_keeps_the_chip_and_loads(catalog_files, tmp_path: Path) -> None:
    s2 = next(i for i in _items(catalog_files, "sentinel-2-l2a").values() if i.id.endswith("_87_48"))
    s1 = next(i for i in _items(catalog_files, "sentinel-1-rtc").values() if i.id.endswith("_87_48"))
    broken = s1.clone()
    broken.id = f"{s1.id}-gone"
    for asset in broken.assets.values():
        asset.href = "file:///nonexistent/s1.tif"
    items = {i.id: i for i in (s2, s1, broken)}
    sensors = {"s2": S2, "s1": S1}
    both, _ = load_chip(_plan("a-both", s2, s1, 0), items, sensors)
    alone, rejects = load_chip(_plan("b-alone", s2, broken, 480), items, sensors)
    assert isinstance(both, Chip) and set(both.modalities) == {"s2", "s1"}
    assert isinstance(alone, Chip) and set(alone.modalities) == {"s2"}  # kept without the optional S1
    assert [(r.kind, r.subject) for r in rejects] == [("href_not_found", broken.id), ("no_usable_item", "b-alone")]
    required = load_chip(_plan("c", s2, broken, 480), items, {"s2": S2, "s1": dataclasses.replace(S1, required=True)})
    assert required[0] is None  # a required modality still sinks the chip

    layout = StoreLayout(str(tmp_path / "ds"), max_dates={"s2": 1, "s1": 1})
    write_shard([alone], layout=layout, shard_id="shard-00000")  # first shard: no chip has s1
    write_shard([both], layout=layout, shard_id="shard-00001")
    stats = chip_stats([alone, both], {"s2": REFLECTANCE_RANGE, "s1": DB_RANGE})
    (tmp_path / "ds" / "stats.json").write_text(json.dumps(stats_to_json(stats)))
    index = rebuild_index(layout)
    config = LoaderConfig((DatasetSource(str(tmp_path / "ds")),), batch_size=2, patch_sizes_m=(40,),
                          shuffle_buffer=0, drop_last=False)  # fmt: skip
    batches = list(iter_batches(config))
    assert len(batches) == 1 and sorted(batches[0]["chip_id"]) == ["a-both", "b-alone"]
    batch = batches[0]
    row = batch["chip_id"].index("b-alone")
    assert batch["s1"].shape[1:] == (1, 2, 48, 48) and not batch["s1_mask"][row].any()
    assert batch["s1_mask"][1 - row].all() and torch.all(batch["s1"][row] == 0)
    pngs = write_quicklooks(layout, index, ["s2", "s1"], 2)
    assert len(pngs) == 2 and all(Path(p).stat().st_size > 0 for p in pngs)
