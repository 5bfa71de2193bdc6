"""The four local servers of the stack: how each is started, checked and described.

Each service is a pure description (a command line, an environment, a health URL); `infra.local.stack` owns
starting them with `subprocess.Popen`, keeping the real PIDs and stopping them. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HOST",
    "S3_CREDENTIALS",
    "ServiceSpec",
    "free_port",
    "mlflow_spec",
    "ray_spec",
    "ray_temp_dir",
    "s3_spec",
    "server_temp_dir",
    "stac_spec",
]

HOST = "127.0.0.1"

# Dummy credentials of the local S3 server only; moto accepts any. Real deployments take credentials from the
# environment or an IAM role, never from this project.
S3_CREDENTIALS: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "local-stack-key",
    "AWS_SECRET_ACCESS_KEY": "local-stack-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# Keep Ray on the loopback interface: without this Ray binds and connects on the machine's own IP.
RAY_LOOPBACK_ENV: Mapping[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
NO_PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by Ray Train in the driver, passed on


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one server and how to know it is ready.

    Attributes:
        name: Service name (`stac`, `s3`, `mlflow`, `ray`).
        argv: Command line, started without a shell so the recorded PID is the server's own.
        env: Variables added to the current environment for the server process.
        health_url: URL that answers HTTP 200 once the server is ready.
        ports: Named ports the service listens on.
        ready_timeout_s: How long to wait for the health URL before giving up.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    health_url: str
    ports: Mapping[str, int]
    ready_timeout_s: float = 60.0
    urls: Mapping[str, str] = field(default_factory=dict)


def free_port(*, exclude: Sequence[int] = ()) -> int:
    """Return a TCP port on 127.0.0.1 that is free now (the OS picks it), avoiding `exclude`."""
    excluded = set(exclude)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in excluded:
            return port


def _bin(name: str) -> str:
    """Path of a console script installed beside the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def stac_spec(hrefs: Sequence[Path], *, port: int) -> ServiceSpec:
    """A `rustac serve` STAC API over collection JSON and item ndjson files, in memory."""
    if not hrefs:
        raise ValueError("the STAC server needs at least one collection or item file; build the catalogs first")
    argv = (_bin("rustac"), "serve", "--addr", f"{HOST}:{port}", *(str(h) for h in hrefs))
    url = f"http://{HOST}:{port}"
    return ServiceSpec("stac", argv, {}, f"{url}/collections", {"http": port}, 30.0, {"STAC_API_URL": url})


