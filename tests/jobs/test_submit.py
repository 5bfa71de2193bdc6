"""`submit` (jobs/submit.py) against the session stack's Ray head: the job's own output between one line on
submission and one on its end, and the job's failure as exit status 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]


def _submit(stack_env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "jobs/submit.py", "--", *command], cwd=ROOT, capture_output=True,
                          text=True, timeout=600,
                          env={**stack_env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT)})  # fmt: skip


def test_a_job_prints_its_output_between_two_lines_of_its_own(stack_env: dict[str, str]) -> None:
    out = _submit(stack_env, "python", "-c", "import os; print('job says', os.path.isfile('jobs/submit.py'))")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ray job ") and "submitted to" in lines[0] and "ray job stop" in lines[0]
    assert "job says True" in lines  # run in the uploaded working directory
    assert lines[-1].startswith("ray job ") and " SUCCEEDED in " in lines[-1]
    assert "Next steps" not in out.stdout + out.stderr and "is now ignored by default" not in out.stderr
    assert len(lines) <= 6, out.stdout  # ray job submit prints some twenty lines around the same


def test_a_failing_job_exits_1_and_says_so(stack_env: dict[str, str]) -> None:
    out = _submit(stack_env, "python", "-c", "import sys; print('about to fail'); sys.exit(3)")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "about to fail" in out.stdout and " FAILED in " in out.stderr


def test_no_command_or_no_cluster_is_a_one_line_error() -> None:
    for args, env in (([], {"RAY_ADDRESS": "http://127.0.0.1:9"}), (["--", "true"], {"RAY_ADDRESS": ""})):
        out = subprocess.run([sys.executable, "jobs/submit.py", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})  # fmt: skip
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
