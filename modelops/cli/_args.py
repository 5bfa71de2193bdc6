"""Argument parsing shared by the commands: bad arguments exit 2 with one line, `--map group=key` pairs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import NoReturn

__all__ = ["Parser", "command", "pairs", "server_uri", "tracking_uri"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (`<prog>: error: …`) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def pairs(values: list[str] | None, parser: Parser, flag: str) -> dict[str, str]:
    """`["a=b", …]` -> `{"a": "b"}`; a value without `=` is a bad argument."""
    out = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            parser.error(f"{flag} expects group=key, got {value!r}")
        out[key] = val
    return out


def tracking_uri(given: str) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else empty (no tracking)."""
    return given or os.environ.get("MLFLOW_TRACKING_URI", "")


def server_uri(given: str, parser: Parser, *, required: bool = True) -> str:
    """The tracking URI, checked before any work: an unreachable server (or none, when `required`) exits 2 in
    seconds with one line, and every later MLflow request of the process is bounded (`mlflow_problem`)."""
    from modelops.tracking import mlflow_problem

    uri = tracking_uri(given)
    if not uri and not required:
        return ""
    problem = mlflow_problem(uri)
    if problem:
        parser.error(problem)
    return uri


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Make `main(argv)` return the exit status of argument errors and `--help` (2 and 0) instead of raising;
    third-party output kept short (`common.quiet_env`)."""

    @wraps(main)
    def run(argv: list[str] | None = None) -> int:
        from modelops.cli.common import quiet_env

        quiet_env()
        try:
            return main(argv)
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)

    return run
