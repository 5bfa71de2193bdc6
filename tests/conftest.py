"""Session fixtures: the sample catalogs and one local stack of real servers shared by every `stack` test.

The stack is the same code as `python -m infra.local up` (infra/local/stack.py), started once per test run on
free loopback ports in a temporary state folder, and stopped at the end of the session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from infra.local.samples import build_sample_catalogs
from infra.local.services import free_port
from infra.local.stack import LocalStack, StackConfig

# Ray stays on loopback only when this is set for every Ray process, the test process included.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def catalog_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """Collection JSON + item ndjson files of the sample catalogs, built once per session."""
    return build_sample_catalogs(tmp_path_factory.mktemp("catalogs"))


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory, catalog_files: tuple[Path, ...]) -> Iterator[LocalStack]:
    """The full local stack (STAC API, S3, MLflow, Ray head) for the whole test session."""
    stack = LocalStack(StackConfig(state_dir=tmp_path_factory.mktemp("stack"), stac_hrefs=catalog_files,
                                   ray_num_cpus=4))  # fmt: skip
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack_env(local_stack: LocalStack) -> dict[str, str]:
    """Client variables of the session stack (what its env file exports)."""
    return local_stack.env()


@contextmanager
def _serve(folder: Path, collections: Mapping[str, tuple[Path, Sequence[dict]]]) -> Iterator[str]:
    """`rustac serve` on 127.0.0.1 over collections (id -> (collection.json, item dicts)); yields its URL."""
    files: list[str] = []
    for name, (collection_json, rows) in collections.items():
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "collection.json").write_text(collection_json.read_text())
        (sub / "items.ndjson").write_text("".join(json.dumps(dict(r) | {"links": []}) + "\n" for r in rows))
        files += [str(sub / "collection.json"), str(sub / "items.ndjson")]
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "rustac"), "serve", "--addr", f"127.0.0.1:{port}",
                               *files], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("rustac serve did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def serve_stac() -> Callable[[Path, Mapping[str, tuple[Path, Sequence[dict]]]], AbstractContextManager[str]]:
    """A context manager serving given collections and items with `rustac serve` (a test's own STAC API)."""
    return _serve


@pytest.fixture(scope="session")
def sample_items(catalog_files: tuple[Path, ...]) -> Callable[[str], tuple[Path, list[dict]]]:
    """collection id -> (its collection.json, its item dicts) in the session's sample catalogs."""

    def get(collection: str) -> tuple[Path, list[dict]]:
        items = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
        return items.parent / "collection.json", [json.loads(x) for x in items.read_text().splitlines()]

    return get


class _TokenService(BaseHTTPRequestHandler):
    """Planetary Computer's token protocol on loopback: a fresh SAS token per request (`…&sig=SECRET<n>`)."""

    calls: list[str] = []
    lifetime = timedelta(hours=1)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).calls.append(self.path)
        n = len(type(self).calls)
        expiry = datetime.now(timezone.utc) + type(self).lifetime
        body = json.dumps({"msft:expiry": expiry.isoformat().replace("+00:00", "Z"),
                           "token": f"st=2026&se=2027&sp=rl&sv=2021&sr=c&sig=SECRET{n}"}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sas_service() -> Iterator[tuple[str, list[str]]]:
    """A local SAS token endpoint: (its `sas_url`, the paths it was asked for)."""
    handler = type("TokenService", (_TokenService,), {"calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1", handler.calls
    server.shutdown()
    server.server_close()


LANDCOVER_AREA = "bbox=[-78.7687079,35.772,-78.6914381,35.8061192]"  # the northern third of the scene


@pytest.fixture(scope="session")
def landcover_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled store: configs/ingest-landcover.yaml over the northern third of the Landsat 7 scene, ingested in
    this process from a `rustac serve` of the two collections it needs (the image and its land-cover labels)."""
    import subprocess
    import sys
    import time
    import urllib.request

    from infra.local.catalogs import build_catalogs
    from infra.local.samples import SAMPLES_DIR
    from infra.local.services import free_port, stac_spec
    from pipeline.config import load_config
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.run import run_ingest

    root = tmp_path_factory.mktemp("landcover")
    built = build_catalogs(root / "catalogs", samples_dir=SAMPLES_DIR,
                           only=("landsat-7-nc", "landsat-7-nc-landcover"))  # fmt: skip
    spec = stac_spec([p for c in built for p in (c.collection_json, c.items_ndjson)], port=free_port())
    server = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(spec.health_url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("rustac serve did not start") from None
                time.sleep(0.2)
        config = load_config(IngestConfig, Path(__file__).parents[1] / "configs" / "ingest-landcover.yaml",
                             [f"store={root / 'store'}", LANDCOVER_AREA, "quicklooks=0"])  # fmt: skip
        run_ingest(config, stac_url=spec.urls["STAC_API_URL"], use_ray=False)
    finally:
        server.kill()
        server.wait()
    return root / "store"


@pytest.fixture
def gloo_ranks() -> Callable[[str, Path], list[str]]:
    """Run `script` as `world` local processes of one gloo process group: `python script RANK WORLD PORT OUT`.

    Returns each rank's output; fails the test, with their output, unless every rank exits 0.
    """
    root = Path(__file__).resolve().parents[1]

    def launch(script: str, out: Path, world: int = 2) -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, script, str(r), str(world), str(port), str(out)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(world)]  # fmt: skip
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * world, "\n".join(o[-3000:] for o in outs)
        return outs

    return launch


class CollectedProcess:
    """A subprocess whose merged stdout and stderr a daemon thread collects line by line while it runs, so that a
    test can act on what it prints (`lines`, `output`) without blocking on its pipe."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path, new_session: bool = False) -> None:
        self.proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=new_session)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def collected() -> Callable[..., CollectedProcess]:
    """Start a `CollectedProcess` in the checkout: `collected(argv, env, new_session=False)`."""
    root = Path(__file__).resolve().parents[1]
    return lambda argv, env, **kw: CollectedProcess(argv, env, cwd=root, **kw)
