"""The Ray Data path of the loader: one Dataset of samples per source (driver), contract batches (train workers).

Driver side, `ray_datasets` turns each source's shard index into a Dataset: the shard URLs in a seeded random
order (shard-level shuffle), one row each, and `flat_map` reads a whole shard into its normalised samples
(`pipeline.batches.read_shard_samples`, the same code as the plain path) and drops the shard's superseded chips
(`<store>/state/superseded.parquet`, read once per dataset by `resolve_dataset`). `TorchTrainer(datasets=...)`
then gives each worker a `streaming_split` of every Dataset.

Worker side, `ray_batches` iterates each split with Ray's local shuffle buffer, collates samples into the
contract's batches and mixes the datasets by weight: each batch's dataset and patch size are drawn from a
generator seeded by (seed, epoch), so every worker draws the same sequence and, splits being equal, all workers
step through the same datasets together. A dataset that runs out before the others starts another pass; the
epoch ends when every dataset has completed one pass. Shares follow the weights in expectation (the plain path's
are exact per epoch, because it knows the dataset sizes ahead).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.batches import BandNorm, Sample, collate, read_shard_samples
from pipeline.errors import PipelineError
from pipeline.loader import LoaderConfig, patch_sizes_for, resolve_dataset

if TYPE_CHECKING:
    import ray.data

__all__ = ["ray_batches", "ray_datasets"]


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
                epoch: int = 0) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The contract's batches of one epoch from this worker's dataset splits (worker side).

    Args:
        shards: Dataset name -> this worker's DataIterator (`ray.train.get_dataset_shard(name)`).
        config: The loader config the datasets were built with.
        epoch: Epoch number (the local shuffle and the draws change with it).

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
