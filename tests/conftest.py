"""Session fixtures: the sample catalogs and one local stack of real servers shared by every `stack` test.

The stack is the same code as `python -m infra.local up` (infra/local/stack.py), started once per test run on
free loopback ports in a temporary state folder, and stopped at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.samples import build_sample_catalogs
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
