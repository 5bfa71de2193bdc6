"""Helpers the fault cases share: run the Landsat ingestion as a subprocess, read a store's commit markers.

`ingest_job(store, stac_url, env, *sets)` starts `jobs/ingest.py` over the sample Landsat collection with one chip per
shard (many commits, so a fault lands between two of them) into a local or `s3://` store; `committed(store,
env)` maps each committed shard to its `_COMMITTED` marker (chip ids, content hash), the figures a faulty run
is compared on with an uninterrupted one.

`outage(name, kill=False)` is how a fault test takes one of the session stack's servers down: a context manager
that stops it on entry and, on exit (also when the test fails inside it), starts it again on its own port over
its data on disk, then checks that the stack's client variables are what they were and the server answers. Every
later test's `stack_env` (one dict for the session, and the Ray head's job environment, set at its start) keeps
pointing at a live server: a server left dead, or restarted on another port, would make them wait on nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ingest(store: Path | str, stac_url: str, env: Mapping[str, str] | None = None,
            *sets: str) -> subprocess.Popen[bytes]:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "jobs/ingest.py", "--config", "configs/ingest-landsat.yaml", "--no-ray",
         "--set", f"store={store}", "--set", "chips_per_shard=1", "--set", "quicklooks=2",
         *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env={**os.environ, **dict(env or {}), "STAC_API_URL": stac_url}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def _committed(store: Path | str, env: Mapping[str, str] | None = None) -> dict[str, dict]:
    import fsspec

    options = {}
    if str(store).startswith("s3://") and env:
        options = {"endpoint_url": env["AWS_ENDPOINT_URL"], "key": env["AWS_ACCESS_KEY_ID"],
                   "secret": env["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    fs, root = fsspec.core.url_to_fs(str(store), **options)
    fs.invalidate_cache()  # s3fs keeps listings: a store being written must be listed afresh
    markers = fs.glob(f"{root.rstrip('/')}/shards/*.zarr/_COMMITTED")
    return {m.rsplit("/", 2)[-2]: json.loads(fs.cat_file(m)) for m in markers}


@pytest.fixture(scope="session")
def ingest_job() -> Callable[..., subprocess.Popen[bytes]]:
    """`(store, stac_url, env=None, *sets) -> Popen` of the one-chip-per-shard Landsat ingestion (output piped;
    `sets` are further `--set key=value` overrides)."""
    return _ingest


@pytest.fixture(scope="session")
def committed() -> Callable[..., dict[str, dict]]:
    """`(store, env=None) -> {shard id: its _COMMITTED marker}` for a local or s3:// store."""
    return _committed


@contextmanager
def _outage(stack, name: str, *, kill: bool = False) -> Iterator[None]:  # noqa: ANN001 - infra.local LocalStack
    before = stack.env()
    stack.stop_one(name, kill=kill)
    try:
        yield
    finally:
        state = stack.status()[name]
        if not state["alive"]:
            stack.start_again(name)  # its own port, its data on disk
        state = stack.status()[name]
        assert state["healthy"], f"{name} did not come back: {state}"
        assert stack.env() == before, f"{name} came back with other client variables than the session's"


@pytest.fixture
def outage(local_stack) -> Callable[..., AbstractContextManager[None]]:  # noqa: ANN001
    """`with outage(name, kill=False):` a stack server down for the block, back on its port afterwards."""
    return lambda name, kill=False: _outage(local_stack, name, kill=kill)