def s3_spec(*, port: int, data_dir: Path) -> ServiceSpec:
    """An S3-compatible object store: moto's S3 with its objects kept in `data_dir` across restarts.

    `infra/local/s3_server.py` is started as a script (it imports moto and werkzeug only), so it runs from any
    working directory.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("s3_server.py")
    argv = (sys.executable, str(script), "--host", HOST, "--port", str(port), "--data-dir", str(data_dir))
    url = f"http://{HOST}:{port}"
    return ServiceSpec("s3", argv, {}, f"{url}/moto-api/", {"http": port}, 30.0, {"S3_ENDPOINT_URL": url})


def mlflow_spec(*, port: int, state_dir: Path, artifacts: str, s3_endpoint: str | None) -> ServiceSpec:
    """An MLflow tracking server: sqlite backend store (model registry on) and proxied artifacts.

    Job execution is switched off and one worker runs: MLflow 3's defaults start several job-runner
    processes of ~240 MB each that this project does not use.
    """
    db = state_dir / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    argv = (
        _bin("mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", HOST, "--port", str(port),
        "--workers", "1",
    )  # fmt: skip
    env: dict[str, str] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if s3_endpoint is not None:
        env |= {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS}
    url = f"http://{HOST}:{port}"
    return ServiceSpec("mlflow", argv, env, f"{url}/health", {"http": port}, 90.0, {"MLFLOW_TRACKING_URI": url})


# Ray puts Unix sockets at `<temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store`: up to 64
# characters after the temp dir, and a socket path may hold at most 107.
_SOCKET_PATH_MAX, _RAY_SOCKET_SUFFIX = 107, 64


def ray_temp_dir(state_dir: Path) -> Path:
    """The stack's Ray temp dir: `<state_dir>/ray`, so that the stack's session files live (and are removed)
    with the stack and nothing goes to /tmp/ray.

    Where that path is too long for Ray's Unix sockets (a deep checkout), a short per-stack folder under the
    system temp dir is used instead; `down` removes it either way.
    """
    own = state_dir.resolve() / "ray"
    if len(str(own)) + _RAY_SOCKET_SUFFIX <= _SOCKET_PATH_MAX:
        return own
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"anysat-ray-{digest}"


def server_temp_dir(state_dir: Path) -> Path | None:
    """The servers' TMPDIR, `<state_dir>/tmp`: what they and the Ray jobs they run put in temporary files (the
    dashboard's multiprocessing `pymp-*` sockets, MLflow's uploads, the jobs' staging folders) is removed with the
    stack instead of piling up in /tmp when a server is stopped by a signal. None (the system's temp dir) where
    a socket path under it could pass 107 characters."""
    own = state_dir.resolve() / "tmp"
    return own if len(str(own)) + len("/pymp-xxxxxxxx/listener-xxxxxxxx") <= _SOCKET_PATH_MAX else None


def ray_spec(*, state_dir: Path, num_cpus: int, exclude: Sequence[int] = (),
             cluster_env: Mapping[str, str] | None = None) -> ServiceSpec:
    """A Ray head with its dashboard (so `ray job submit` works), every port chosen free, on loopback.

    `cluster_env` (the other servers' URLs and the S3 settings) is given to the head, so jobs submitted to it see
    them, as pods of a cluster see theirs.

    `ray start --block` keeps the launching process alive as the parent of the head's processes, so the stack
    can stop exactly this head by its PID instead of `ray stop`, which stops every Ray process on the machine.
    """
    worker_low = 20000 + int(hashlib.sha1(str(state_dir).encode()).hexdigest()[:4], 16) % 20000
    # component ports must stay out of the workers' range, which the OS's ephemeral ports overlap
    taken = set(exclude) | set(range(worker_low, worker_low + 1000))
    names = ("gcs", "dashboard", "client", "object_manager", "node_manager", "agent_http", "agent_grpc",
             "runtime_env", "metrics")  # fmt: skip
    ports: dict[str, int] = {}
    for name in names:
        ports[name] = free_port(exclude=tuple(taken))
        taken.add(ports[name])
    argv = (
        _bin("ray"), "start", "--head", "--block",
        "--node-ip-address", HOST,
        "--port", str(ports["gcs"]),
        "--dashboard-host", HOST, "--dashboard-port", str(ports["dashboard"]),
        "--include-dashboard", "true",
        "--ray-client-server-port", str(ports["client"]),
        "--object-manager-port", str(ports["object_manager"]),
        "--node-manager-port", str(ports["node_manager"]),
        "--dashboard-agent-listen-port", str(ports["agent_http"]),
        "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
        "--runtime-env-agent-port", str(ports["runtime_env"]),
        "--metrics-export-port", str(ports["metrics"]),
        "--min-worker-port", str(worker_low), "--max-worker-port", str(worker_low + 999),
        "--num-cpus", str(num_cpus),
        "--temp-dir", str(ray_temp_dir(state_dir)),
        "--disable-usage-stats",
    )  # fmt: skip
    dashboard = f"http://{HOST}:{ports['dashboard']}"
    # Token auth is switched on once any `ray.init()` has written ~/.ray/auth_token; the local head is
    # loopback-only, so it runs without it (a shared cluster keeps it on).
    # The head's processes (Ray Train's controller and its placement-group cleaner among them) are told their own
    # cluster: without it they look for `gcs_server` processes and fail with "Found multiple active Ray
    # instances" when another Ray runs on the machine (a second stack, a test suite).
    own = {"RAY_ADDRESS": f"{HOST}:{ports['gcs']}", "RAY_API_SERVER_ADDRESS": dashboard}
    # One machine is never preempted: Ray Train's preemption watcher (observability for spot nodes) only adds an
    # error-level line about its restart arguments to every training job's output; shared clusters keep it.
    env = dict(cluster_env or {}) | dict(RAY_LOOPBACK_ENV) | own | {"RAY_USAGE_STATS_ENABLED": "0",
                                                                    "RAY_AUTH_MODE": "disabled",
                                                                    NO_PREEMPTION_WATCHER: "0"}  # fmt: skip
    urls = {"RAY_ADDRESS": dashboard, "RAY_GCS_ADDRESS": f"{HOST}:{ports['gcs']}"}
    return ServiceSpec("ray", argv, env, f"{dashboard}/api/version", ports, 120.0, urls)


def current_env_with(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment plus `extra`, for a child process.

    The interpreter's own bin folder goes first on PATH so that commands the servers run (a Ray job's
    `python jobs/<name>.py`) use the project's environment.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **extra}
