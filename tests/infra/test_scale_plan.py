"""bench/scale_plan.py: the plan's arithmetic holds its invariants (run as the script is run, no fixed outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "scale_plan.py"
# lift every global limit so that compute alone binds the ingestion
UNLIMITED = ["--source-request-limit-per-s", "1e15", "--store-put-limit-per-s", "1e15", "--node-nic-gbit-s", "1e9"]


def _plan(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_works() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--samples-per-s-per-gpu" in out.stdout and "--measure-store" in out.stdout


def test_doubling_nodes_halves_the_compute_bound_wall_time_at_equal_node_hours() -> None:
    four, eight = (_plan(*UNLIMITED, "--ingest-nodes", n)["plan"] for n in ("4", "8"))
    assert four["ingest_bottleneck"] == eight["ingest_bottleneck"] == "compute"
    assert abs(eight["ingest_wall_hours"] / four["ingest_wall_hours"] - 0.5) < 1e-9
    assert eight["ingest_node_hours"] == four["ingest_node_hours"]
    assert eight["ingest_cost"] == four["ingest_cost"]


def test_terabytes_scale_with_chips_and_not_with_how_the_area_is_cut() -> None:
    base = _plan()["plan"]
    double_area = _plan("--area-km2", str(2 * 10.2e6))["plan"]
    assert abs(double_area["chips"] / base["chips"] - 2) < 1e-9
    assert abs(double_area["zarr_tb"] / base["zarr_tb"] - 2) < 1e-9
    halved_chips = _plan("--chip-m", "600")["plan"]  # 4x the chips, a quarter of the pixels each
    assert abs(halved_chips["chips"] / base["chips"] - 4) < 1e-9
    assert abs(halved_chips["zarr_tb"] / base["zarr_tb"] - 1) < 1e-9
    better = _plan("--s2-compression-ratio", "7", "--s1-compression-ratio", "2")["plan"]
    assert abs(better["zarr_tb"] / base["zarr_tb"] - 0.5) < 1e-9
    assert better["zarr_tb_uncompressed"] == base["zarr_tb_uncompressed"]


def test_gpus_follow_the_budget() -> None:
    base = _plan()
    gpus = base["plan"]["train_gpus"]
    samples_gpu_h = base["inputs"]["samples_per_s_per_gpu"] * base["inputs"]["train_hours"] * 3600
    assert (gpus - 1) * samples_gpu_h < base["inputs"]["samples_seen"] <= gpus * samples_gpu_h
    half_time = _plan("--train-hours", str(base["inputs"]["train_hours"] / 2))["plan"]
    assert half_time["train_gpus"] in (2 * gpus - 1, 2 * gpus)


def test_the_bottleneck_moves_from_compute_to_a_shared_limit_as_nodes_grow() -> None:
    rows = _plan("--source-request-limit-per-s", "1000", "--store-get-limit-per-s", "1000")["scaling"]
    walls = [r["ingest_wall_h"] for r in rows]
    assert all(b <= a for a, b in zip(walls, walls[1:], strict=False))
    assert rows[0]["ingest_bound"] == "compute" and rows[-1]["ingest_bound"] == "source request limit"
    assert walls[-1] == walls[-2]  # more nodes no longer help
    samples = [r["train_samples_per_s"] for r in rows]
    assert rows[0]["train_bound"] == "GPU" and rows[-1]["train_bound"] != "GPU"
    assert samples[-1] == samples[-2] < 2 * samples[-2]
