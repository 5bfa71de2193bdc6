"""A Ray Train worker and then the driver of a pretraining run SIGKILLed; the run continued with `--resume`.

Two DDP ranks (gloo) on a local Ray cluster (each driver's own) train the demo store (16 chips in 8 shards, 2 chips a
batch: 4 steps an epoch per rank), checkpointing every 2 steps to a local run storage. The test reads the
driver's log (the workers' lines reach it through Ray) and acts on what it says:

1. once the step-2 checkpoint is written and step 3 is reported, rank 1's worker process (the pid it logged) is
   SIGKILLed: Ray Train restarts the worker group from the step-2 checkpoint by itself;
2. once the restarted ranks have reported step 5 (a step-4 checkpoint written), the driver is SIGKILLed; the
   job's workers end with it (Ray ends the actors of a dead driver);
3. `jobs/pretrain.py --resume` continues from the latest checkpoint on the storage.

Both resumes must start at the checkpoint's step with the checkpoint's EMA target (its SHA-256), rank 0 must
continue its saved mask stream exactly and rank 1 must draw its own (the ranks' generator states differ); the
finished run has every step exactly once. Costs two Ray Train runs and one worker-group restart (382 s measured
on a heavily shared 2-core machine, ingestion included; each wait is bounded).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from modelops.pretrain import stream_digest
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
RANK = re.compile(r"rank (\d) of 2 on node \w+ \(pid (\d+),")
RESUMED = re.compile(r"rank (\d) resumed from (\S+) at step (\d+) \(epoch \d+, \d+ batches in; target (\w+), "
                     r"mask stream (\w+), torch stream (\w+)\)")  # fmt: skip


class _Driver:
    """`jobs/pretrain.py` as a subprocess whose merged output is collected line by line while it runs."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the run ended ({self.proc.returncode}) before {what}:\n{self.log[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.log[-4000:]}"
            time.sleep(0.1)

    def step_seen(self, step: int, after: int = 0) -> bool:
        return any(re.search(rf"\bstep {step}/{STEPS}\b", line) for line in self.lines[after:])

    def ranks(self, after: int = 0) -> dict[int, int]:
        """rank -> worker pid, as the ranks logged them (the latest attempt's)."""
        return {int(m.group(1)): int(m.group(2)) for m in RANK.finditer("".join(self.lines[after:]))}

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


@pytest.mark.xfail(strict=False, reason="Issue 12 open: races a fast run. In a clean-clone suite on a quiet machine the 8-step run finished (resumes: []) after the SIGKILL of the rank-1 pid it logged, so the kill did not take effect before the end; it passed once on a loaded machine (382 s). Needs a run that waits for the test between steps, not a race with wall time.")
def test_a_killed_worker_then_a_killed_driver_resume_at_the_checkpoint(demo_store: Path, tmp_path: Path,
                                                                       ray_tmp: str) -> None:  # fmt: skip
    storage, name = tmp_path / "runs", "kills"
    run_dir = storage / name
    argv = [sys.executable, "jobs/pretrain.py", "--config", "configs/pretrain-demo.yaml",
            *[a for kv in (f"data.datasets.0.url={demo_store}", "data.patch_sizes_m=[40]", f"run.storage={storage}",
                           f"run.name={name}", "run.workers=2", f"optim.total_steps={STEPS}", "optim.warmup_steps=1",
                           "run.checkpoint_every=2", "run.keep_checkpoints=4")
              for a in ("--set", kv)]]  # fmt: skip
    # each driver starts its own local Ray (ended with the driver, SIGKILL included: Ray's reaper); no tracking
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_TMPDIR"] = ray_tmp  # where Ray records "the current cluster": this test's, not another on the machine
    first = _Driver(argv, env)
    try:
        # 1. rank 1's worker SIGKILLed after the step-2 checkpoint
        first.wait_for("step 3 after the step-2 checkpoint",
                       lambda: first.step_seen(3) and (run_dir / "checkpoint_000002" / "state.json").is_file())
        workers = first.ranks()
        assert sorted(workers) == [0, 1], first.log[-3000:]
        os.kill(workers[1], signal.SIGKILL)
        killed_at = len(first.lines)
        first.wait_for("both ranks resumed", lambda: sorted(first.resumed(killed_at)) == [0, 1])
        restarted = first.resumed(killed_at)
        first.wait_for("step 5 after the restart", lambda: first.step_seen(5, killed_at))
        # 2. the driver SIGKILLed; its workers end with it
        again = first.ranks(killed_at)
        assert set(again.values()).isdisjoint(workers.values()), (workers, again)  # a new worker group
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        assert _gone(list(again.values()), 60) == [], "workers outlived their killed driver"
    finally:
        first.proc.kill()
        first.proc.wait(timeout=30)

    # the worker restart resumed at step 2 with the stored target; rank 0 its saved mask stream, rank 1 its own
    step2 = run_dir / "checkpoint_000002"
    target2 = _sha(step2 / "target.safetensors")
    assert {r: v[1:3] for r, v in restarted.items()} == {0: (2, target2[:16]), 1: (2, target2[:16])}, restarted
    assert restarted[0][3] == _mask_stream(step2) != restarted[1][3], restarted
    assert restarted[0][4] != restarted[1][4], restarted  # the torch streams differ too

    # 3. --resume from the latest checkpoint the killed run left
    latest = max((p for p in run_dir.glob("checkpoint_0*") if (p / "state.json").is_file()), key=lambda p: p.name)
    at = json.loads((latest / "state.json").read_text())["state"]["step"]
    assert at >= 4, latest
    target, stream = _sha(latest / "target.safetensors"), _mask_stream(latest)
    resumed = _Driver([*argv, "--resume"], env)
    try:
        assert resumed.proc.wait(timeout=240) == 0, resumed.log[-4000:]
    finally:
        resumed.proc.kill()
        resumed.proc.wait(timeout=30)
        resumed.reader.join(timeout=10)
    ranks = resumed.resumed()
    assert sorted(ranks) == [0, 1], resumed.log[-3000:]
    assert {r: v[1:3] for r, v in ranks.items()} == {0: (at, target[:16]), 1: (at, target[:16])}, ranks
    assert ranks[0][3] == stream != ranks[1][3] and ranks[0][4] != ranks[1][4], ranks

    # the finished run: every step once (1-2 before the worker's kill, 3-4 redone after it, the rest resumed)
    summary = json.loads((run_dir / "summary.json").read_text())
    final = json.loads((run_dir / f"checkpoint_{STEPS:06d}" / "state.json").read_text())
    assert summary["steps"] == STEPS and [row[0] for row in final["state"]["history"]] == list(range(1, STEPS + 1))
    assert summary["resumes"] == [{"step": 2, "target_sha256": target2},
                                  {"step": at, "target_sha256": target}]  # fmt: skip
