"""jobs/pretrain.py under Ray Train: `ray job submit` on the session stack's Ray head (one worker, checkpoints on
S3, the encoder registered).

The two-node DDP run (workers spread over two loopback nodes, one killed mid-run, resumed from its last
checkpoint with the EMA target intact) is in tests/jobs/test_multinode.py, on the cluster that first ingests its
data to S3: one cluster and one fit for both. This test costs one TorchTrainer.fit (~40 s here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import s3fs

from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_store(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store with 240 m chips (16 chips in 8 shards)."""
    store = tmp_path_factory.mktemp("pretrain-ray") / "demo-dataset"
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         [f"store={store}", "grid.chip_size_m=240", "chips_per_shard=2"])  # fmt: skip
    run_ingest(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    return store


def _s3(stack_env: dict[str, str]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip


def _summary(stdout: str) -> dict[str, object]:
    """The pretraining summary: the job's one JSON line (`ray job submit` shows the job's output among its own)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"run_id"')))


def _sets(**kv: object) -> list[str]:
    return [a for k, v in kv.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


def test_ray_job_submit_trains_checkpoints_on_s3_and_registers(demo_store: Path, stack_env: dict[str, str]) -> None:
    run = f"submit-{uuid.uuid4().hex[:8]}"
    storage = f"{stack_env['ANYSAT_STORE_URL']}/tests/runs"
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", stack_env["RAY_ADDRESS"],
         "--working-dir", str(ROOT), "--", "python", "jobs/pretrain.py", "--config", "configs/pretrain-demo.yaml",
         *_sets(data__datasets__0__url=demo_store, data__patch_sizes_m="[40]", run__storage=storage, run__name=run,
                optim__total_steps=3, optim__warmup_steps=1, run__checkpoint_every=2, run__registered_model=run)],
        capture_output=True, text=True, timeout=900,
        env={**stack_env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    summary = _summary(out.stdout)
    assert summary["steps"] == 3 and summary["tracking"] == "on" and summary["version"] == 1
    fs = _s3(stack_env)
    root = f"{storage.removeprefix('s3://')}/{run}"
    ckpts = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root) if "checkpoint_0" in p)
    assert ckpts == ["checkpoint_000002", "checkpoint_000003"]
    state = json.loads(fs.cat(f"{root}/checkpoint_000003/state.json"))
    assert state["state"]["step"] == 3 and len(state["state"]["history"]) == 3
    assert stack_env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(state)
