"""Training batches from Zarr shards: the loader config, dataset resolution and the plain PyTorch path.

The batch contract, shuffling, mixing, rank split and resume position are described in docs/TRAINING.md
("Loader"). In short, per dataset and pass: the shard order is shuffled with (seed, epoch, dataset, pass), the
concatenated chip sequence is cut into `world_size` contiguous slices (so a rank reads whole shards except at
most two boundary ones, and every chip goes to exactly one rank), and each rank's slice goes through a buffered
shuffle. All of this is computed on chip positions before any pixel is read, so `skip_batches` jumps to a
position without reading the skipped shards, and the result is identical to an uninterrupted run. Positions
cover current chips only: chips listed in `<store>/state/superseded.parquet` (older versions kept in their shards
by incremental ingestion) are never delivered. Shards needed by the next few batches (`read_ahead`) are read in
background threads (`read_threads`, more on object stores) while the current batch is collated.

Datasets are mixed by weight with exact shares per epoch: the epoch is the shortest sequence of batches in
which every dataset gets its weight's share and at least one full pass; a dataset whose share exceeds its size
starts another (reshuffled) pass. The dataset and patch-size draws depend on (seed, epoch) only, so with
`drop_last` every rank draws the same dataset and patch size at the same step (DDP ranks then use the same
modalities) and yields the same number of batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.load.batches import BandNorm, collate, group_layouts, read_norms, read_stats_json
from pipeline.load.shard_cache import ShardCache
from pipeline.errors import ConfigError, PipelineError, StoreError
from pipeline.store.superseded import read_superseded
from pipeline.store.shards import StoreLayout, read_index

__all__ = ["DatasetSource", "LoaderConfig", "ResolvedDataset", "iter_batches", "patch_sizes_for", "read_stats",
           "resolve_dataset"]

log = logging.getLogger(__name__)
_AUTO = {False: (4, 2), True: (16, 8)}  # (batches read ahead, read threads): local, object store

@dataclass(frozen=True)
class DatasetSource:
    """One dataset written by jobs/ingest.py.

    Attributes:
        url: Dataset root (local path or `s3://…`).
        weight: Share of batches drawn from this dataset (relative to the other sources' weights).
        modalities: Store group -> model key (e.g. `{"s1": "s1-asc"}`); empty = every group, same names.
        name: Name given in each batch's `dataset`; defaults to the url's last path part.
    """

    url: str
    weight: float = 1.0
    modalities: Mapping[str, str] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("DatasetSource.url is empty; give the dataset root written by jobs/ingest.py")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ConfigError(f"DatasetSource {self.url}: weight must be a positive number, got {self.weight}")
        if not self.name:
            object.__setattr__(self, "name", self.url.rstrip("/").rsplit("/", 1)[-1])


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are drawn from one or more datasets (see docs/TRAINING.md, "Loader").

    Attributes:
        datasets: The sources, mixed by weight.
        batch_size: Samples per batch.
        patch_sizes_m: Patch sizes in metres; one is drawn per batch among those dividing the tile extent.
        shuffle_buffer: Samples in the buffered shuffle after shard-level shuffling (<= 1: no buffer).
        seed: Seed of every random choice.
        max_dates: Model key -> cap on T (a random sorted subset of the real dates).
        images: Model keys delivered without the time axis ([B, C, H, W], first real date).
        drop_last: Drop each pass's last incomplete batch (keeps DDP ranks in step).
        read_ahead: Batches laid out ahead whose shards are read in the background (0: 4 on local disk, 16 when
            a dataset is on an object store, where several shard reads in flight hide each request's latency).
        read_threads: Threads reading shards (0: 2 on local disk, 8 on an object store).
    """

    datasets: tuple[DatasetSource, ...]
    batch_size: int = 8
    patch_sizes_m: tuple[int, ...] = (40,)
    shuffle_buffer: int = 64
    seed: int = 0
    max_dates: Mapping[str, int] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    drop_last: bool = True
    read_ahead: int = 0
    read_threads: int = 0

    def reading(self) -> tuple[int, int]:
        """(batches read ahead, read threads): as set, or the defaults for where the datasets are."""
        remote = any("://" in d.url and not d.url.startswith("file://") for d in self.datasets)
        ahead, threads = _AUTO[remote]
        return self.read_ahead or ahead, self.read_threads or threads

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("LoaderConfig.datasets is empty; give at least one DatasetSource")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset names must be unique, got {names}; set DatasetSource.name")
        if self.read_ahead < 0 or self.read_threads < 0:
            raise ConfigError(f"read_ahead and read_threads must be >= 0 (0 = automatic), got {self.read_ahead}, "
                                f"{self.read_threads}")  # fmt: skip
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.patch_sizes_m or min(self.patch_sizes_m) <= 0:
            raise ConfigError(f"patch_sizes_m must be positive metres, got {self.patch_sizes_m}")
        bad = {k: v for k, v in self.max_dates.items() if v < 1}
        if bad:
            raise ConfigError(f"max_dates must be >= 1, got {bad}")


@dataclass(frozen=True)
class ResolvedDataset:
    """A source with what the loader needs from its store: shards, group -> key, norms and patch sizes."""

    index: int
    source: DatasetSource
    shard_urls: tuple[str, ...]
    shard_sizes: tuple[int, ...]  # current (not superseded) chips per shard
    keys: Mapping[str, str]
    norms: Mapping[str, BandNorm]
    patch_sizes_m: tuple[int, ...]
    extent_m: float
    shard_rows: tuple[tuple[int, ...], ...] = ()  # rows of the current chips in each shard
    shard_chips: tuple[tuple[str, ...], ...] = ()  # every chip id of each shard, in row order (the index's)
    superseded: frozenset[str] = frozenset()  # chips replaced by a newer version (`state/superseded.parquet`)


def read_stats(url: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Normalisation statistics of one dataset: `{group: {band: {count, mean, std, min, max, p1…p99}}}`."""
    raw = read_stats_json(url, storage_options=storage_options)
    return {group: {band: dict(entry["summary"]) for band, entry in bands.items()} for group, bands in raw.items()}


def patch_sizes_for(extent_m: float, patch_sizes_m: tuple[int, ...], *, what: str) -> tuple[int, ...]:
    """The patch sizes that divide a tile extent (metres); none is an error naming `what`."""
    sizes = tuple(p for p in patch_sizes_m if abs(extent_m / p - round(extent_m / p)) < 1e-6)
    if not sizes:
        raise StoreError(f"no patch size in {patch_sizes_m} divides the {extent_m:g} m tiles of {what}; add a "
                         f"divisor of {extent_m:g} to patch_sizes_m")  # fmt: skip
    return sizes


def resolve_dataset(source: DatasetSource, config: LoaderConfig, *, index: int = 0,
                    storage_options: Mapping[str, Any] | None = None) -> ResolvedDataset:  # fmt: skip
    """Read a dataset's shard index, statistics and first shard's layout.

    Raises:
        StoreError: No committed shard, a missing group, or no patch size dividing the tile extent.
    """
    frame = read_index(StoreLayout(source.url, storage_options=dict(storage_options or {})))
    if frame.empty:
        raise StoreError(f"{source.url} has no committed shard; run jobs/ingest.py first")
    frame = frame.sort_values("shard_id")
    stats = read_stats_json(source.url, storage_options=storage_options)
    keys = dict(source.modalities) or {g: g for g in sorted(stats)}
    urls = tuple(str(u) for u in frame["url"])
    extent_m, bands, tiles = group_layouts(urls, list(keys), storage_options=storage_options)
    sizes = patch_sizes_for(extent_m, config.patch_sizes_m, what=source.url)
    superseded = frozenset(str(c) for c in read_superseded(source.url, storage_options=storage_options)["chip_id"])
    chips = tuple(tuple(str(c) for c in ids) for ids in frame["chip_ids"])
    rows = tuple(tuple(r for r, c in enumerate(ids) if c not in superseded) for ids in chips)
    if superseded:
        log.info("dataset %s: %d superseded chips are skipped", source.name, sum(map(len, chips)) - sum(map(len, rows)))
    norms = {g: dataclasses.replace(n, tile=tiles[g]) for g, n in read_norms(stats, bands).items()}
    return ResolvedDataset(index, source, urls, tuple(len(r) for r in rows), keys, norms,
                           tuple(sizes), extent_m, rows, chips, superseded)  # fmt: skip


def buffered_shuffle(items: list[Any], buffer: int, rng: np.random.Generator) -> list[Any]:
    """Order `items` as a streaming shuffle buffer of `buffer` slots would emit them."""
    if buffer <= 1:
        return list(items)
    out: list[Any] = []
    slots: list[Any] = []
    for item in items:
        if len(slots) < buffer:
            slots.append(item)
            continue
        j = int(rng.integers(buffer))
        out.append(slots[j])
        slots[j] = item
    rng.shuffle(slots)  # type: ignore[arg-type]
    return out + slots


def rank_slice(total: int, *, rank: int, world_size: int, equal: bool) -> tuple[int, int]:
    """Contiguous [start, stop) of `total` positions for `rank`: equal lengths (dropping < world_size) or all."""
    per, extra = divmod(total, world_size)
    if equal:
        return rank * per, (rank + 1) * per
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


def pass_order(ds: ResolvedDataset, config: LoaderConfig, *, epoch: int, pass_no: int, rank: int,
               world_size: int) -> list[tuple[int, int]]:  # fmt: skip
    """(shard, row) positions of one rank's pass over a dataset, in emission order."""
    rng = np.random.default_rng([config.seed, epoch, ds.index, pass_no])
    sequence = [(int(s), r) for s in rng.permutation(len(ds.shard_urls)) for r in ds.shard_rows[s]]
    start, stop = rank_slice(len(sequence), rank=rank, world_size=world_size, equal=config.drop_last)
    rng_buffer = np.random.default_rng([config.seed, epoch, ds.index, pass_no, rank, 1])
    return buffered_shuffle(sequence[start:stop], config.shuffle_buffer, rng_buffer)


def batches_per_pass(ds: ResolvedDataset, config: LoaderConfig, *, rank: int, world_size: int) -> int:
    start, stop = rank_slice(sum(ds.shard_sizes), rank=rank, world_size=world_size, equal=config.drop_last)
    n, b = stop - start, config.batch_size
    return n // b if config.drop_last else -(-n // b)


def epoch_plan(counts_per_pass: list[int], weights: list[float], *, seed: int, epoch: int
               ) -> np.ndarray:  # fmt: skip
    """Dataset index of each batch of an epoch: exact shares by weight, every dataset at least one full pass."""
    total_w = sum(w for w, c in zip(weights, counts_per_pass, strict=True) if c > 0)
    shares = [w / total_w if c > 0 else 0.0 for w, c in zip(weights, counts_per_pass, strict=True)]
    length = max(c / p for c, p in zip(counts_per_pass, shares, strict=True) if p > 0)
    counts = [max(c, math.ceil(length * p - 1e-9)) if p > 0 else 0 for c, p in zip(counts_per_pass, shares,
                                                                                    strict=True)]  # fmt: skip
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng([seed, epoch, 7]).permutation(labels)


def _dataset_batches(ds: ResolvedDataset, config: LoaderConfig, *, epoch: int, rank: int,
                     world_size: int) -> Iterator[tuple[int, list[tuple[int, int]], list[tuple[int, int]]]]:  # fmt: skip
    """Endless batches (pass, the pass's used positions, the batch's positions) of one dataset for one rank."""
    pass_no = 0
    while True:
        order = pass_order(ds, config, epoch=epoch, pass_no=pass_no, rank=rank, world_size=world_size)
        b = config.batch_size
        used = order[: len(order) - len(order) % b] if config.drop_last else order
        if not used:
            return
        for start in range(0, len(used), b):
            yield pass_no, used, used[start : start + b]
        pass_no += 1


def iter_batches(config: LoaderConfig, *, storage_options: Mapping[str, Any] | None = None, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, skip_batches: int = 0) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Batches of one epoch for one rank, in a plain process (see the module docstring and docs/TRAINING.md).

    Args:
        config: The loader config.
        storage_options: fsspec options of the stores (e.g. the S3 endpoint).
        rank: This process's rank.
        world_size: Number of ranks.
        epoch: Epoch number (shuffles and draws change with it).
        skip_batches: Batches of this epoch already consumed (resume position); they are not read.

    Yields:
        The contract's batches (docs/TRAINING.md).

    Raises:
        StoreError: A dataset cannot be read or has fewer chips than one batch per rank.
    """
    if not 0 <= rank < world_size:
        raise PipelineError(f"rank must be in [0, {world_size}), got {rank}")
    datasets = [resolve_dataset(s, config, index=i, storage_options=storage_options)
                for i, s in enumerate(config.datasets)]  # fmt: skip
    counts = [batches_per_pass(d, config, rank=rank, world_size=world_size) for d in datasets]
    for d, c in zip(datasets, counts, strict=True):
        if c == 0:
            log.warning("dataset %s has %d chips, fewer than one batch of %d per rank x %d ranks; it is skipped",
                        d.source.name, sum(d.shard_sizes), config.batch_size, world_size)  # fmt: skip
    if not any(counts):
        raise StoreError(f"no dataset has a full batch of {config.batch_size} per rank for {world_size} ranks; "
                         "lower batch_size or set drop_last=False")  # fmt: skip
    plan = epoch_plan(counts, [d.source.weight for d in datasets], seed=config.seed, epoch=epoch)
    draws = np.random.default_rng([config.seed, epoch, 11])
    patch_choice = [int(draws.integers(len(datasets[d].patch_sizes_m))) for d in plan]
    streams = [_dataset_batches(d, config, epoch=epoch, rank=rank, world_size=world_size) for d in datasets]
    passes_started = [-1] * len(datasets)
    read_ahead, read_threads = config.reading()
    pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="shard-read")
    caches = [ShardCache(d, storage_options, pool) for d in datasets]

    def laid_out() -> Iterator[tuple[int, int, int, list[tuple[int, int]]]]:
        """(step, dataset, pass, positions) of every batch, computed on positions only (no pixel read)."""
        for step, d in enumerate(int(d) for d in plan):
            pass_no, used, positions = next(streams[d])
            if pass_no != passes_started[d]:
                caches[d].start_pass(pass_no, used)
                passes_started[d] = pass_no
            yield step, d, pass_no, positions

    steps, ahead = laid_out(), deque[tuple[int, int, int, list[tuple[int, int]]]]()

    def look_ahead() -> None:
        """Keep the next few batches laid out and their shards being read."""
        while len(ahead) <= read_ahead and (nxt := next(steps, None)) is not None:
            ahead.append(nxt)
            if nxt[0] >= skip_batches:
                for shard, _ in nxt[3]:
                    caches[nxt[1]].want(nxt[2], shard)

    try:
        look_ahead()
        while ahead:
            step, d, pass_no, positions = ahead.popleft()
            look_ahead()
            load = step >= skip_batches
            samples = [caches[d].take(pass_no, s, r, load=load) for s, r in positions]
            if not load:
                continue
            ds = datasets[d]
            yield collate([s for s in samples if s is not None], keys=ds.keys, images=config.images,
                          max_dates=config.max_dates, rng=np.random.default_rng([config.seed, epoch, step, rank, 13]),
                          patch_size=ds.patch_sizes_m[patch_choice[step]], dataset=ds.source.name)  # fmt: skip
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
