"""The Ray Data path of the loader: one Dataset of samples per source (driver), contract batches (train workers).

Driver side, `ray_datasets` turns each source's shard index into a Dataset: the shard URLs in a seeded random
order (shard-level shuffle), one row each, and `flat_map` reads a whole shard into its normalised samples
(`pipeline.load.batches.read_shard_samples`, the same code as the plain path) and drops the shard's superseded chips
(`<store>/state/superseded.parquet`, read once per dataset by `resolve_dataset`). `TorchTrainer(datasets=...)`
then gives each worker a `streaming_split` of every Dataset.

Worker side, `ray_batches` iterates each split with Ray's local shuffle buffer, collates samples into the
contract's batches and mixes the datasets by weight: each batch's dataset and patch size are drawn from a
generator seeded by (seed, epoch), so every worker draws the same sequence and, splits being equal, all workers
step through the same datasets together. A dataset that runs out before the others starts another pass; the
epoch ends when every dataset has completed one pass. Shares follow the weights in expectation (the plain path's
are exact per epoch, because it knows the dataset sizes ahead).

Across epochs, `RayEpochs` keeps the trainer fed: each `DataIterator.iter_batches` call starts a new execution of
the split's Dataset (Ray Data start-up and the first shard reads), which a short epoch pays as a wait on its first
batch. A background thread runs `ray_batches` epoch after epoch into a bounded queue of collated batches, so the
next epoch's stream starts while the trainer still consumes the current epoch's last `ahead` batches. The thread
only runs ahead within this worker's own splits and requests their epochs in order; a `streaming_split`
coordinator starts epoch e+1 only when every split has asked for it, i.e. when every worker's thread has finished
epoch e. Splits are equal, so every worker's thread gets there while its trainer still has epoch-e batches queued:
DDP ranks stay in lockstep and none waits on another's prefetch.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.load.batches import BandNorm, Sample, collate, read_shard_samples
from pipeline.errors import PipelineError
from pipeline.load.loader import LoaderConfig, patch_sizes_for, resolve_dataset

if TYPE_CHECKING:
    import ray.data

__all__ = ["RayEpochs", "ray_batches", "ray_datasets"]


class _ShardReader:
    """Picklable `flat_map` function: one shard URL row -> the shard's samples (+ the tile extent)."""

    def __init__(self, norms: Mapping[str, BandNorm], extent_m: float, storage_options: Mapping[str, Any] | None,
                 superseded: Mapping[str, frozenset[str]]) -> None:  # fmt: skip
        self.norms, self.extent_m, self.options = dict(norms), extent_m, dict(storage_options or {})
        self.superseded = dict(superseded)  # shard URL -> its superseded chips (only shards that have some)

    def __call__(self, row: dict[str, Any]) -> list[Sample]:
        url = str(row["url"])
        skip = self.superseded.get(url, frozenset())
        samples = read_shard_samples(url, self.norms, storage_options=self.options)
        return [s | {"extent_m": self.extent_m} for s in samples.values() if s["chip_id"] not in skip]


def ray_datasets(config: LoaderConfig, *, storage_options: Mapping[str, Any] | None = None,
                 num_cpus: float = 0.5) -> dict[str, ray.data.Dataset]:  # fmt: skip
    """One Ray Dataset of samples per DatasetSource, keyed by its name (driver side).

    Args:
        config: The loader config.
        storage_options: fsspec options of the stores; shipped to the read tasks, never written.
        num_cpus: CPUs per read task (below 1 so reads fit beside Ray Train workers on small machines).
    """
    import ray.data

    out: dict[str, ray.data.Dataset] = {}
    for i, source in enumerate(config.datasets):
        ds = resolve_dataset(source, config, index=i, storage_options=storage_options)
        order = np.random.default_rng([config.seed, i, 3]).permutation(len(ds.shard_urls))
        items = [{"url": ds.shard_urls[j]} for j in order if ds.shard_sizes[j]]
        superseded = {u: frozenset(ds.superseded.intersection(chips))
                      for u, chips in zip(ds.shard_urls, ds.shard_chips, strict=True)
                      if ds.superseded.intersection(chips)}  # fmt: skip
        reader = _ShardReader({g: ds.norms[g] for g in ds.keys}, ds.extent_m, storage_options, superseded)
        out[source.name] = ray.data.from_items(items, override_num_blocks=len(items)).flat_map(reader,
                                                                                                num_cpus=num_cpus)
    return out


def _rows(batch: Mapping[str, Any]) -> list[Sample]:
    n = len(batch["chip_id"])
    return [{col: values[i] for col, values in batch.items()} for i in range(n)]


