"""The job's pool of Ray shard workers: results in order, workers started once per job and reused, the driver
writing shards only while the workers start, task errors raised, a killed worker restarted and its shard
retried (on the session's Ray head)."""

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
    first = run_shard_tasks(_whoami, rows, concurrency=2)
    assert [r["n"] for r in first] == [i * 10 for i in range(9)]
    workers = {r["pid"] for r in first} - {os.getpid()}
    assert len(workers) == 2  # each worker was given a row before the driver took any
    assert LAST_RUN["by_workers"] >= 2 and LAST_RUN["by_driver"] + LAST_RUN["by_workers"] == 9
    again = run_shard_tasks(_whoami, rows[:3], concurrency=2)  # a second dataset of the same job: same workers
    assert {r["pid"] for r in again} - {os.getpid()} <= workers
    assert start_shard_workers(2) is start_shard_workers(2)
    other = run_shard_tasks(_whoami, rows[:2], concurrency=1)  # another size: a new pool
    assert {r["pid"] for r in other}.isdisjoint(workers)


def _slow_first_two(row: dict[str, Any]) -> dict[str, Any]:
    if row["n"] < 2:
        time.sleep(2.0)  # the workers' first rows: as if they were still starting
    return {"n": row["n"], "pid": os.getpid()}


def test_the_driver_writes_shards_only_while_no_worker_has_answered(ray_driver) -> None:
    out = run_shard_tasks(_slow_first_two, [{"n": i} for i in range(6)], concurrency=2)
    assert [r["n"] for r in out] == list(range(6))
    by_pid = {r["n"]: r["pid"] for r in out}
    assert by_pid[0] != os.getpid() and by_pid[1] != os.getpid()  # given to the workers first
    assert LAST_RUN["by_driver"] == 4 and all(by_pid[n] == os.getpid() for n in range(2, 6))
    fast = run_shard_tasks(_whoami, [{"n": i} for i in range(40)], concurrency=2)  # warm workers answer at once
    assert LAST_RUN["by_workers"] > LAST_RUN["by_driver"] and len({r["pid"] for r in fast}) >= 2


def _fails(row: dict[str, Any]) -> dict[str, Any]:
    if row["n"] == 2:
        raise ValueError("shard 2 is broken")
    return row


def test_an_error_in_a_shard_task_fails_the_run(ray_driver) -> None:
    with pytest.raises(Exception, match="shard 2 is broken"):
        run_shard_tasks(_fails, [{"n": i} for i in range(4)], concurrency=2)


def test_a_killed_worker_is_restarted_and_its_shard_retried(ray_driver, tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"
    driver = os.getpid()

    def dies_once(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] == 1 and not marker.exists() and os.getpid() != driver:
            marker.write_text("x")
            os._exit(1)  # the worker process dies mid-task
        return {"n": row["n"], "pid": os.getpid()}

    out = run_shard_tasks(dies_once, [{"n": i} for i in range(4)], concurrency=2, max_retries=2)
    assert marker.exists() and [r["n"] for r in out] == [0, 1, 2, 3]
