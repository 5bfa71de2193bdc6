"""Run incremental ingestion on an interval, each run a `ray job submit` (as a cluster schedule would).

    python jobs/ingest_every.py --config configs/ingest-demo.yaml --interval 3600 [--set store=…] [--max-runs N]

Each run is `ray job submit --working-dir . -- python jobs/ingest.py --config … --incremental` against
`--address` (default `RAY_ADDRESS`, the dashboard URL of the local stack's head); its summary is printed as one
JSON line. Ctrl-C (or SIGTERM) stops the schedule: while waiting it just exits; during a run it stops the
submitted job (`ray job stop`, whose SIGTERM makes the run release its lease) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.logs import install_redaction

ROOT = Path(__file__).resolve().parents[1]


def _summary(output: str) -> dict[str, object]:
    """The last JSON object line the ingestion printed (its summary), or the tail of its output."""
    for line in reversed(output.splitlines()):
        if line.startswith("{") and line.rstrip().endswith("}"):
            try:
                return dict(json.loads(line))
            except json.JSONDecodeError:
                continue
    return {"status": "no_summary", "tail": output[-500:]}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="ingestion YAML (see configs/)")
    parser.add_argument("--interval", type=float, required=True, help="seconds between the starts of two runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value override")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0: never)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""), help="Ray dashboard URL")
    args = parser.parse_args(argv)
    if not args.address:
        print("no Ray address: pass --address or set RAY_ADDRESS (e.g. `set -a; . .stack/env; set +a`)",
              file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
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
                output = proc.communicate()[0]
            except KeyboardInterrupt:
                print(f"stopping: ray job stop {submission}", flush=True)
                subprocess.run([ray, "job", "stop", "--address", args.address, submission], cwd=ROOT,
                               capture_output=True, timeout=120, check=False)  # fmt: skip
                proc.kill()
                proc.wait()
                raise
            summary = _summary(output)
            print(json.dumps({"run": run, "submission_id": submission, "exit_code": proc.returncode,
                              "seconds": round(time.monotonic() - started, 1), **summary}), flush=True)  # fmt: skip
            if args.max_runs and run >= args.max_runs:
                return 0
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        print(json.dumps({"stopped": True, "runs": run}), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
