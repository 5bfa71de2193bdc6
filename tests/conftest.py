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
