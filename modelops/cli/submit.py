"""`submit`: run a command as a Ray job, as `ray job submit --working-dir . -- <command>` does, with short output.

    submit [--address URL] [--working-dir .] -- python jobs/ingest.py --config configs/ingest-demo.yaml

The Ray Jobs API of the cluster at `--address` (default: RAY_ADDRESS, the dashboard URL) gets the working
directory (without what `.gitignore` names, `.git` and `.venv`) and the command. Printed: one line when the job
is submitted (its id, and how to follow or stop it), the job's own output as it comes, one line with its final
status. `ray job submit` prints some twenty lines of banners around the same; a demo or a log reads better
without them. Exit 0 when the job succeeded, 1 when it failed or was stopped, 2 on bad arguments or an
unreachable cluster; Ctrl-C detaches (the job goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time

from modelops.cli._args import Parser, command

__all__ = ["main"]

# what `ray job submit` leaves out by default besides `.gitignore`; named here, so Ray does not warn about them
EXCLUDES = (".git", ".venv", "venv", "__pycache__")


@command
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="submit", description=__doc__)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""), help="Ray dashboard URL")
    parser.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="the command, after `--`")
    args = parser.parse_args(argv)
    entry = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else list(args.entrypoint)
    if not entry:
        parser.error("no command given: submit [--address URL] -- python jobs/<name>.py …")
    if not args.address.startswith(("http://", "https://")):
        parser.error(f"--address (or RAY_ADDRESS) must be the Ray dashboard URL, got {args.address!r}")
    os.environ["RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"] = ""  # EXCLUDES are passed explicitly below
    from ray.job_submission import JobStatus, JobSubmissionClient

    # the SDK's INFO lines ("Uploading package", "WebSocket closed"); these two loggers set INFO themselves
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        client = JobSubmissionClient(args.address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        parser.error(f"no Ray cluster at {args.address}: {err}")
    start = time.monotonic()
    try:
        job_id = _submit(client, shlex.join(entry), {"working_dir": args.working_dir, "excludes": list(EXCLUDES)})
    except (RuntimeError, ValueError, OSError) as err:
        print(f"submit failed: {err}", file=sys.stderr)
        return 1
    print(f"ray job {job_id} submitted to {args.address} (follow: ray job logs -f {job_id}; stop: ray job stop "
          f"{job_id})", flush=True)  # fmt: skip
    try:
        asyncio.run(_tail(client, job_id))
    except KeyboardInterrupt:
        print(f"detached from ray job {job_id}; it goes on (stop it: ray job stop {job_id})", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    took = time.monotonic() - start
    ok = info.status == JobStatus.SUCCEEDED
    # Ray's message repeats the job's last logs, already printed above: its first clause is the reason
    why = "" if ok or not info.message else f": {info.message.splitlines()[0].split(', last available logs')[0]}"
    print(f"ray job {job_id} {info.status.value} in {took:.0f} s{why}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _submit(client: object, entrypoint: str, runtime_env: dict[str, object], wait_s: float = 120.0) -> str:
    """Submit, retrying while a just-started head answers "No available agent to submit job" (its job agent is
    not up yet; Ray's own message asks to try again later). Any other error is raised at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return str(client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env))  # type: ignore[attr-defined]
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


async def _tail(client: object, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):  # type: ignore[attr-defined]
        print(lines, end="", flush=True)


if __name__ == "__main__":
    sys.exit(main())
