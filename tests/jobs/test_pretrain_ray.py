"""jobs/pretrain.py under Ray Train: `ray job submit` on the session stack's Ray head (one worker, checkpoints on
S3, the encoder registered), and two DDP workers on a two-node loopback cluster (`ray.cluster_utils.Cluster`)
where one worker exits abruptly mid-run and the run resumes from its last checkpoint with the EMA target intact.

Each test costs one TorchTrainer.fit (~40 s here; the second one two attempts), so there are only these two.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs
from ray.cluster_utils import Cluster

from infra.local.services import free_port
from pipeline.config import IngestConfig, load_config
from pipeline.ingest import run_ingest

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CLIENT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
              "FSSPEC_S3_ENDPOINT_URL", "AWS_ALLOW_HTTP")  # fmt: skip


@pytest.fixture(scope="module")
def demo_store(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store with 240 m chips (16 chips in 8 shards: enough for two ranks)."""
    store = tmp_path_factory.mktemp("pretrain-ray") / "demo-dataset"
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         [f"store={store}", "grid.chip_size_m=240", "chips_per_shard=2"])  # fmt: skip
    run_ingest(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    return store


def _s3(stack_env: dict[str, str]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip


def _summary(stdout: str) -> dict[str, object]:
    start = stdout.rindex('{\n  "run_id"')
    return json.loads(stdout[start : stdout.index("\n}", start) + 2])


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


@pytest.fixture()
def two_nodes(stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A head and a worker node of one logical CPU each, on 127.0.0.1, with the stack's S3 settings."""
    for key in CLIENT_ENV:
        if key in stack_env:
            monkeypatch.setenv(key, stack_env[key])
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the nodes' workers import this checkout
    temp_dir = tempfile.mkdtemp(prefix="anysat-tr-")  # short: Unix socket paths must stay < ~107 characters
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    Path(temp_dir, "ray").mkdir()
    ports: list[int] = []
    for _ in range(7):
        ports.append(free_port(exclude=tuple(ports)))
    gcs, client, metrics, agent, runtime_env, w_metrics, w_runtime_env = ports
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "node_ip_address": "127.0.0.1", "gcs_server_port": gcs, "num_cpus": 1, "temp_dir": temp_dir,
            "include_dashboard": False, "ray_client_server_port": client, "metrics_export_port": metrics,
            "metrics_agent_port": agent, "runtime_env_agent_port": runtime_env, "object_store_memory": 200 * 1024**2,
        })  # fmt: skip
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, object_store_memory=200 * 1024**2,
                         metrics_export_port=w_metrics, runtime_env_agent_port=w_runtime_env)  # fmt: skip
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_node_ddp_run_survives_a_killed_worker_with_its_ema_target(two_nodes: Cluster, demo_store: Path,
                                                                        stack_env: dict[str, str]) -> None:  # fmt: skip
    run = f"killed-{uuid.uuid4().hex[:8]}"
    storage = f"{stack_env['ANYSAT_STORE_URL']}/tests/runs"
    out = subprocess.run(
        [sys.executable, "jobs/pretrain.py", "--config", "configs/pretrain-demo.yaml",
         *_sets(data__datasets__0__url=demo_store, data__patch_sizes_m="[40]", run__storage=storage, run__name=run,
                run__workers=2, run__placement="SPREAD", optim__total_steps=5, optim__warmup_steps=1,
                run__checkpoint_every=2, run__keep_checkpoints=3, run__fail_at_step=3, run__registered_model="''")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "RAY_ADDRESS": two_nodes.address, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    # both nodes trained, and the last rank really died after step 3 before any step-4 checkpoint
    nodes = {m.group(1) for m in re.finditer(r"rank \d of 2 on node (\w+)", log)}
    assert nodes == {two_nodes.head_node.node_id, *(n.node_id for n in two_nodes.worker_nodes)}
    assert "fail_at_step=3 (test-only): rank 1 exits abruptly" in log
    summary = _summary(out.stdout)
    assert summary["steps"] == 5
    # the restarted workers started from the step-2 checkpoint, EMA target bit-identical to the stored one
    [resume] = summary["resumes"]  # type: ignore[misc]
    fs = _s3(stack_env)
    root = f"{storage.removeprefix('s3://')}/{run}"
    stored = hashlib.sha256(fs.cat(f"{root}/checkpoint_000002/target.safetensors")).hexdigest()
    assert resume == {"step": 2, "target_sha256": stored}
    final = json.loads(fs.cat(f"{root}/checkpoint_000005/state.json"))
    assert [row[0] for row in final["state"]["history"]] == [1, 2, 3, 4, 5]  # steps 1-2 kept, 3-5 after the restart
