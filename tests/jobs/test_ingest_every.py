"""The local schedule: incremental ingestion as `ray job submit` runs on an interval; Ctrl-C stops it cleanly.

Every wait is bounded: the schedule's output is read by a thread, and when its first summary line does not come
in time (or Ctrl-C does not end it) the schedule is interrupted, then its whole process tree (the `ray job submit`
it started included) is killed, and the test fails showing what it printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.ingest.state import read_runs

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
RUN_S = 240  # the schedule stops a run still going then (one incremental demo run: 30-40 s alone)
FIRST_RUN_S = RUN_S + 150.0  # its summary line is due by then (the stop itself is bounded by ~150 s)
STOP_S = 120.0
# The schedule starts with SIGINT ignored, as a non-interactive shell's `cmd &` starts its children (a suite run in
# the background, a cron wrapper): Ctrl-C must still stop it. Ignored signals stay ignored across exec.
SIGINT_IGNORED = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


class _Schedule:
    """`jobs/ingest_every.py` as a subprocess in its own session (`collected(…, new_session=True)`: its output
    collected by a thread), with bounded waits that end its whole process tree on a timeout."""

    def __init__(self, run: Any) -> None:  # a conftest `CollectedProcess`
        self.run, self.proc, self.lines, self.reader = run, run.proc, run.lines, run.reader

    @property
    def output(self) -> str:
        return self.run.output

    def first_json(self, timeout: float) -> dict:
        """The first line that is a JSON object, within `timeout` s; else the schedule is ended and the test fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("{"):
                    return dict(json.loads(line))
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.2)
        self.end()
        pytest.fail(f"no run summary within {timeout:.0f} s (exit {self.proc.returncode}):\n{self.output[-6000:]}")

    def stop(self, timeout: float) -> int:
        """Ctrl-C, then its exit status within `timeout` s; else the schedule is ended and the test fails."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.end()
            pytest.fail(f"still running {timeout:.0f} s after Ctrl-C:\n{self.output[-6000:]}")
        self.reader.join(timeout=30)
        return code

    def end(self) -> None:
        """Interrupt (the schedule stops its Ray job), then SIGKILL its process tree and group, whatever is left."""
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)


def test_schedule_submits_an_incremental_run_and_stops_on_ctrl_c(stack_env: dict[str, str],
                                                                 collected) -> None:  # noqa: ANN001
    store = f"{stack_env['ANYSAT_STORE_URL']}/tests/every-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **stack_env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    schedule = _Schedule(collected([sys.executable, "-c", SIGINT_IGNORED, sys.executable, "jobs/ingest_every.py",
                                    "--config", "configs/ingest-demo.yaml", "--interval", "3600", "--run-timeout",
                                    str(RUN_S), "--set", f"store={store}", "--set", "quicklooks=0"], env,
                                   new_session=True))  # fmt: skip
    try:
        first = schedule.first_json(FIRST_RUN_S)  # the first run's summary line; then it waits for the next one
        code = schedule.stop(STOP_S)
    finally:
        if schedule.proc.poll() is None:
            schedule.end()
    rest = schedule.output
    assert code == 0, rest
    assert first["run"] == 1 and first["exit_code"] == 0 and first["status"] == "succeeded", first
    assert first["chips_written"] >= 1 and first["submission_id"].startswith("ingest-incremental-")
    assert json.loads(rest.strip().splitlines()[-1]) == {"stopped": True, "runs": 1}
    opts = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    runs = read_runs(store, storage_options=opts)
    assert list(runs["run_id"]) == [first["run_id"]] and list(runs["status"]) == ["succeeded"]



@pytest.mark.parametrize("cluster", ["refusing", "silent"])
def test_a_dead_or_silent_cluster_is_reported_not_waited_on(cluster: str, collected) -> None:  # noqa: ANN001
    """A dashboard address nothing listens on: `ray job submit` fails in seconds and the run says so with its error
    line. One that accepts connections and never answers (Ray's client sets no HTTP timeout, so `ray job submit`
    would wait for ever): the run is stopped after `--run-timeout` and reported `timed_out`; its `ray job stop`,
    which would wait the same way, is skipped when the dashboard does not answer within 5 s."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel's backlog; nothing reads them
        address = "http://127.0.0.1:9" if cluster == "refusing" else f"http://127.0.0.1:{silent.getsockname()[1]}"
        schedule = _Schedule(collected([sys.executable, "jobs/ingest_every.py", "--config", "configs/ingest-demo.yaml",
                                        "--interval", "3600", "--max-runs", "1", "--run-timeout", "10", "--address",
                                        address], env, new_session=True))  # fmt: skip
        try:
            first = schedule.first_json(FIRST_RUN_S)
            code = schedule.proc.wait(timeout=STOP_S)
        finally:
            if schedule.proc.poll() is None:
                schedule.end()
    assert code == 0 and first["run"] == 1, schedule.output[-3000:]
    if cluster == "refusing":
        assert first["status"] == "submit_failed" and first["exit_code"] == 1, first
        assert f"Failed to connect to Ray at address: {address}" in first["error"], first
    else:
        assert first["status"] == "timed_out" and first["seconds"] < 10 + 5 + 30 + 20, first
        assert "does not answer" in schedule.output, schedule.output[-3000:]
