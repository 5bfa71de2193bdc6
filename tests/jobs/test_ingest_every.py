"""The local schedule: incremental ingestion as `ray job submit` runs on an interval; Ctrl-C stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.ingest.state import read_runs

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.xfail(strict=False, raises=subprocess.TimeoutExpired, reason="Issue 11/12 open: passes alone (38 s) but timed out twice in a full clean-clone suite after the fault tests were added (they stop and restart the stack's servers); cause not found yet")
def test_schedule_submits_an_incremental_run_and_stops_on_ctrl_c(stack_env: dict[str, str]) -> None:
    store = f"{stack_env['ANYSAT_STORE_URL']}/tests/every-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **stack_env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "jobs/ingest_every.py", "--config", "configs/ingest-demo.yaml",
                             "--interval", "3600", "--set", f"store={store}", "--set", "quicklooks=0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())  # the first run's summary line; then it waits for the next one
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest
    assert first["run"] == 1 and first["exit_code"] == 0 and first["status"] == "succeeded", first
    assert first["chips_written"] >= 1 and first["submission_id"].startswith("ingest-incremental-")
    assert json.loads(rest.strip().splitlines()[-1]) == {"stopped": True, "runs": 1}
    opts = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    runs = read_runs(store, storage_options=opts)
    assert list(runs["run_id"]) == [first["run_id"]] and list(runs["status"]) == ["succeeded"]
