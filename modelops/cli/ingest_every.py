"""Run incremental ingestion on an interval, each run a `ray job submit` (as a cluster schedule would).

    python jobs/ingest_every.py --config configs/ingest-demo.yaml --interval 3600 [--set store=…] [--max-runs N]

Each run is `ray job submit --working-dir . -- python jobs/ingest.py --config … --incremental` against
`--address` (default `RAY_ADDRESS`, the dashboard URL of the local stack's head); its summary is printed as one
JSON line. Ctrl-C (or SIGTERM) stops the schedule: while waiting it just exits; during a run it stops the
submitted job (`ray job stop`, whose SIGTERM makes the run release its lease) and exits 0. Ctrl-C works even
where the schedule was started with SIGINT ignored (a shell's background `&` ignores it in its children):
the handler is installed explicitly.

No run waits for ever: a run still going after `--run-timeout` seconds (default: the interval) is stopped the
same way and reported with `"status": "timed_out"` (a dashboard that accepts connections and never answers
ends so: Ray's job client sets no HTTP timeout, and the stop's `ray job stop` is skipped when the dashboard does
not answer in 5 s); a submission that cannot reach the cluster (nothing at the address) is reported with
`"status": "submit_failed"` and Ray's error line. Either way the schedule goes on to its next run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.logs import install_redaction

ROOT = Path(__file__).resolve().parents[2]  # the checkout: `ray job submit`'s working dir


def _summary(output: str) -> dict[str, object]:
    """The last JSON object line the ingestion printed (its summary), or the tail of its output."""
    for line in reversed(output.splitlines()):
        if line.startswith("{") and line.rstrip().endswith("}"):
            try:
                return dict(json.loads(line))
            except json.JSONDecodeError:
                continue
    return {"status": "no_summary", "tail": output[-500:]}


def _failure(output: str) -> dict[str, object]:
    """What a run that printed no summary says: `submit_failed` with the error line when `ray job submit` could
    not reach the cluster, else `no_summary` with the tail of the output."""
    errors = [line.strip() for line in output.splitlines() if "Failed to connect to Ray" in line]
    return {"status": "submit_failed", "error": errors[-1][:300]} if errors else _summary(output)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _answers(address: str, timeout_s: float = 5.0) -> bool:
    """Whether the Ray dashboard at `address` answers its version request within `timeout_s`."""
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout_s):  # noqa: S310
            return True
    except (OSError, ValueError):
        return False


def _stop(ray: str, address: str, submission: str, proc: subprocess.Popen[str]) -> str:
    """Stop a submitted job (`ray job stop`, bounded; skipped when the dashboard does not answer, as Ray's client
    would wait on it without a timeout) and its local `ray job submit`; return what that printed."""
    if _answers(address):
        try:
            subprocess.run([ray, "job", "stop", "--address", address, submission], cwd=ROOT, capture_output=True,
                           timeout=120, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            pass
    else:
        print(f"the dashboard at {address} does not answer: {submission} not stopped there", file=sys.stderr,
              flush=True)  # fmt: skip
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # `ray job submit` and anything it started (its own session)
    try:
        return proc.communicate(timeout=30)[0] or ""
    except subprocess.TimeoutExpired:
        return ""


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="ingestion YAML (see configs/)")
    parser.add_argument("--interval", type=float, required=True, help="seconds between the starts of two runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value override")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0: never)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""), help="Ray dashboard URL")
    parser.add_argument("--run-timeout", type=float, default=0.0,
                        help="stop a run still going after this many seconds (0: the interval)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.address:
        print("no Ray address: pass --address or set RAY_ADDRESS (e.g. `set -a; . .stack/env; set +a`)",
              file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also where SIGINT was inherited ignored (a background `&` job)
    limit = args.run_timeout if args.run_timeout > 0 else max(args.interval, 1.0)
    ray = str(Path(sys.executable).parent / "ray")
    run = 0
    try:
        while True:
            run += 1
            started = time.monotonic()
            submission = f"ingest-incremental-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{run}"
            cmd = [ray, "job", "submit", "--address", args.address, "--submission-id", submission,
                   "--working-dir", str(ROOT), "--", "python", "jobs/ingest.py", "--config", args.config,
                   "--incremental", *[a for o in args.overrides for a in ("--set", o)]]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)  # fmt: skip
            try:
                output = proc.communicate(timeout=limit)[0]
                summary = _summary(output) if proc.returncode == 0 else _failure(output)
            except subprocess.TimeoutExpired:
                print(f"run {run} still going after {limit:.0f} s: ray job stop {submission}", file=sys.stderr,
                      flush=True)  # fmt: skip
                output = _stop(ray, args.address, submission, proc)
                summary = {"status": "timed_out", "tail": output[-500:]}
            except KeyboardInterrupt:
                print(f"stopping: ray job stop {submission}", flush=True)
                _stop(ray, args.address, submission, proc)
                raise
            print(json.dumps({"run": run, "submission_id": submission, "exit_code": proc.returncode,
                              "seconds": round(time.monotonic() - started, 1), **summary}), flush=True)  # fmt: skip
            if args.max_runs and run >= args.max_runs:
                return 0
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        print(json.dumps({"stopped": True, "runs": run}), flush=True)
        return 0
