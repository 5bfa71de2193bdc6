"""The session stack's MLflow server stopped in the middle of a pretraining run and started again on its port
(its sqlite database on disk): training goes on, the metrics of the outage are sent when the server is back,
every step is in the run's history exactly once, and the encoder is registered.

The job trains in its own process (`--no-ray`) on a small local demo store, its output going to files (never a
pipe that could fill while the test waits on the server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest

pytestmark = [pytest.mark.faults, pytest.mark.stack, pytest.mark.timeout(900)]  # the session stack may start first (~3 min on a loaded 2-core machine)
ROOT = Path(__file__).resolve().parents[2]
STEPS = 5


def _first_steps_logged(client, experiment: str, name: str, steps: int) -> bool:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return bool(runs) and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= steps


def test_mlflow_stopped_mid_training_gets_the_outage_metrics_when_back(outage, stack_env,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    store = tmp_path / "demo-dataset"
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         [f"store={store}", "grid.chip_size_m=240", "chips_per_shard=2", "quicklooks=0"])  # fmt: skip
    run_ingest(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    name = f"mlflow-outage-{uuid.uuid4().hex[:8]}"
    sets = {"data.datasets.0.url": store, "run.storage": tmp_path / "runs", "run.name": name, "data.batch_size": 2,
            "data.patch_sizes_m": "[40]", "optim.total_steps": STEPS, "optim.warmup_steps": 1,
            "run.checkpoint_every": 0, "run.registered_model": name}  # fmt: skip
    argv = [sys.executable, "jobs/pretrain.py", "--config", "configs/pretrain-demo.yaml", "--no-ray",
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    client = MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        job = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err,
                               env={**os.environ, **stack_env, "PYTHONPATH": str(ROOT)})  # fmt: skip
        deadline = time.monotonic() + 240
        while not _first_steps_logged(client, "anysat-pretrain", name, 2) and job.poll() is None:
            assert time.monotonic() < deadline, "the job logged no metrics"
            time.sleep(0.1)
        assert job.poll() is None, "the job ended before the outage"
        with outage("mlflow"):  # back on its port at the block's end: ~15-30 s here, the job trains on meanwhile
            stopped_while_training = job.poll() is None
        job.wait(timeout=300)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert job.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert stopped_while_training
    assert "MLflow unreachable" in stderr and "MLflow is back" in stderr, stderr[-4000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["tracking"] == "on" and summary["tracking_gap"] == [], summary
    assert summary["version"] == 1 and summary["registration_error"] is None, summary
    history = client.get_metric_history(summary["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # every step once: none lost, none twice
