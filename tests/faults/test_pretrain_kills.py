"""A Ray Train worker and then the driver of a pretraining run SIGKILLed; the run continued with `--resume`.

Two DDP ranks (gloo) on a local Ray cluster (each driver's own) train the demo store (16 chips in 8 shards, 2 chips a
batch: 4 steps an epoch per rank) for 32 steps, checkpointing every 2 steps to a local run storage. The test acts
on what the run writes there, not on its forwarded log lines (they arrive late, and tiny steps are fast):

1. once Ray Train has registered a checkpoint (its checkpoint manager's snapshot names one; only a registered
   checkpoint is restored, and registering waits for every rank's report), rank 1's worker process (the pid it
   logged at start) is SIGKILLed: Ray Train restarts the worker group from its latest registered checkpoint, step k;
2. once a complete checkpoint of the restarted ranks (one that records that resume) is on the storage, the driver
   is SIGKILLed; the job's workers end with it (Ray ends the actors of a dead driver);
3. `jobs/pretrain.py --resume` continues from the latest complete checkpoint on the storage, even though Ray had
   not registered it (`modelops.run_storage.newer_checkpoint`): the test removes it from Ray's snapshot, as a
   driver killed a moment earlier (between the upload and the registration) leaves it.

Both resumes must start at their checkpoint's step with its EMA target (its SHA-256), rank 0 must continue its
saved mask stream exactly and rank 1 must draw its own (the ranks' generator states differ); the finished run has
every step exactly once. The kills landed at steps 2 and 6 here; the 32 steps are margin, so that a fast machine
cannot finish the run before the test reacts. Costs two Ray Train runs and one worker-group restart (each wait bounded).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelops.pretrain import stream_digest
from modelops.pretrain_config import PretrainConfig
from modelops.run_storage import existing_checkpoint, worker_scratch_path
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
STEPS = 32  # many more than the kills need (they landed at steps 2 and 6): the run must outlast the test's reactions
RANK = re.compile(r"rank (\d) of 2 on node \w+ \(pid (\d+),")
RESUMED = re.compile(r"rank (\d) resumed from (\S+) at step (\d+) \(epoch \d+, \d+ batches in; target (\w+), "
                     r"mask stream (\w+), torch stream (\w+)\)")  # fmt: skip


class _Driver:
    """`jobs/pretrain.py` as a subprocess whose merged output is collected line by line while it runs (a conftest
    `CollectedProcess`), and what the test reads from it."""

    def __init__(self, run: Any) -> None:
        self.run, self.proc, self.lines, self.reader = run, run.proc, run.lines, run.reader

    @property
    def log(self) -> str:
        return self.run.output

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the run ended ({self.proc.returncode}) before {what}:\n{self.log[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.log[-4000:]}"
            time.sleep(0.1)

    def resumed(self, after: int = 0) -> dict[int, tuple[str, int, str, str, str]]:
        return {int(m.group(1)): (m.group(2), int(m.group(3)), m.group(4), m.group(5), m.group(6))
                for m in RESUMED.finditer("".join(self.lines[after:]))}  # fmt: skip


@pytest.fixture(scope="module")
def demo_store(sample_items, serve_stac, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """The demo store with 240 m chips, 2 a shard (16 chips in 8 shards), ingested in this process from a
    `rustac serve` of the two sample collections it reads."""
    folder = tmp_path_factory.mktemp("pretrain-kills")
    store = folder / "demo-dataset"
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         [f"store={store}", "grid.chip_size_m=240", "chips_per_shard=2"])  # fmt: skip
    collections = {c: sample_items(c) for c in ("sentinel-2-l2a", "sentinel-1-rtc")}
    with serve_stac(folder / "api", collections) as url:
        run_ingest(config, stac_url=url, use_ray=False)
    return store


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mask_stream(checkpoint: Path) -> str:
    from safetensors.torch import load_file

    return stream_digest(load_file(str(checkpoint / "rng.safetensors"))["mask_generator"])


def _workers(ray_tmp: str) -> dict[int, tuple[int, tuple[str, int, str, str, str] | None]]:
    """pid -> (rank, its resume or None) of each Ray Train worker of the test's Ray clusters so far, read from the
    log file Ray writes for each worker process: the driver gets the same lines forwarded, seconds late (measured:
    a restarted rank's "resumed" line reached it after 3 more steps) or never, once it is killed."""
    found = {}
    for path in Path(ray_tmp).glob("ray/session_2*/logs/worker-*"):
        text = path.read_text(errors="replace")
        if m := RANK.search(text):
            r = RESUMED.search(text)
            found[int(m.group(2))] = (int(m.group(1)), r and (r.group(2), int(r.group(3)), *r.group(4, 5, 6)))
    return found


def _registered(run_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train has registered (its checkpoint manager's snapshot on the run
    storage, rewritten in place at each registration), 0 before any or while the file is half written."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _unregister(run_dir: Path, step: int) -> None:
    """Ray Train's snapshot as a driver killed after checkpoint `step`'s upload, before Ray registered it, leaves it:
    without the checkpoints from `step` on. That window is about one health-check interval (here the kills hit it
    by chance only); `--resume` must still start from the newest complete checkpoint, not from Ray's."""
    path = run_dir / "checkpoint_manager_snapshot.json"
    snap = json.loads(path.read_text())
    steps = [int(r["metrics"]["step"]) for r in snap["checkpoint_results"]]
    keep, drop = [i for i, s in enumerate(steps) if s < step], [i for i, s in enumerate(steps) if s >= step]
    assert keep, steps
    if drop:  # the reports Ray had counted before the first dropped one
        snap["current_report_index"] = snap["checkpoint_report_indices"][drop[0]]
        for key in ("checkpoint_results", "checkpoint_report_indices"):
            snap[key] = [snap[key][i] for i in keep]
        snap["latest_checkpoint_result"] = snap["checkpoint_results"][-1]
        path.write_text(json.dumps(snap))


def _resumes(checkpoint: str | None) -> list[dict]:
    """The resumes a complete checkpoint records (its run's restarts); [] for none, or while it is rewritten (a
    restarted rank 0 writes a step's checkpoint again, over an unregistered copy that the killed ranks left)."""
    try:
        return json.loads((Path(str(checkpoint)) / "state.json").read_text())["extra"]["resumes"] if checkpoint else []
    except (OSError, ValueError, KeyError):
        return []


def _gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    """A short temp dir of the drivers' own Ray clusters (Unix socket paths must stay under ~107 characters)."""
    path = tempfile.mkdtemp(prefix="anysat-kills-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_killed_worker_then_a_killed_driver_resume_at_the_checkpoint(demo_store: Path, tmp_path: Path, ray_tmp: str,
                                                                       collected) -> None:  # noqa: ANN001  # fmt: skip
    storage, name = tmp_path / "runs", "kills"
    run_dir = storage / name
    overrides = [f"data.datasets.0.url={demo_store}", "data.patch_sizes_m=[40]", f"run.storage={storage}",
                 f"run.name={name}", "run.workers=2", f"optim.total_steps={STEPS}", "optim.warmup_steps=1",
                 "run.checkpoint_every=2", f"run.keep_checkpoints={STEPS // 2}"]  # fmt: skip
    cfg = load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml", overrides)
    argv = [sys.executable, "jobs/pretrain.py", "--config", "configs/pretrain-demo.yaml",
            *[a for kv in overrides for a in ("--set", kv)]]  # fmt: skip
    # each driver starts its own local Ray (ended with the driver, SIGKILL included: Ray's reaper); no tracking
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_TMPDIR"] = ray_tmp  # where Ray records "the current cluster": this test's, not another on the machine
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.25"  # Ray Train polls its workers (reports, deaths) 4 times a s
    first = _Driver(collected(argv, env))
    try:
        # 1. rank 1's worker SIGKILLed once Ray has registered a checkpoint (so that it restarts from one)
        first.wait_for("both ranks' pids", lambda: sorted(r for r, _ in _workers(ray_tmp).values()) == [0, 1])
        first.wait_for("a checkpoint registered by Ray Train", lambda: _registered(run_dir) >= 2)
        workers = {rank: pid for pid, (rank, _) in _workers(ray_tmp).items()}
        os.kill(workers[1], signal.SIGKILL)
        # 2. the driver SIGKILLed once the restarted ranks have written a checkpoint; its workers end with it
        first.wait_for("a checkpoint of the restarted ranks", lambda: len(_resumes(existing_checkpoint(cfg))) == 1)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        again = {pid: v for pid, v in _workers(ray_tmp).items() if pid not in workers.values()}  # a new group
        assert _gone(list(again), 60) == [], "workers outlived their killed driver"
        # what the killed workers had copied (the restored checkpoint) is still in their scratch folders
        scratch = [worker_scratch_path(str(storage), name, r) for r in (0, 1)]
        left = [str(p) for p in scratch if p.exists()]
        assert left, scratch  # SIGKILLed: no `finally` ran (so the final check below is not vacuous)
    finally:
        first.proc.kill()
        first.proc.wait(timeout=30)

    # the worker restart resumed at Ray's checkpoint with its stored target; rank 0 its saved mask stream, rank 1
    # its own
    restarted = {rank: resume for rank, resume in again.values() if resume}
    assert sorted(restarted) == [0, 1] and restarted[0][1] == restarted[1][1] >= 2, (workers, again)
    k = restarted[0][1]
    ckpt_k = run_dir / f"checkpoint_{k:06d}"
    target_k = _sha(ckpt_k / "target.safetensors")
    assert {r: v[1:3] for r, v in restarted.items()} == {0: (k, target_k[:16]), 1: (k, target_k[:16])}, restarted
    assert restarted[0][3] == _mask_stream(ckpt_k) != restarted[1][3], restarted
    assert restarted[0][4] != restarted[1][4], restarted  # the torch streams differ too

    # 3. --resume from the latest complete checkpoint the killed run left, newer than Ray's registered one
    latest = Path(str(existing_checkpoint(cfg)))
    at = json.loads((latest / "state.json").read_text())["state"]["step"]
    assert k < at < STEPS, (k, latest)
    target, stream = _sha(latest / "target.safetensors"), _mask_stream(latest)
    _unregister(run_dir, at)
    assert _registered(run_dir) < at, _registered(run_dir)
    resumed = _Driver(collected([*argv, "--resume"], env))
    try:
        assert resumed.proc.wait(timeout=420) == 0, resumed.log[-4000:]
    finally:
        resumed.proc.kill()
        resumed.proc.wait(timeout=30)
        resumed.reader.join(timeout=10)
    ranks = resumed.resumed()
    assert sorted(ranks) == [0, 1], resumed.log[-3000:]
    assert {r: v[1:3] for r, v in ranks.items()} == {0: (at, target[:16]), 1: (at, target[:16])}, ranks
    assert ranks[0][3] == stream != ranks[1][3] and ranks[0][4] != ranks[1][4], ranks

    # the finished run: every step once (1..k before the worker's kill, k+1..at after it, the rest resumed)
    summary = json.loads((run_dir / "summary.json").read_text())
    final = json.loads((run_dir / f"checkpoint_{STEPS:06d}" / "state.json").read_text())
    assert summary["steps"] == STEPS and [row[0] for row in final["state"]["history"]] == list(range(1, STEPS + 1))
    assert summary["resumes"] == [{"step": k, "target_sha256": target_k},
                                  {"step": at, "target_sha256": target}]  # fmt: skip
    assert not any(p.exists() for p in scratch), f"left by the killed workers: {left}; after the resumed run: {scratch}"
    shutil.rmtree(run_dir)  # ~90 MB a checkpoint, all kept
