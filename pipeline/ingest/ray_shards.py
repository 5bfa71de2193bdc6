"""How an ingestion's shard tasks run on Ray: a pool of long-lived shard workers (Ray actors), one per job.

Why not a Ray Data `map`, as before: the shards of an ingestion are independent and each returns one small row,
so Ray Data's planning, streaming executor and per-task bookkeeping buy nothing, and they cost the most where
users wait — on a fresh cluster the first Ray Data task started 3–5 s after submission whatever it did, and
each task added ~20–40 ms (docs/BENCHMARKS.md). Here:

- `start_shard_workers` creates `concurrency` actors without waiting for them; `run_ingest` calls it before the
  STAC search, so the worker processes start and import the ingestion code (GDAL/rasterio, pandas, zarr codecs)
  while the driver searches, freezes the manifest and plans chips;
- the pool is kept for the job (the driver process and its Ray connection): every later write of the same job
  (another dataset, an incremental pass) reuses the warm workers instead of paying start-up again;
- start-up is kept off the critical path of small jobs: each worker gets one shard at once, and until the
  first of them answers the driver (whose process has the code imported already) writes shards itself; from
  then on shards go to the workers, two in flight per worker so that none idles between tasks. On a fresh
  cluster the workers' start (a Ray worker process importing GDAL/rasterio, pandas, zarr codecs: ~1 s of
  CPU, seconds under load) costs a short job little; a long job hands the driver only its first seconds;
  results come back in the order of the rows;
- actors are placed with the SPREAD strategy (shards are written on every node of a cluster) and need no CPU
  reservation once started (Ray's default for actors), so an idle pool does not hold back a later Ray Train or
  Ray Data stage of the same job; concurrency is the pool's size;
- a worker that dies is restarted and its tasks retried by Ray up to `max_retries` times (as Ray Data's
  `max_retries` did for tasks); an exception raised by a shard task fails the run, as before.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["release_shard_workers", "run_shard_tasks", "start_shard_workers"]

log = logging.getLogger(__name__)
IN_FLIGHT_PER_WORKER = 2
_POOL: dict[str, Any] = {}  # {"key": (job id, size, retries), "actors": [...]} of this driver process
LAST_RUN: dict[str, int] = {}  # what the last `run_shard_tasks` did: rows, by_driver, by_workers


class _ShardWorker:
    """One worker process of the pool: imports the ingestion code once, then runs shard tasks."""

    def __init__(self) -> None:
        # the shard task's heavy modules, imported before the first shard arrives
        import pipeline.ingest.chips  # noqa: F401
        import pipeline.ingest.raster_reader  # noqa: F401
        import pipeline.store.shards  # noqa: F401

    def ready(self) -> bool:
        return True

    def write(self, task: Callable[[dict[str, Any]], dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
        return task(row)


def _ray():  # noqa: ANN202 - the ray module, connected
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    return ray


def start_shard_workers(concurrency: int, *, max_retries: int = 3) -> list[Any]:
    """The job's pool of `concurrency` shard workers, created now (without waiting) if it does not exist yet.

    Connects to the current Ray cluster (or starts a local one). A new Ray connection (another job) or another
    size or retry budget replaces the pool.
    """
    ray = _ray()
    key = (ray.get_runtime_context().get_job_id(), concurrency, max_retries)
    if _POOL.get("key") == key:
        return _POOL["actors"]
    release_shard_workers()
    cls = ray.remote(max_restarts=max_retries, max_task_retries=max_retries)(_ShardWorker)
    actors = [cls.options(scheduling_strategy="SPREAD").remote() for _ in range(concurrency)]
    _POOL.update(key=key, actors=actors)
    return actors


def release_shard_workers() -> None:
    """End the pool's workers (they also end with the driver); the next run starts a new pool."""
    actors = _POOL.pop("actors", [])
    _POOL.pop("key", None)
    if actors:
        import ray

        if ray.is_initialized():
            for actor in actors:
                ray.kill(actor)


def run_shard_tasks(task: Callable[[dict[str, Any]], dict[str, Any]], rows: list[dict[str, Any]], *,
                    concurrency: int, max_retries: int = 3,
                   on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run `task` on every row on the job's shard workers; the results in the order of `rows` (`on_done` is
    called with each result as it arrives, e.g. for progress lines).

    Each worker is given one row at once. While none of them has answered yet (they are starting and importing
    the ingestion code), the driver, which has it imported, writes further rows itself; from the first answer on,
    rows go to the workers only, `IN_FLIGHT_PER_WORKER` at a time each. `LAST_RUN` records the split.
    """
    ray = _ray()
    actors = start_shard_workers(concurrency, max_retries=max_retries)
    task_ref = ray.put(task)  # serialised once, not once per shard
    todo = deque(enumerate(rows))
    pending: dict[Any, tuple[int, Any]] = {}  # object ref -> (row index, actor)
    results: list[dict[str, Any] | None] = [None] * len(rows)
    in_flight = {id(a): 0 for a in actors}

    def submit(actor: Any) -> None:
        index, row = todo.popleft()
        pending[actor.write.remote(task_ref, row)] = (index, actor)
        in_flight[id(actor)] += 1

    for actor in actors:
        if todo:
            submit(actor)
    by_driver = 0
    while todo and not ray.wait(list(pending), num_returns=1, timeout=0)[0]:
        index, row = todo.popleft()  # the workers are still starting: this process writes the shard
        results[index] = task(row)
        by_driver += 1
        if on_done:
            on_done(results[index])
    for actor in actors:
        while todo and in_flight[id(actor)] < IN_FLIGHT_PER_WORKER:
            submit(actor)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index, actor = pending.pop(done[0])
        in_flight[id(actor)] -= 1
        results[index] = ray.get(done[0])
        if on_done:
            on_done(results[index])
        if todo:
            submit(actor)
    LAST_RUN.update(rows=len(rows), by_driver=by_driver, by_workers=len(rows) - by_driver)
    if by_driver:
        log.info("%d of %d shards written by the driver while the shard workers started", by_driver, len(rows))
    return [r for r in results if r is not None]
