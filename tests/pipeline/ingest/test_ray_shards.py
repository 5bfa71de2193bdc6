"""The job's pool of Ray shard workers: results in order, workers started once per job and reused, the driver
writing shards only until a worker is up, task errors raised, a killed worker restarted and its shard retried
(on the session's Ray head)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.ingest.ray_shards import LAST_RUN, release_shard_workers, run_shard_tasks, start_shard_workers

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ray_driver(stack_env: dict[str, str]) -> Iterator[Any]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=stack_env["RAY_GCS_ADDRESS"], logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    try:
        yield ray
    finally:
        release_shard_workers()
        ray.shutdown()


def _whoami(row: dict[str, Any]) -> dict[str, Any]:
    return {"n": row["n"] * 10, "pid": os.getpid()}


def test_results_in_order_and_the_workers_are_started_once_per_job(ray_driver) -> None:
    rows = [{"n": i} for i in range(9)]
    first = run_shard_tasks(_whoami, rows, concurrency=2, driver_writes=False)
    assert [r["n"] for r in first] == [i * 10 for i in range(9)]
    workers = {r["pid"] for r in first}
    assert 1 <= len(workers) <= 2 and os.getpid() not in workers
    assert LAST_RUN == {"rows": 9, "by_driver": 0, "by_workers": 9}
    again = run_shard_tasks(_whoami, rows[:3], concurrency=2, driver_writes=False)  # same job: same workers
    assert {r["pid"] for r in again} <= workers
    assert start_shard_workers(2) is start_shard_workers(2)
    other = run_shard_tasks(_whoami, rows[:2], concurrency=1, driver_writes=False)  # another size: a new pool
    assert {r["pid"] for r in other}.isdisjoint(workers)


def _slow(row: dict[str, Any]) -> dict[str, Any]:
    time.sleep(row["s"])
    return {"n": row["n"], "pid": os.getpid()}


def test_the_driver_writes_shards_only_until_a_worker_is_up(ray_driver) -> None:
    release_shard_workers()  # a pool that still has to start
    out = run_shard_tasks(_slow, [{"n": i, "s": 0.3} for i in range(12)], concurrency=2)
    assert [r["n"] for r in out] == list(range(12))
    by_driver = [r["n"] for r in out if r["pid"] == os.getpid()]
    assert LAST_RUN["by_driver"] == len(by_driver) >= 1
    assert by_driver == list(range(len(by_driver)))  # the first rows, then none once a worker was up
    ray_driver.get([w.ready.remote() for w in start_shard_workers(2)])  # now the pool is up
    warm = run_shard_tasks(_slow, [{"n": i, "s": 0.1} for i in range(40)], concurrency=2)
    assert LAST_RUN["by_workers"] > LAST_RUN["by_driver"]  # warm workers answer at once: the driver stops
    assert len({r["pid"] for r in warm} - {os.getpid()}) >= 1


def _fails(row: dict[str, Any]) -> dict[str, Any]:
    if row["n"] == 2:
        raise ValueError("shard 2 is broken")
    return row


def test_an_error_in_a_shard_task_fails_the_run(ray_driver) -> None:
    with pytest.raises(Exception, match="shard 2 is broken"):
        run_shard_tasks(_fails, [{"n": i} for i in range(4)], concurrency=2, driver_writes=False)


def test_a_killed_worker_is_restarted_and_its_shard_retried(ray_driver, tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"
    driver = os.getpid()

    def dies_once(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] == 1 and not marker.exists() and os.getpid() != driver:
            marker.write_text("x")
            os._exit(1)  # the worker process dies mid-task
        return {"n": row["n"], "pid": os.getpid()}

    out = run_shard_tasks(dies_once, [{"n": i} for i in range(4)], concurrency=2, max_retries=2,
                          driver_writes=False)  # fmt: skip
    assert marker.exists() and [r["n"] for r in out] == [0, 1, 2, 3]
