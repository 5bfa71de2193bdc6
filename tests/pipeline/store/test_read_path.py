"""The read path never writes: a store without `shards.parquet` is read from its commit markers, in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.records import Chip, ModalityArray
from pipeline.store.shards import StoreLayout, read_index, write_shard


def _chip(chip_id: str) -> Chip:
    data = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    mod = ModalityArray(data, np.ones((1, 4, 4), bool), np.array(["2020-01-01"], "datetime64[s]"), ("i",),
                        ("a", "b"), 10.0)  # fmt: skip
    return Chip(chip_id, 32633, (0.0, -40.0, 40.0, 0.0), 0.0, 0.0, {"s2": mod})


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_read_index_lists_markers_without_writing(tmp_path: Path) -> None:
    layout = StoreLayout(str(tmp_path / "ds"))
    write_shard([_chip("a")], layout=layout, shard_id="shard-00000")
    write_shard([_chip("b")], layout=layout, shard_id="shard-00001")
    before = _tree(tmp_path / "ds")
    index = read_index(layout)  # what training calls
    assert sorted(index["shard_id"]) == ["shard-00000", "shard-00001"]
    assert _tree(tmp_path / "ds") == before  # no shards.parquet written by a reader (read-only credentials work)