def ray_batches(shards: Mapping[str, ray.data.DataIterator], config: LoaderConfig, *,
                epoch: int = 0, prefetch_batches: int = 2) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The contract's batches of one epoch from this worker's dataset splits (worker side).

    Args:
        shards: Dataset name -> this worker's DataIterator (`ray.train.get_dataset_shard(name)`).
        config: The loader config the datasets were built with.
        epoch: Epoch number (the local shuffle and the draws change with it).
        prefetch_batches: Batches Ray Data fetches ahead within each split's stream (`iter_batches`).

    Raises:
        PipelineError: A configured dataset has no iterator, or yields no batch at all.
    """
    sources = [s for s in config.datasets]
    missing = [s.name for s in sources if s.name not in shards]
    if missing:
        raise PipelineError(f"no dataset shard for {missing}; pass ray_datasets(config) to TorchTrainer(datasets=…)")
    weights = np.array([s.weight for s in sources]) / sum(s.weight for s in sources)
    draws = np.random.default_rng([config.seed, epoch, 7])
    passes = [0] * len(sources)

    def start(d: int) -> Iterator[Mapping[str, Any]]:
        return iter(shards[sources[d].name].iter_batches(
            batch_size=config.batch_size, batch_format="numpy", drop_last=config.drop_last,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=config.shuffle_buffer if config.shuffle_buffer > 1 else None,
            local_shuffle_seed=int(np.random.default_rng([config.seed, epoch, d, passes[d]]).integers(2**31))))  # fmt: skip

    iterators = [start(d) for d in range(len(sources))]
    done: set[int] = set()
    for step in range(2**62):
        d = int(draws.choice(len(sources), p=weights))
        choice = int(draws.integers(2**31))
        batch = next(iterators[d], None)
        if batch is None:
            done.add(d)
            if len(done) == len(sources):
                return
            passes[d] += 1
            iterators[d] = start(d)
            batch = next(iterators[d], None)
            if batch is None:
                raise PipelineError(f"dataset {sources[d].name} yields no batch of {config.batch_size}; lower "
                                    "batch_size or set drop_last=False")  # fmt: skip
        samples = _rows(batch)
        groups = sorted({c.removesuffix(".data") for c in batch if c.endswith(".data")})
        keys = {g: dict(sources[d].modalities).get(g, g) for g in groups}
        sizes = patch_sizes_for(float(samples[0]["extent_m"]), config.patch_sizes_m, what=sources[d].name)
        yield collate(samples, keys=keys, images=config.images, max_dates=config.max_dates,
                      rng=np.random.default_rng([config.seed, epoch, step, 13]),
                      patch_size=sizes[choice % len(sizes)], dataset=sources[d].name)  # fmt: skip


_END = object()  # queue marker: the epoch tagged with it has no more batches


class RayEpochs:
    """Consecutive epochs of `ray_batches`, produced ahead by one background thread (worker side).

    Usage, with `anysat.train.fit`'s `batches_for(epoch, skip)`::

        with RayEpochs(shards, config) as feed:
            fit(trainer, feed.batches_for, ...)

    Epochs must be asked for in order (e, e+1, ...), as `fit` does; the first request fixes where the thread
    starts (a resumed run's epoch). An epoch left unfinished (`fit` stops at `total_steps`) is skipped over by
    the next request. Memory: at most `ahead` collated batches in the queue, plus Ray Data's `prefetch_batches`.

    Args:
        shards: Dataset name -> this worker's DataIterator (`ray.train.get_dataset_shard(name)`).
        config: The loader config the datasets were built with.
        ahead: Collated batches the thread may hold ready; the next epoch's stream starts when the trainer has
            this many batches of the current epoch left (so it hides a start-up of about `ahead` steps).
        prefetch_batches: Passed to `ray_batches` (Ray Data's own read-ahead within a stream).
    """

    def __init__(self, shards: Mapping[str, ray.data.DataIterator], config: LoaderConfig, *, ahead: int = 8,
                 prefetch_batches: int = 2) -> None:  # fmt: skip
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1 batch, got {ahead}")
        self._shards, self._config = dict(shards), config
        self._prefetch = prefetch_batches
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_epoch: int | None = None
        self._error: BaseException | None = None

    def batches_for(self, epoch: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        """The batches of `epoch` after the first `skip` (the data position of a resumed run).

        Raises:
            PipelineError: `epoch` is not the one after the previous request, or the feed is closed.
        """
        if self._stop.is_set():
            raise PipelineError("this RayEpochs feed is closed; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, args=(epoch,), name="ray-epochs", daemon=True)
            self._thread.start()
        elif epoch != self._next_epoch:
            raise PipelineError(f"RayEpochs gives epochs in order: expected epoch {self._next_epoch}, asked for "
                                f"{epoch}; start a new feed (and a new split iteration) to jump")  # fmt: skip
        self._next_epoch = epoch + 1
        return itertools.islice(self._consume(epoch), skip, None)

    def close(self) -> None:
        """Stop the thread (it may stay parked in Ray until the worker exits; it is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RayEpochs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _produce(self, first: int) -> None:
        try:
            for epoch in itertools.count(first):
                for batch in ray_batches(self._shards, self._config, epoch=epoch, prefetch_batches=self._prefetch):
                    if not self._put((epoch, batch)):
                        return
                if not self._put((epoch, _END)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put((-1, err))

    def _put(self, item: tuple[int, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _consume(self, epoch: int) -> Iterator[dict[str, Any]]:
        while True:
            if self._error is not None:
                raise self._error
            try:
                e, item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and self._queue.empty():
                    raise PipelineError("the RayEpochs thread stopped without an error or an end of epoch; "
                                        "was the feed closed?") from None  # fmt: skip
                continue
            if isinstance(item, BaseException):
                self._error = item
                raise item
            if e < epoch:  # the rest of an epoch the trainer left unfinished
                continue
            if item is _END:
                return
            yield item
