"""Service descriptions: the Ray head's ports never collide with each other or with its workers' range."""

from __future__ import annotations

import tempfile
from pathlib import Path

from infra.local.services import ray_spec, ray_temp_dir


def test_ray_ports_are_distinct_and_outside_the_worker_range(tmp_path: Path) -> None:
    for i in range(30):
        spec = ray_spec(state_dir=tmp_path / f"s{i}", num_cpus=2)
        argv = list(spec.argv)
        low = int(argv[argv.index("--min-worker-port") + 1])
        high = int(argv[argv.index("--max-worker-port") + 1])
        ports = list(spec.ports.values())
        assert len(set(ports)) == len(ports)
        assert not any(low <= p <= high for p in ports), (low, high, spec.ports)
        assert spec.env["RAY_AUTH_MODE"] == "disabled" and spec.urls["RAY_ADDRESS"].startswith("http://127.0.0.1:")


def test_ray_keeps_its_session_files_in_the_stack_folder_unless_sockets_would_not_fit(tmp_path: Path) -> None:
    short = Path("/srv/a/.stack")
    assert ray_temp_dir(short) == short / "ray"  # removed with the stack, nothing in /tmp/ray
    deep = tmp_path.joinpath(*["a-long-folder-name"] * 4) / ".stack"
    fallback = ray_temp_dir(deep)
    assert fallback != deep / "ray" and fallback.parent == Path(tempfile.gettempdir())
    assert len(str(fallback)) + 64 <= 107  # Ray's socket paths under it stay within AF_UNIX's limit
    argv = list(ray_spec(state_dir=short, num_cpus=2).argv)
    assert argv[argv.index("--temp-dir") + 1] == str(short / "ray")


def test_the_heads_processes_are_told_their_own_cluster(tmp_path: Path) -> None:
    """Without it, Ray Train's placement-group cleaner fails with "Found multiple active Ray instances" as soon
    as another Ray runs on the machine."""
    spec = ray_spec(state_dir=tmp_path, num_cpus=2)
    assert spec.env["RAY_ADDRESS"] == spec.urls["RAY_GCS_ADDRESS"]
    assert spec.env["RAY_API_SERVER_ADDRESS"] == spec.urls["RAY_ADDRESS"]
