"""The session stack's S3 server killed (SIGKILL) and started again on its port, over its objects on disk, in the
middle of an ingestion and of a Ray Train pretraining run that reads shards from and checkpoints to s3://.

Both runs finish by themselves: s3fs calls retry transient failures (`pipeline.s3_retry`), pyarrow's run storage
retries too, and nothing is lost or duplicated -- the ingested store has the shards, chip ids and content
hashes of an uninterrupted run, the training run every step exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.stack, pytest.mark.timeout(900)]  # the session stack may start first (~3 min on a loaded 2-core machine)
ROOT = Path(__file__).resolve().parents[2]
SMALL = ("bbox=[-106.9251,40.2799,-106.9140,40.2883]", "quicklooks=0")  # 9 chips: S3 commits cost ~6 s each here
OUTAGE_S = 16.0  # longer than botocore's own retries (<= 15 s): only pipeline.s3_retry bridges it; + ~1-2 s restart


def _until(ready: Callable[[], bool], proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_an_s3_restart_mid_ingestion_loses_and_duplicates_nothing(outage, stack_env, sample_items, serve_stac,
                                                                  ingest_job, committed, tmp_path: Path) -> None:  # fmt: skip
    collection, rows = sample_items("landsat-c2-l2")
    store = f"{stack_env['ANYSAT_STORE_URL']}/tests/faults/s3-outage-{uuid.uuid4().hex[:8]}"
    with serve_stac(tmp_path / "api", {"landsat-c2-l2": (collection, rows)}) as url:
        # the reference on local disk: shard ids, chip ids and content hashes do not depend on where a store is
        reference = ingest_job(tmp_path / "ref", url, None, *SMALL)
        ref_out = reference.communicate(timeout=240)[0].decode()
        assert reference.returncode == 0, ref_out[-3000:]
        expected = committed(tmp_path / "ref")
        assert len(expected) >= 4
        run = ingest_job(store, url, stack_env, *SMALL)
        _until(lambda: len(committed(store, stack_env)) >= 2, run)
        assert run.poll() is None, "the run ended before the outage"
        with outage("s3", kill=True):
            time.sleep(OUTAGE_S)
        out = run.communicate(timeout=240)[0].decode()
    assert run.returncode == 0, out[-3000:]
    assert "failed transiently" in out, out[-3000:]  # the run met the outage and retried through it
    final = committed(store, stack_env)
    assert sorted(final) == sorted(expected)  # no shard missing, none extra
    assert {k: v["content_hash"] for k, v in final.items()} == {k: v["content_hash"] for k, v in expected.items()}
    chips = [c for v in final.values() for c in v["chip_ids"]]
    assert len(chips) == len(set(chips)) == sum(v["n_chips"] for v in expected.values())  # lost 0, duplicated 0


def _summary(stdout: str) -> dict:
    """The pretraining summary: the job's one JSON line (`ray job submit` shows the job's output among its own)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"run_id"')))


def test_an_s3_restart_mid_training_on_ray_loses_and_repeats_no_step(outage, stack_env, committed,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    import s3fs

    base = f"{stack_env['ANYSAT_STORE_URL']}/tests/faults/s3-train-{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(ROOT)}
    ingest = subprocess.run([sys.executable, "jobs/ingest.py", "--config", "configs/ingest-demo.yaml", "--no-ray",
                             "--set", f"store={base}/demo", "--set", "grid.chip_size_m=240", "--set", "quicklooks=0",
                             "--set", "chips_per_shard=4"], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ingest.returncode == 0, ingest.stdout[-2000:] + ingest.stderr[-2000:]
    assert sum(v["n_chips"] for v in committed(f"{base}/demo", stack_env).values()) == 16
    steps, run = 6, "outage"
    sets = {"data.datasets.0.url": f"{base}/demo", "run.storage": f"{base}/runs", "run.name": run,
            "data.batch_size": 4, "data.patch_sizes_m": "[40]", "optim.total_steps": steps, "optim.warmup_steps": 1,
            "run.checkpoint_every": 2, "run.keep_checkpoints": 10}  # fmt: skip
    argv = [sys.executable, "jobs/pretrain.py", "--config", "configs/pretrain-demo.yaml",
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    fs = s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip
    root = f"{base.removeprefix('s3://')}/runs/{run}"

    def first_checkpoint() -> bool:
        fs.invalidate_cache()
        return fs.exists(f"{root}/checkpoint_000002/state.json")

    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        job = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, **env})
        _until(first_checkpoint, job, 600)
        assert first_checkpoint() and job.poll() is None, "training ended, or wrote no checkpoint, before the outage"
        with outage("s3", kill=True):
            time.sleep(OUTAGE_S)
        job.wait(timeout=300)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert job.returncode == 0, stdout[-3000:] + stderr[-4000:]
    summary = _summary(stdout)
    assert summary["steps"] == steps
    fs.invalidate_cache()
    state = json.loads(fs.cat(f"{root}/checkpoint_{steps:06d}/state.json"))
    assert [row[0] for row in state["state"]["history"]] == list(range(1, steps + 1))  # no step lost or repeated
    ckpts = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root) if "checkpoint_0" in p)
    assert ckpts == [f"checkpoint_{s:06d}" for s in range(2, steps + 1, 2)]  # every checkpoint, after it too
