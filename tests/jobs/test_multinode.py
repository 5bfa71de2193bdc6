"""Ingestion on a two-node Ray cluster with no shared filesystem: every intermediate on S3, none on local disk.

Two Ray nodes (`ray.cluster_utils.Cluster`, each its own raylet, object store and workers, all on 127.0.0.1)
stand in for two machines; the session stack gives the STAC API and the S3 server. The job runs as on a cluster:
`python jobs/ingest.py --config ...` as a driver connected to the cluster, started in an empty working directory
in which the cluster's processes were also started. Ray's own session files (logs, sockets, spilled objects) live
in the Ray temp dir, as on any Ray node; the pipeline writes nothing to local disk.

Pretraining on the same cluster is added once jobs/pretrain.py exists (see docs/SCALING.md).
"""

from __future__ import annotations

import os
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
from ray.util.state import list_tasks

from infra.local.services import free_port

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CLIENT_ENV = ("STAC_API_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION",
              "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")  # fmt: skip


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    for _ in range(n):
        ports.append(free_port(exclude=tuple(ports)))
    return ports


@pytest.fixture()
def two_nodes(stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[Cluster, Path, int]]:  # fmt: skip
    """A head and a worker node, started from an empty working directory with the stack's S3 settings.

    Yields the cluster, that working directory and the dashboard port (for the state API).
    """
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # raylets and their workers inherit it
    for key in CLIENT_ENV:  # as a cluster's pods get them: the nodes' environment, not a shared file
        if key in stack_env:
            monkeypatch.setenv(key, stack_env[key])
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = tempfile.mkdtemp(prefix="anysat-mn-")  # short: Unix socket paths must stay < ~107 characters
    # Ray records "the current cluster" under RAY_TMPDIR: keep it in ours, not in the machine-wide default
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    Path(temp_dir, "ray").mkdir()
    gcs, dashboard, client, metrics, agent, agent_grpc, runtime_env, w_metrics, w_agent_grpc, w_runtime_env = (
        _ports(10))  # fmt: skip
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "node_ip_address": "127.0.0.1", "gcs_server_port": gcs, "num_cpus": 1, "temp_dir": temp_dir,
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
            "ray_client_server_port": client, "metrics_export_port": metrics, "dashboard_agent_listen_port": agent,
            "metrics_agent_port": agent_grpc, "runtime_env_agent_port": runtime_env,
            "object_store_memory": 200 * 1024**2,
        })  # fmt: skip
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, object_store_memory=200 * 1024**2,
                         metrics_export_port=w_metrics, metrics_agent_port=w_agent_grpc,
                         runtime_env_agent_port=w_runtime_env)  # fmt: skip
        cluster.wait_for_nodes()
        yield cluster, workdir, dashboard
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_node_ingestion_keeps_every_intermediate_on_s3(two_nodes: tuple[Cluster, Path, int],
                                                           stack_env: dict[str, str]) -> None:  # fmt: skip
    cluster, workdir, dashboard = two_nodes
    prefix = f"tests/multinode-{uuid.uuid4().hex[:8]}"
    store = f"{stack_env['ANYSAT_STORE_URL']}/{prefix}"
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "ingest.py"), "--config", str(ROOT / "configs" / "ingest-demo.yaml"),
         "--set", f"store={store}", "--set", "chips_per_shard=1"],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # every output and intermediate is in the bucket, committed, nothing left half-written
    fs = s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip
    root = store.removeprefix("s3://")
    shards = fs.glob(f"{root}/shards/*.zarr")
    committed = fs.glob(f"{root}/shards/*.zarr/_COMMITTED")
    assert len(shards) >= 2 and len(committed) == len(shards)
    assert len(fs.glob(f"{root}/manifests/*.parquet")) == 1
    for name in ("shards.parquet", "stats.json", "rejects.parquet", "config.json"):
        assert fs.exists(f"{root}/{name}"), name
    assert not fs.glob(f"{root}/_tmp/**/zarr.json") and not fs.glob(f"{root}/manifests/*.tmp-*")

    # nothing on local disk: the working directory of the driver and of the nodes is still empty
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == []

    # the shard tasks ran on both nodes
    nodes = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
    assert len(nodes) == 2
    tasks = list_tasks(address=f"http://127.0.0.1:{dashboard}", filters=[("state", "=", "FINISHED")],
                       limit=10_000, raise_on_missing_output=False)  # fmt: skip
    shard_tasks = [t for t in tasks if "Map" in t.name]
    assert shard_tasks, sorted({t.name for t in tasks})
    assert {t.node_id for t in shard_tasks} == nodes, [(t.name, t.node_id[:8]) for t in shard_tasks]
