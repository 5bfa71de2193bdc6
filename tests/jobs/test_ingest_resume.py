"""A killed ingestion resumes to the same shards as an uninterrupted run: no duplicate, no missing chip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]


def _run(store: Path, stac_url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "jobs/ingest.py", "--config", "configs/ingest-landsat.yaml", "--no-ray",
         "--set", f"store={store}", "--set", "chips_per_shard=1", "--set", "quicklooks=0"],
        cwd=ROOT, env={**os.environ, "STAC_API_URL": stac_url}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _markers(store: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (store / "shards").glob("*.zarr/_COMMITTED")}


def test_kill_minus_9_then_resume_gives_identical_shards(stack_env: dict[str, str], tmp_path: Path) -> None:
    reference = _run(tmp_path / "ref", stack_env["STAC_API_URL"])
    assert reference.wait(timeout=600) == 0, reference.stdout.read().decode()[-2000:] if reference.stdout else ""
    expected = _markers(tmp_path / "ref")
    assert len(expected) >= 6

    victim = _run(tmp_path / "run", stack_env["STAC_API_URL"])
    deadline = time.monotonic() + 300
    while len(_markers(tmp_path / "run")) < 2 and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-run
    victim.wait(timeout=30)
    partial = _markers(tmp_path / "run")
    assert 2 <= len(partial) < len(expected), "the kill must land mid-run"

    resumed = _run(tmp_path / "run", stack_env["STAC_API_URL"])
    out = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, out[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])  # the summary: the last line, one JSON object
    assert summary["shards_skipped"] >= len(partial) and summary["chips_written"] == len(expected) - summary["shards_skipped"]
    final = _markers(tmp_path / "run")
    assert sorted(final) == sorted(expected)  # same deterministic shard ids: none missing, none extra
    assert {k: v["content_hash"] for k, v in final.items()} == {k: v["content_hash"] for k, v in expected.items()}
    chips = [c for v in final.values() for c in v["chip_ids"]]
    assert len(chips) == len(set(chips)) == sum(v["n_chips"] for v in expected.values())
