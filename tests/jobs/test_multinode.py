"""Ingestion and pretraining on a two-node Ray cluster with no shared filesystem: every intermediate on S3.

Two Ray nodes (`ray.cluster_utils.Cluster`, each its own raylet, object store and workers, all on 127.0.0.1)
stand in for two machines; the session stack gives the STAC API, the S3 server and the MLflow server (which
proxies artifacts to the bucket). The cluster starts once for the module, from an empty working directory, with
the stack's client variables in the nodes' environment (as a cluster's pods get them) and the nodes' temp dir
(`TMPDIR`) inside Ray's own temp dir. Then, as on a cluster:

1. `python jobs/ingest.py` as a driver connected to the cluster writes the demo store to the bucket;
2. `ray job submit --working-dir . -- python jobs/pretrain.py` trains two DDP workers spread over both nodes on
   the shards just ingested, checkpoints (Ray Train storage) to the bucket, tracks and registers through MLflow;
   the last worker exits abruptly after step 3 and the run resumes from the step-2 checkpoint with its EMA target
   intact.

Throughout, a sampler of `ss -tnp` proves every TCP connection of the cluster's and the clients' processes stays
on loopback, and the working directory is still empty at the end. The pretraining is the suite's only
multi-node TorchTrainer.fit (two attempts, ~60-90 s); it also stands for `ray job submit` of jobs/pretrain.py.
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
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import psutil
import pytest
import s3fs
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from infra.local.services import free_port

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CLIENT_ENV = ("STAC_API_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION",
              "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "AWS_ALLOW_HTTP", "MLFLOW_TRACKING_URI")  # fmt: skip
LOOPBACK = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")


@dataclass
class TwoNodes:
    """The running cluster, its empty working directory, its dashboard port and the loopback sampler."""

    cluster: Cluster
    workdir: Path
    dashboard: int
    sockets: _SocketSampler
    node_ids: set[str] = field(default_factory=set)
    stores: set[tuple[int, int]] = field(default_factory=set)  # (pid, port) of each rank 0's TCPStore


class _SocketSampler(threading.Thread):
    """Samples `ss -tnp` every second: the TCP connections (and listening sockets) of the given process trees.

    Each socket is kept with its owner's pid and each pid's full command line (Ray renames a worker's title with
    every task it runs, so the 15-character name `ss` prints says little)."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = list(roots)
        self.stop = threading.Event()
        self.seen: list[tuple[str, str, str, int]] = []  # (state, local address, peer address, owner pid)
        self.cmdlines: dict[int, str] = {}
        self.samples = 0

    def _pids(self) -> set[int]:
        pids = set(roots := list(self.roots))  # the test thread adds and removes client processes
        for pid in roots:
            try:
                pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                continue
        return pids

    def sample(self) -> None:
        pids = self._pids()
        out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            for pid in {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids if len(parts) >= 5 else ():
                self.seen.append((parts[0], parts[3], parts[4], pid))
                if pid not in self.cmdlines:
                    try:
                        self.cmdlines[pid] = " ".join(psutil.Process(pid).cmdline())
                    except psutil.Error:  # ended since `ss` saw it
                        self.cmdlines[pid] = "?"
        self.samples += 1

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()

    def foreign(self, stores: set[tuple[int, int]] = frozenset()) -> list[tuple[str, str, str, int, str]]:
        """Sockets with an end off loopback: a connection, or a listener bound to every interface.

        One exception, identified by what it is and not by a process title: torch.distributed's rendezvous store
        (TCPStore) always listens on every interface, whatever host it is given (torch 2.13 has no bind
        address; its clients connect over loopback, as checked here). `stores`: (pid, MASTER_PORT) of each
        rank 0 as its worker logged them; a wildcard listener is exempt only there, and in a Ray worker."""
        bad = []
        for state, local, peer, pid in self.seen:
            cmdline = self.cmdlines.get(pid, "?")
            wildcard = local.startswith(("*:", "[::]:", "0.0.0.0:"))
            port = int(local.rsplit(":", 1)[1])
            if state == "LISTEN" and wildcard and (pid, port) in stores and cmdline.startswith("ray::"):
                continue
            if not (local.startswith(LOOPBACK) and (state == "LISTEN" or peer.startswith(LOOPBACK))):
                bad.append((state, local, peer, pid, cmdline))
        return sorted(set(bad))


def rendezvous_stores(log: str) -> set[tuple[int, int]]:
    """(pid, port) of every rank 0's TCPStore, from the workers' `rank 0 of N … (pid P, process group store A:P)`."""
    return {(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"rank 0 of \d+ on node \w+ \(pid (\d+), process group store [^:\s]+:(\d+)\)", log)}


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    for _ in range(n):
        ports.append(free_port(exclude=tuple(ports)))
    return ports


def _cluster_pids(cluster: Cluster) -> list[int]:
    nodes = [cluster.head_node, *cluster.worker_nodes]
    return [p.process.pid for n in nodes for procs in n.all_processes.values() for p in procs if p.process]


@pytest.fixture(scope="module")
def two_nodes(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    """A head and a worker node of one logical CPU each, started from an empty working directory."""
    workdir = tmp_path_factory.mktemp("multinode") / "cwd"
    workdir.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="anysat-mn-")  # short: Unix socket paths must stay < ~107 characters
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)  # raylets and their workers inherit it
        for key in CLIENT_ENV:  # as a cluster's pods get them: the nodes' environment, not a shared file
            if key in stack_env:
                mp.setenv(key, stack_env[key])
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("PYTHONPATH", str(ROOT))  # the nodes' workers import this checkout (a cluster's image has it)
        mp.setenv("RAY_TMPDIR", temp_dir)  # Ray records "the current cluster" here: ours, not the machine's
        mp.setenv("TMPDIR", str(Path(temp_dir, "scratch")))  # scratch files of every process: in Ray's temp dir
        Path(temp_dir, "ray").mkdir()
        Path(temp_dir, "scratch").mkdir()
        gcs, dashboard, client, metrics, agent, agent_grpc, runtime_env, w_metrics, w_agent_grpc, w_runtime_env = (
            _ports(10))  # fmt: skip
        cluster = sampler = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={
                "node_ip_address": "127.0.0.1", "gcs_server_port": gcs, "num_cpus": 1, "temp_dir": temp_dir,
                "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
                "ray_client_server_port": client, "metrics_export_port": metrics,
                "dashboard_agent_listen_port": agent, "metrics_agent_port": agent_grpc,
                "runtime_env_agent_port": runtime_env, "object_store_memory": 200 * 1024**2,
            })  # fmt: skip
            cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, object_store_memory=200 * 1024**2,
                             metrics_export_port=w_metrics, metrics_agent_port=w_agent_grpc,
                             runtime_env_agent_port=w_runtime_env)  # fmt: skip
            cluster.wait_for_nodes()
            sampler = _SocketSampler(_cluster_pids(cluster))
            sampler.start()
            yield TwoNodes(cluster, workdir, dashboard, sampler,
                           node_ids={cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)})
        finally:
            if sampler is not None:
                sampler.stop.set()
                sampler.join()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _s3(stack_env: dict[str, str]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip


def _run(mn: TwoNodes, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A client process in the cluster's working directory; its process tree is watched by the socket sampler."""
    proc = subprocess.Popen(argv, cwd=mn.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})  # fmt: skip
    mn.sockets.roots.append(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
        mn.sockets.roots.remove(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _assert_nothing_local(mn: TwoNodes) -> None:
    """Nothing on local disk: the working directory of the clients and of the nodes is still empty."""
    assert sorted(p.relative_to(mn.workdir).as_posix() for p in mn.workdir.rglob("*")) == []
    mn.sockets.sample()
    assert mn.sockets.samples >= 2 and len(mn.sockets.seen) > 100, (mn.sockets.samples, len(mn.sockets.seen))
    assert mn.sockets.foreign(mn.stores) == [], mn.sockets.foreign(mn.stores)[:20]


@dataclass
class Ingested:
    store: str  # what the ingestion job wrote on the cluster, and its output
    out: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def ingested(two_nodes: TwoNodes, stack_env: dict[str, str]) -> Ingested:
    """`python jobs/ingest.py` on the cluster, once per module: the input of both tests, each runnable alone."""
    prefix = f"tests/multinode-{uuid.uuid4().hex[:8]}"
    store = f"{stack_env['ANYSAT_STORE_URL']}/{prefix}/demo-dataset"
    # 240 m chips, 2 per shard: 16 chips in 8 shards, enough for the pretraining's two ranks; every shard on the
    # cluster's shard workers (the driver does not stand in while they start)
    out = _run(two_nodes, [sys.executable, str(ROOT / "jobs" / "ingest.py"), "--config",
                           str(ROOT / "configs" / "ingest-demo.yaml"), "--set", f"store={store}",
                           "--set", "grid.chip_size_m=240", "--set", "chips_per_shard=2",
                           "--set", "driver_writes=false"], {"RAY_ADDRESS": two_nodes.cluster.address})  # fmt: skip
    return Ingested(store, out)


def _ingested_ok(ingested: Ingested) -> str:
    out = ingested.out
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]  # a failure here, never a skip
    return ingested.store


def test_two_node_ingestion_keeps_every_intermediate_on_s3(two_nodes: TwoNodes, ingested: Ingested,
                                                           stack_env: dict[str, str]) -> None:  # fmt: skip
    mn = two_nodes
    store = _ingested_ok(ingested)

    # every output and intermediate is in the bucket, committed, nothing left half-written
    fs = _s3(stack_env)
    root = store.removeprefix("s3://")
    shards = fs.glob(f"{root}/shards/*.zarr")
    committed = fs.glob(f"{root}/shards/*.zarr/_COMMITTED")
    assert len(shards) >= 2 and len(committed) == len(shards)
    assert len(fs.glob(f"{root}/manifests/*.parquet")) == 1
    for name in ("shards.parquet", "stats.json", "rejects.parquet", "config.json"):
        assert fs.exists(f"{root}/{name}"), name
    assert not fs.glob(f"{root}/_tmp/**/zarr.json") and not fs.glob(f"{root}/manifests/*.tmp-*")
    _assert_nothing_local(mn)

    # shard workers on both nodes, and each one up while shards were handed out wrote some (one up after the last
    # was handed out rightly wrote none: pipeline/ingest/ray_shards.py; "both nodes wrote" raced worker start-up)
    assert len(mn.node_ids) == 2
    address = f"http://127.0.0.1:{mn.dashboard}"
    actors = list_actors(address=address, filters=[("class_name", "=", "_ShardWorker")], raise_on_missing_output=False)
    assert {a.node_id for a in actors} == mn.node_ids, [(a.node_id, a.state) for a in actors]
    tasks = list_tasks(address=address, filters=[("state", "=", "FINISHED")], limit=10_000, detail=True,
                       raise_on_missing_output=False)  # with its times  # fmt: skip
    shard_tasks = [t for t in tasks if t.name.endswith("_ShardWorker.write")]
    assert shard_tasks, sorted({t.name for t in tasks})
    # the measured timeline: when each shard worker was up (ready) and when and where each shard was handed out
    timeline = sorted((t.end_time_ms if t.name.endswith("ready") else t.creation_time_ms, t.name.rsplit(".")[-1],
                       (t.node_id or "?")[:8], t.worker_pid) for t in tasks if "_ShardWorker." in t.name)  # fmt: skip
    last_handed_out, wrote = max(t.creation_time_ms for t in shard_tasks), {t.worker_pid for t in shard_tasks}
    idle = [t for t in tasks if t.name.endswith("_ShardWorker.ready") and t.worker_pid not in wrote
            and t.end_time_ms < last_handed_out]  # fmt: skip
    assert not idle, f"a shard worker was up but got no shard while shards were handed out: {timeline}"


def _summary(stdout: str) -> dict[str, object]:
    """The pretraining summary: the job's one JSON line (`ray job submit` shows the job's output among its own)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"run_id"')))


def _sets(**kv: object) -> list[str]:
    return [a for k, v in kv.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


def test_two_node_pretraining_from_s3_survives_a_killed_worker(two_nodes: TwoNodes, ingested: Ingested,
                                                               stack_env: dict[str, str]) -> None:  # fmt: skip
    mn = two_nodes
    store = _ingested_ok(ingested)
    run = f"mn-{uuid.uuid4().hex[:8]}"
    storage = f"{store.rsplit('/', 1)[0]}/runs"
    out = _run(mn, [sys.executable, str(ROOT / "jobs" / "pretrain.py"), "--config",
                    str(ROOT / "configs" / "pretrain-demo.yaml"),
                    *_sets(data__datasets__0__url=store, data__patch_sizes_m="[40]", run__storage=storage,
                           run__name=run, run__workers=2, run__placement="SPREAD", optim__total_steps=5,
                           optim__warmup_steps=1, run__checkpoint_every=2, run__keep_checkpoints=3,
                           run__fail_at_step=3, run__registered_model=run)],
               {"RAY_ADDRESS": mn.cluster.address})  # fmt: skip
    log = out.stdout + out.stderr
    mn.stores |= rendezvous_stores(log)
    assert out.returncode == 0, log[-6000:]
    assert len(mn.stores) == 2, mn.stores  # rank 0 of the first attempt and of the restarted one
    # both nodes trained, and the last rank really died after step 3 before any step-4 checkpoint
    nodes = {m.group(1) for m in re.finditer(r"rank \d of 2 on node (\w+)", log)}
    assert nodes == mn.node_ids
    assert "fail_at_step=3 (test-only): rank 1 exits abruptly" in log
    summary = _summary(out.stdout)
    assert summary["steps"] == 5 and summary["tracking"] == "on", summary
    assert summary["version"] == 1, [line for line in log.splitlines() if "WARN" in line or "rror" in line][-20:]

    # checkpoints (Ray Train storage) in the bucket: every 2 steps and at the end, the 3 newest kept
    fs = _s3(stack_env)
    root = f"{storage.removeprefix('s3://')}/{run}"
    ckpts = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root) if "checkpoint_0" in p)
    assert ckpts == ["checkpoint_000002", "checkpoint_000004", "checkpoint_000005"]
    # the restarted workers started from the step-2 checkpoint, EMA target bit-identical to the stored one
    [resume] = summary["resumes"]  # type: ignore[misc]
    stored = hashlib.sha256(fs.cat(f"{root}/checkpoint_000002/target.safetensors")).hexdigest()
    assert resume == {"step": 2, "target_sha256": stored}
    final = fs.cat(f"{root}/checkpoint_000005/state.json").decode()
    state = json.loads(final)
    assert state["state"]["step"] == 5
    assert [row[0] for row in state["state"]["history"]] == [1, 2, 3, 4, 5]  # 1-2 kept, 3-5 after the restart
    assert stack_env["AWS_SECRET_ACCESS_KEY"] not in final

    # MLflow's artifacts (stats, loss curve, config, the registered encoder) went through its server to the bucket
    bucket = stack_env["ANYSAT_STORE_URL"].removeprefix("s3://").split("/")[0]
    client = mlflow.MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    source = client.get_model_version(run, "1").source  # models:/<logged model id> (MLflow 3) or an artifact URI
    location = (client.get_logged_model(source.removeprefix("models:/")).artifact_location
                if source.startswith("models:/") else source)  # fmt: skip
    assert location.startswith("mlflow-artifacts:/"), location  # proxied by the server, not written by the client
    stored = fs.find(f"{bucket}/mlflow")
    run_files = {p.rsplit("/", 1)[-1] for p in stored if f"/{summary['run_id']}/" in p}
    model_dir = f"{bucket}/mlflow/{location.removeprefix('mlflow-artifacts:/').strip('/')}/"
    model_files = {p.rsplit("/", 1)[-1] for p in stored if p.startswith(model_dir)}
    assert {"loss_curve.png", "config.json", "stats-demo-dataset.json"} <= run_files, run_files
    assert {"model.safetensors", "MLmodel"} <= model_files, (model_dir, [p for p in stored if "models" in p][:10])
    _assert_nothing_local(mn)


def test_the_socket_check_exempts_only_the_logged_rendezvous_store() -> None:
    """A wildcard listener is foreign unless it is the (pid, port) a rank 0 logged, whatever its process title."""
    code = ("import socket, sys, ray._raylet as r; r.setproctitle('ray::RayTrainWorker.train'); "
            "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
            "sys.stdin.read()")  # a planted listener titled like a Ray Train worker, on every interface
    planted = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(planted.stdout.readline())  # type: ignore[union-attr]
        sampler = _SocketSampler([planted.pid])
        sampler.sample()
        [(state, local, _, pid, cmdline)] = sampler.foreign()
        assert (state, local, pid) == ("LISTEN", f"0.0.0.0:{port}", planted.pid)
        assert cmdline.startswith("ray::RayTrainWorker") and psutil.Process(pid).name().startswith("ray::RayTrainWo")
        assert sampler.foreign({(planted.pid, port + 1), (planted.pid + 1, port)}) != []  # another port or pid
        assert sampler.foreign({(planted.pid, port)}) == []  # the store rank 0 logged: exempt
        assert rendezvous_stores(f"rank 0 of 2 on node ab (pid {planted.pid}, process group store 0:{port})") == {
            (planted.pid, port)}
    finally:
        planted.kill()
        planted.wait()
