"""Shards of one dataset read whole in background threads, kept until each of their rows has been used.

The plain loader (`pipeline.load.loader.iter_batches`) asks for the shards of the batches it lays out ahead
(`LoaderConfig.read_ahead`); reads go to a thread pool (`LoaderConfig.read_threads`) so that file or object
store latency and zstd/blosc decompression (both release the GIL) overlap with the consumer's work and with
each other: on object storage several shard reads are in flight at once, each a batched concurrent fetch.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.errors import StoreError
from pipeline.load.batches import Sample, ShardArrays, read_shard_arrays

__all__ = ["ShardCache"]


class ShardCache:
    """Shards of one dataset read whole, kept until each of their rows in this rank's pass has been used.

    Reads go to a background thread pool as soon as a batch in the look-ahead window needs the shard. `ds` is
    the loader's `ResolvedDataset` (shard URLs, chips, norms and group keys).
    """

    def __init__(self, ds: Any, storage_options: Mapping[str, Any] | None,
                 pool: ThreadPoolExecutor) -> None:  # fmt: skip
        self.ds, self.options, self.pool = ds, storage_options, pool
        self.pending: dict[tuple[int, int], list[int]] = {}  # (pass, shard) -> rows still to use
        self.reads: dict[tuple[int, int], Future[ShardArrays]] = {}

    def start_pass(self, pass_no: int, order: list[tuple[int, int]]) -> None:
        for shard, row in order:
            self.pending.setdefault((pass_no, shard), []).append(row)

    def want(self, pass_no: int, shard: int) -> None:
        """Start reading a shard (once per pass) that a coming batch needs."""
        key = (pass_no, shard)
        if key not in self.reads:
            norms = {g: self.ds.norms[g] for g in self.ds.keys}
            self.reads[key] = self.pool.submit(read_shard_arrays, self.ds.shard_urls[shard], norms,
                                               storage_options=self.options)  # fmt: skip

    def take(self, pass_no: int, shard: int, row: int, *, load: bool) -> Sample | None:
        key = (pass_no, shard)
        if load:
            self.want(pass_no, shard)
        self.pending[key].remove(row)
        sample = None
        if key in self.reads:
            arrays = self.reads[key].result()
            if arrays.chip_ids != self.ds.shard_chips[shard]:
                raise StoreError(f"shard {self.ds.shard_urls[shard]} holds chips {list(arrays.chip_ids)[:3]}…, its "
                                 f"index row lists {list(self.ds.shard_chips[shard])[:3]}…; rebuild the shard index "
                                 "(pipeline.store.shards.rebuild_index)")  # fmt: skip
            sample = arrays.samples((row,))[row]
        if not self.pending[key]:
            del self.pending[key]
            self.reads.pop(key, None)
        return sample
