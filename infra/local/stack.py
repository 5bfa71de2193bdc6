"""The local stack: start, check, describe and stop the project's real servers on 127.0.0.1.

`up` is idempotent (servers already running and healthy are kept), records every server's real PID, ports and
log file in `<state_dir>/state.json`, and writes `<state_dir>/env` with the variables clients need
(`STAC_API_URL`, `AWS_*`/`FSSPEC_S3_ENDPOINT_URL` for s3fs, `MLFLOW_TRACKING_URI`, `RAY_ADDRESS`). `down` stops
each server's whole process group by PID and then any process left holding the stack's Ray temp dir. The pytest
fixtures and the `python -m infra.local` CLI both use this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from infra.local.services import (
    HOST,
    S3_CREDENTIALS,
    ServiceSpec,
    current_env_with,
    free_port,
    mlflow_spec,
    ray_spec,
    ray_temp_dir,
    s3_spec,
    server_temp_dir,
    stac_spec,
)

__all__ = ["ALL_SERVICES", "LocalStack", "RunningService", "StackConfig", "StackError"]

log = logging.getLogger(__name__)

ALL_SERVICES: tuple[str, ...] = ("s3", "stac", "mlflow", "ray")  # in start order: Ray last, it gets the others' URLs


class StackError(RuntimeError):
    """A server of the local stack failed to start or to answer its health check."""


@dataclass(frozen=True)
class StackConfig:
    """What the local stack runs and where it keeps its state.

    Attributes:
        state_dir: Folder for state.json, env, logs, the MLflow database, local artifacts and the S3 server's
            objects (`s3/`, kept across `down` and `up`; remove the folder to start empty).
        services: Which servers to run, a subset of `ALL_SERVICES`.
        stac_hrefs: Collection JSON and item ndjson files served by the STAC API.
        bucket: Bucket created on the S3 server; MLflow artifacts go under `s3://<bucket>/mlflow`.
        ray_num_cpus: Logical CPUs the Ray head advertises.
    """

    state_dir: Path
    services: tuple[str, ...] = ALL_SERVICES
    stac_hrefs: tuple[Path, ...] = ()
    bucket: str = "anysat"
    ray_num_cpus: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(ALL_SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; expected a subset of {list(ALL_SERVICES)}")


@dataclass(frozen=True)
class RunningService:
    """A started server: its PID (the process-group leader), ports, client variables and log file."""

    name: str
    pid: int
    ports: dict[str, int]
    urls: dict[str, str]
    log_file: str
    argv: list[str]


class LocalStack:
    """Start, check, describe and stop the local servers described by a `StackConfig`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.state_file = self.state_dir / "state.json"
        self.env_file = self.state_dir / "env"

    # -- state ---------------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, RunningService]:
        if not self.state_file.exists():
            return {}
        raw = json.loads(self.state_file.read_text())
        return {name: RunningService(**svc) for name, svc in raw.get("services", {}).items()}

    def _write_state(self, services: Mapping[str, RunningService]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        payload = {"services": {n: asdict(s) for n, s in services.items()}, "bucket": self.config.bucket}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        tmp.replace(self.state_file)
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in sorted(self._env(services).items())))
        self.env_file.chmod(0o600)

    def _env(self, services: Mapping[str, RunningService]) -> dict[str, str]:
        env: dict[str, str] = {}
        for svc in services.values():
            env |= svc.urls
        if "s3" in services:
            endpoint = services["s3"].urls["S3_ENDPOINT_URL"]
            env |= dict(S3_CREDENTIALS) | {
                "AWS_ENDPOINT_URL": endpoint,  # boto3 / aiobotocore (s3fs)
                "FSSPEC_S3_ENDPOINT_URL": endpoint,  # fsspec's config for s3fs
                "AWS_ALLOW_HTTP": "true",  # obstore over plain HTTP
                "ANYSAT_STORE_URL": f"s3://{self.config.bucket}",
            }
        if "ray" in services:
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            env["RAY_AUTH_MODE"] = "disabled"  # clients of the loopback-only local head (see services.ray_spec)
        return env

    # -- public API ----------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Client variables of the servers recorded as running (what `<state_dir>/env` holds)."""
        return self._env(self._read_state())

    def status(self) -> dict[str, dict[str, object]]:
        """For each recorded server: alive, healthy, PID, URLs and resident memory of its process tree (MiB)."""
        report: dict[str, dict[str, object]] = {}
        for name, svc in self._read_state().items():
            procs = _process_tree(svc.pid)
            rss = sum(_rss(p) for p in procs) / 2**20
            report[name] = {
                "pid": svc.pid,
                "alive": _alive(svc.pid),
                "healthy": _alive(svc.pid) and _healthy(_health_url(svc)),
                "urls": svc.urls,
                "processes": len(procs),
                "rss_mib": round(rss, 1),
            }
        return report

    def up(self) -> dict[str, str]:
        """Start every configured server that is not already running and healthy; return the client env."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        services = self._read_state()
        for name in list(services):
            svc = services[name]
            if not (_alive(svc.pid) and _healthy(_health_url(svc))):
                log.warning("%s (pid %d) is not healthy; restarting it", name, svc.pid)
                _stop_group(svc.pid)
                del services[name]
        taken = [p for s in services.values() for p in s.ports.values()]
        for name in self.config.services:  # s3 first: MLflow's artifacts live on it
            if name in services:
                continue
            spec = self._spec(name, services, taken)
            services[name] = self._start(spec)
            taken.extend(spec.ports.values())
            if name == "s3":
                self._create_bucket(services["s3"].urls["S3_ENDPOINT_URL"])
            self._write_state(services)
        self._write_state(services)
        return self._env(services)

    def down(self) -> None:
        """Stop every recorded server and any process left in the stack's Ray temp dir."""
        for name, svc in self._read_state().items():
            log.info("stopping %s (pid %d)", name, svc.pid)
            _stop_group(svc.pid)
        for proc in _processes_mentioning(str(ray_temp_dir(self.state_dir))):
            _stop_group(proc.pid)
        shutil.rmtree(ray_temp_dir(self.state_dir), ignore_errors=True)
        if server_temp_dir(self.state_dir) is not None:
            shutil.rmtree(server_temp_dir(self.state_dir), ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)

    def stop_one(self, name: str, *, kill: bool = False) -> None:
        """Stop one server (SIGKILL at once when `kill`, as a crash) and keep its record for `start_again`."""
        svc = self._read_state()[name]
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(svc.pid, signal.SIGKILL)
            psutil.wait_procs(_process_tree(svc.pid), timeout=10)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(svc.pid, os.WNOHANG)
        else:
            _stop_group(svc.pid)

    def start_again(self, name: str) -> RunningService:
        """Start a stopped or crashed server again on its own ports, over its data on disk (S3's objects,
        MLflow's database): clients configured before the outage reach it unchanged."""
        services = self._read_state()
        if name == "ray" or _alive(services[name].pid):
            raise StackError(f"{name} is running or cannot be restarted in place; use down and up")
        services[name] = self._start(self._spec(name, services, [], port=services[name].ports["http"]))
        self._write_state(services)
        return services[name]

    def pids(self) -> list[int]:
        """PIDs of every process the running servers own (used by tests to prove `down` leaves none)."""
        return [p.pid for svc in self._read_state().values() for p in _process_tree(svc.pid)]

    # -- internals -----------------------------------------------------------------------------------------
    def _spec(self, name: str, services: Mapping[str, RunningService], taken: Sequence[int],
              port: int | None = None) -> ServiceSpec:  # fmt: skip
        port = port or free_port(exclude=taken)
        if name == "stac":
            return stac_spec(self.config.stac_hrefs, port=port)
        if name == "s3":
            return s3_spec(port=port, data_dir=self.state_dir / "s3")
        if name == "mlflow":
            s3 = services.get("s3")
            if s3 is not None:
                artifacts, endpoint = f"s3://{self.config.bucket}/mlflow", s3.urls["S3_ENDPOINT_URL"]
            else:
                artifacts, endpoint = str(self.state_dir / "mlflow" / "artifacts"), None
            return mlflow_spec(port=port, state_dir=self.state_dir, artifacts=artifacts,
                               s3_endpoint=endpoint)  # fmt: skip
        cluster_env = {k: v for k, v in self._env(services).items() if not k.startswith("RAY_")}
        return ray_spec(state_dir=self.state_dir, num_cpus=self.config.ray_num_cpus, exclude=taken,
                        cluster_env=cluster_env)  # fmt: skip

    def _start(self, spec: ServiceSpec) -> RunningService:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"{spec.name}.log"
        log.debug("starting %s: %s", spec.name, " ".join(spec.argv))
        tmp = server_temp_dir(self.state_dir)
        if tmp is not None:
            tmp.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.argv)}\n".encode())  # the command line
            out.flush()
            proc = subprocess.Popen(  # noqa: S603 - argv is built by services.py, no shell
                spec.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=current_env_with({**spec.env, **({"TMPDIR": str(tmp)} if tmp else {})}), cwd=self.state_dir,
                start_new_session=True,
            )  # fmt: skip
        svc = RunningService(spec.name, proc.pid, dict(spec.ports), dict(spec.urls), str(log_file), list(spec.argv))
        deadline = time.monotonic() + spec.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{spec.name} exited with code {proc.returncode} while starting; see {log_file}")
            if _healthy(spec.health_url):
                log.info("%s ready (pid %d) at %s", spec.name, proc.pid, spec.health_url)
                return svc
            time.sleep(0.25)
        _stop_group(proc.pid)
        raise StackError(f"{spec.name} did not answer {spec.health_url} within {spec.ready_timeout_s:.0f} s; "
                         f"see {log_file}")  # fmt: skip

    def _create_bucket(self, endpoint: str) -> None:
        import boto3  # local import: only the stack needs boto3 directly

        client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
                              aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.config.bucket not in existing:
            client.create_bucket(Bucket=self.config.bucket)


def _health_url(svc: RunningService) -> str:
    if svc.name == "ray":
        return f"{svc.urls['RAY_ADDRESS']}/api/version"
    if svc.name == "stac":
        return f"{svc.urls['STAC_API_URL']}/collections"
    if svc.name == "s3":
        return f"{svc.urls['S3_ENDPOINT_URL']}/moto-api/"
    return f"{svc.urls['MLFLOW_TRACKING_URI']}/health"


def _healthy(url: str) -> bool:
    assert url.startswith(f"http://{HOST}:"), url  # loopback only, by construction
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback http URL built above
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _stop_group(pid: int, *, grace_s: float = 5.0) -> None:
    """SIGTERM the process tree and group led by `pid`, wait, then SIGKILL what is left."""
    procs = _process_tree(pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:  # reap our own child if we started it in this process
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
