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
- start-up is kept off the critical path of short jobs: a worker gets shards once it has answered that it is
  up, two in flight at a time so that it never idles between tasks, and until the first worker is up the
  driver (whose process has the code imported already) writes shards itself (`driver_writes`, the
  ingestion's `driver_writes`). On a fresh cluster a worker's start (a Ray worker process importing
  GDAL/rasterio, pandas, zarr codecs: ~1 s of CPU, several seconds on a loaded machine) is then paid by a
  short job only if it outlasts the whole job's work in the driver; a long job hands the driver only its
  first seconds. Results come back in the order of the rows;
- actors are placed round-robin over the cluster's alive nodes that have CPUs (a soft node affinity each, so a
  full or lost node falls back to any other), so shards are written on every node; Ray's SPREAD strategy alone
  put both workers of a two-node test cluster on one node. They need no CPU reservation once started (Ray's
  default for actors), so an idle pool does not hold back a later Ray Train or Ray Data stage of the same job;
  concurrency is the pool's size;
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
    actors = [cls.options(scheduling_strategy=where).remote() for where in _placements(ray, concurrency)]
    _POOL.update(key=key, actors=actors)
    return actors


def _placements(ray: Any, n: int) -> list[Any]:
    """Where each of `n` workers goes: the alive nodes with CPUs in turn (soft affinity), else SPREAD."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(node["NodeID"] for node in ray.nodes()
                   if node.get("Alive") and node.get("Resources", {}).get("CPU"))  # fmt: skip
    if not nodes:
        return ["SPREAD"] * n
    return [NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) for i in range(n)]


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
                    concurrency: int, max_retries: int = 3, driver_writes: bool = True,
                    on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run `task` on every row on the job's shard workers; the results in the order of `rows` (`on_done` is
    called with each result as it arrives, e.g. for progress lines).

    A worker gets rows once it has answered `ready` (it has started and imported the ingestion code),
    `IN_FLIGHT_PER_WORKER` at a time. With `driver_writes`, until the first worker is ready the driver, which has
    the code imported, writes rows itself, so that the workers' start-up is not on the critical path of a short
    job; without it, rows wait for the workers. `LAST_RUN` records the split.
    """
    ray = _ray()
    actors = start_shard_workers(concurrency, max_retries=max_retries)
    task_ref = ray.put(task)  # serialised once, not once per shard
    todo = deque(enumerate(rows))
    starting = {actor.ready.remote(): actor for actor in actors}
    pending: dict[Any, tuple[int, Any]] = {}  # object ref -> (row index, actor)
    results: list[dict[str, Any] | None] = [None] * len(rows)
    by_driver = 0

    def submit(actor: Any) -> None:
        index, row = todo.popleft()
        pending[actor.write.remote(task_ref, row)] = (index, actor)

    while todo and driver_writes and not ray.wait(list(starting), num_returns=1, timeout=0)[0]:
        index, row = todo.popleft()  # no worker is up yet: this process writes the shard
        results[index] = task(row)
        by_driver += 1
        if on_done:
            on_done(results[index])
    while todo or pending:
        waiting = list(pending) + (list(starting) if todo else [])
        done, _ = ray.wait(waiting, num_returns=1)
        if done[0] in starting:
            actor = starting.pop(done[0])
            ray.get(done[0])  # raises if the worker could not start
            for _ in range(IN_FLIGHT_PER_WORKER):
                if todo:
                    submit(actor)
            continue
        index, actor = pending.pop(done[0])
        results[index] = ray.get(done[0])
        if on_done:
            on_done(results[index])
        if todo:
            submit(actor)
    LAST_RUN.update(rows=len(rows), by_driver=by_driver, by_workers=len(rows) - by_driver)
    if by_driver:
        log.info("%d of %d shards written by the driver while the shard workers started", by_driver, len(rows))
    return [r for r in results if r is not None]
