"""The Ray Data path of the loader on the session's Ray head (datasets of samples, worker-side batches, splits), and
both paths on an incrementally ingested store: every current chip exactly once, never a superseded one."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from infra.local.stack import LocalStack, StackConfig
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.incremental import run_incremental
from pipeline.ingest.run import run_ingest
from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches
from pipeline.errors import PipelineError
from pipeline.load.ray_loader import RayEpochs, ray_batches, ray_datasets
from pipeline.store.superseded import read_superseded
from pipeline.store.shards import StoreLayout, read_index

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def stores(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Landsat and demo stores on local disk, and a driver connected to the session's Ray head.

    `landsat` (25 chips, 4 a shard) and `landsat-5` (the same 25 chips, 5 a shard: 5 shards of 5, which no split into
    whole shards divides evenly) are the Landsat sample; `demo` the demo sample, one chip a shard.
    """
    import ray

    root = tmp_path_factory.mktemp("ray-loader-stores")
    for name, config, per_shard in (("landsat", "ingest-landsat.yaml", 4), ("landsat-5", "ingest-landsat.yaml", 5),
                                    ("demo", "ingest-demo.yaml", 1)):  # fmt: skip
        cfg = load_config(IngestConfig, ROOT / "configs" / config, [f"store={root / name}", "quicklooks=0",
                                                                    f"chips_per_shard={per_shard}"])  # fmt: skip
        run_ingest(cfg, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=stack_env["RAY_GCS_ADDRESS"], logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # this checkout's code in the head's workers
    try:
        yield {name: str(root / name) for name in ("landsat", "landsat-5", "demo")}
    finally:
        ray.shutdown()


def _chips(url: str) -> list[str]:
    return sorted(c for ids in read_index(StoreLayout(url))["chip_ids"] for c in ids)


def test_ray_batches_follow_the_contract_and_equal_the_plain_path(stores: dict[str, str]) -> None:
    config = LoaderConfig((DatasetSource(stores["landsat"]),), batch_size=4, patch_sizes_m=(30, 60),
                          shuffle_buffer=8, drop_last=False)  # fmt: skip
    datasets = ray_datasets(config)
    batches = list(ray_batches({"landsat": datasets["landsat"].iterator()}, config))
    plain = {c: (b["landsat"][i], b["landsat_valid"][i], b["landsat_dates"][i])
             for b in iter_batches(config) for i, c in enumerate(b["chip_id"])}  # fmt: skip
    ids = [c for b in batches for c in b["chip_id"]]
    assert sorted(ids) == _chips(stores["landsat"]) and sorted(ids) != ids  # every chip once, shuffled
    for b in batches:
        t = b["landsat"].shape[1]
        assert b["landsat"].dtype == torch.float32 and b["landsat"].shape[2:] == (3, 10, 10)
        assert b["landsat_dates"].dtype == torch.int64 and b["landsat_mask"].shape == (len(b["chip_id"]), t)
        assert b["patch_size"] in (30, 60) and b["dataset"] == "landsat"
        for i, chip in enumerate(b["chip_id"]):
            x, valid, dates = plain[chip]
            assert torch.equal(b["landsat"][i], x) and torch.equal(b["landsat_valid"][i], valid)
            assert torch.equal(b["landsat_dates"][i], dates)


def _run_ranks(consume: Callable[[int], Any], n: int = 2) -> list[Any]:
    """Run `consume(rank)` for `n` ranks in threads (as DDP workers consume their splits at once); return the
    results, re-raising a rank's error and failing if a rank hangs."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = consume(k)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a split consumer hung"
    assert not errors, errors
    return results


def test_streaming_split_gives_two_disjoint_streams_covering_every_chip(stores: dict[str, str]) -> None:
    config = LoaderConfig((DatasetSource(stores["landsat"]),), batch_size=3, patch_sizes_m=(30,), drop_last=False)
    splits = ray_datasets(config)["landsat"].streaming_split(2)
    seen = _run_ranks(lambda k: [c for b in ray_batches({"landsat": splits[k]}, config) for c in b["chip_id"]])
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == _chips(stores["landsat"])


def test_ray_epochs_on_the_trainers_equal_splits_keep_ranks_in_lockstep(stores: dict[str, str]) -> None:
    """`RayEpochs` on the splits Ray Train gives its workers (`DataConfig`: `streaming_split(equal=True)`), with
    `drop_last`, consumed at different speeds for 3 epochs. What DDP relies on: each epoch every rank gets the
    same number of full batches (a rank with one batch more would wait for ever in its all-reduce); the ranks'
    chips are disjoint, none twice, and nothing hangs.

    The store is built so that only a split inside a shard can be equal: 25 chips in 5 shards of 5, 2 a batch.
    Any split into whole shards (what `streaming_split(equal=False)` hands out, Ray's blocks being the shards)
    gives the ranks 0 and 12, 2 and 10 or 5 and 7 steps; the equal split gives both 12 chips, 6 steps."""
    import time

    import ray.train

    config = LoaderConfig((DatasetSource(stores["landsat-5"], name="landsat"),), batch_size=2, patch_sizes_m=(30,),
                          drop_last=True)  # fmt: skip
    splits = ray.train.DataConfig().configure(ray_datasets(config), world_size=2, worker_handles=None,
                                              worker_node_ids=None)  # what TorchTrainer(datasets=...) hands out
    chips = _chips(stores["landsat-5"])
    per_rank = len(chips) // 2 // config.batch_size  # equal splits of n // 2 chips, each short batch dropped
    assert per_rank >= 2, len(chips)
    sizes = [len(ids) for ids in read_index(StoreLayout(stores["landsat-5"]))["chip_ids"]]
    whole = {sum(s for i, s in enumerate(sizes) if m >> i & 1) for m in range(2 ** len(sizes))}  # rank 0's chips
    n, size = len(chips), config.batch_size
    assert all(a // size != (n - a) // size for a in whole), sizes  # the premise: only an equal split is even

    def consume(k: int) -> dict[int, list[list[str]]]:
        seen: dict[int, list[list[str]]] = {}
        with RayEpochs(splits[k], config, ahead=2) as feed:
            for epoch in range(3):
                seen[epoch] = []
                for batch in feed.batches_for(epoch):
                    seen[epoch].append(list(batch["chip_id"]))
                    time.sleep(0.05 * k)  # rank 1 is the slow one
            with pytest.raises(PipelineError):
                next(iter(feed.batches_for(7)))  # epochs are asked for in order
        return seen

    seen = _run_ranks(consume)
    for epoch in range(3):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == per_rank, (epoch, len(a), len(b))  # lockstep: the same number of steps
        assert all(len(batch) == config.batch_size for batch in a + b), epoch  # full batches only
        flat_a, flat_b = [c for x in a for c in x], [c for x in b for c in x]
        assert len(set(flat_a + flat_b)) == len(flat_a + flat_b) and set(flat_a + flat_b) <= set(chips), epoch


def test_ray_mixing_one_dataset_and_patch_size_per_batch(stores: dict[str, str]) -> None:
    config = LoaderConfig((DatasetSource(stores["landsat"], weight=1.0), DatasetSource(stores["demo"], weight=1.0)),
                          batch_size=2, patch_sizes_m=(30, 40, 60))  # fmt: skip
    datasets = ray_datasets(config)
    chips = {name: set(_chips(stores[name])) for name in ("landsat", "demo")}
    batches: list[dict[str, Any]] = list(ray_batches({n: d.iterator() for n, d in datasets.items()}, config))
    names = {b["dataset"] for b in batches}
    assert names == {"landsat", "demo"}
    landsat_ids = [c for b in batches if b["dataset"] == "landsat" for c in b["chip_id"]]
    assert len(set(landsat_ids)) >= len(chips["landsat"]) - 1  # at least one pass (drop_last drops < 2)
    for b in batches:
        assert set(b["chip_id"]) <= chips[b["dataset"]]
        assert {"landsat": 300, "demo": 480}[b["dataset"]] % b["patch_size"] == 0
        assert ("s2" in b) == (b["dataset"] == "demo") and ("landsat" in b) == (b["dataset"] == "landsat")


def _ingest(config: IngestConfig, rows: Sequence[dict[str, Any]], collection: Path, folder: Path) -> None:
    """One incremental run against a STAC API serving exactly `rows` (the catalog as it is at that time)."""
    folder.mkdir(parents=True)
    items = folder / "items.ndjson"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stack = LocalStack(StackConfig(state_dir=folder / "stack", services=("stac",), stac_hrefs=(collection, items)))
    env = stack.up()
    try:
        summary = run_incremental(config, stac_url=env["STAC_API_URL"], use_ray=False)
    finally:
        stack.down()
    assert summary.status == "succeeded", summary


@pytest.fixture(scope="module")
def incremental(catalog_files: tuple[Path, ...], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Landsat sample ingested incrementally: the early acquisitions, then all of them.

    The later acquisitions give some grid cells a better date, so their chips are re-versioned and the store
    holds superseded chips beside their replacements (as in tests/jobs/test_ingest_incremental.py).
    """
    root = tmp_path_factory.mktemp("superseded")
    items_file = next(p for p in catalog_files if p.parent.name == "landsat-c2-l2" and p.suffix == ".ndjson")
    collection = items_file.parent / "collection.json"
    rows = [json.loads(x) for x in items_file.read_text().splitlines()]
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-landsat.yaml",
                         [f"store={root / 'ds'}", "quicklooks=0", "chips_per_shard=8"])  # fmt: skip
    _ingest(config, [r for r in rows if r["properties"]["datetime"] < "2010-08-01"], collection, root / "v1")
    _ingest(config, rows, collection, root / "v2")
    index = read_index(StoreLayout(config.store))
    stored = {str(c) for ids in index["chip_ids"] for c in ids}
    superseded = {str(c) for c in read_superseded(config.store)["chip_id"]}
    return {"url": config.store, "stored": stored, "superseded": superseded, "current": stored - superseded}


def test_the_store_holds_superseded_chips_beside_their_replacements(incremental: dict[str, Any]) -> None:
    stored, superseded = incremental["stored"], incremental["superseded"]
    assert superseded and superseded < stored and incremental["current"]  # the premise of the tests below


@pytest.mark.parametrize("world_size", [1, 2])
def test_plain_path_yields_every_current_chip_once_and_no_superseded_one(incremental: dict[str, Any],
                                                                          world_size: int) -> None:  # fmt: skip
    config = LoaderConfig((DatasetSource(incremental["url"]),), batch_size=3, patch_sizes_m=(30,), shuffle_buffer=8,
                          drop_last=False)  # fmt: skip
    ids = [c for rank in range(world_size) for b in iter_batches(config, rank=rank, world_size=world_size, epoch=1)
           for c in b["chip_id"]]  # fmt: skip
    assert sorted(ids) == sorted(incremental["current"])  # each current chip exactly once
    assert not set(ids) & incremental["superseded"]


def test_ray_path_yields_every_current_chip_once_and_no_superseded_one(
        stores: dict[str, str], incremental: dict[str, Any]) -> None:  # fmt: skip
    config = LoaderConfig((DatasetSource(incremental["url"], name="landsat"),), batch_size=3, patch_sizes_m=(30,),
                          shuffle_buffer=8, drop_last=False)  # fmt: skip
    datasets = ray_datasets(config)
    ids = [c for b in ray_batches({"landsat": datasets["landsat"].iterator()}, config) for c in b["chip_id"]]
    assert sorted(ids) == sorted(incremental["current"])
    assert not set(ids) & incremental["superseded"]
