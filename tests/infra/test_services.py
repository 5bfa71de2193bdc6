"""Service descriptions: the Ray head's ports never collide with each other or with its workers' range."""

from __future__ import annotations

from pathlib import Path

from infra.local.services import ray_spec


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
