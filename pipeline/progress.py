"""Progress as one plain line per update: `shard 3/10 (30%) … elapsed 0:12 ETA 0:28`.

Lines, not redrawn bars: a job's output goes to log files, `ray job submit` and CI as often as to a terminal,
where a redrawn bar becomes hundreds of lines. The ETA is the mean time per unit done so far times the units
left (units done before a resume are not counted as done in this run). A long job logs every tenth of its units
(`every=0.1`, the last one always), not each, and at most one line per `min_interval_s`: a 25-shard ingestion
of a minute prints 10 lines, a 10,000-shard one too, a 10-second embedding 2 or 3.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "clock_text"]


def clock_text(seconds: float) -> str:
    """`0:07`, `12:30`, `1:02:03` (H:MM:SS without leading hours)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts units of `total` and logs one line per update.

    Args:
        label: What is counted (`shard`, `step`).
        total: Units in the whole job.
        done: Units already done before this run started (e.g. the step a run resumed from).
        log: Where lines go (INFO); None only returns them.
        out: A stream the lines are also printed to (e.g. stderr of a command whose stdout is its result).
        every: Share of `total` between two logged lines (None: every update is logged); the last unit is
            always logged. `update` returns the line either way.
        min_interval_s: Seconds at least between two logged lines (but the last).
        clock: Seconds, monotonic (injectable for tests).
    """

    def __init__(self, label: str, total: int, *, done: int = 0, log: logging.Logger | None = None,
                 out: TextIO | None = None, every: float | None = None, min_interval_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.label, self.total, self.done, self._first = label, max(int(total), 0), int(done), int(done)
        self._log, self._out, self._clock = log, out, clock
        self._stride = max(1, math.ceil(self.total * every)) if every else 1
        self._next = self._due_after(self.done)
        self._min_interval = min_interval_s
        self._start = self._logged = clock()

    def _due_after(self, done: int) -> int:
        """The next multiple of the stride after `done`: where the next line is due."""
        return done + self._stride - done % self._stride

    def update(self, done: int | None = None, detail: str = "") -> str:
        """Record `done` units (default: one more) and return (and log) the line."""
        self.done = self.done + 1 if done is None else int(done)
        elapsed = self._clock() - self._start
        ran = self.done - self._first
        eta = elapsed / ran * max(self.total - self.done, 0) if ran > 0 else None
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        line = (f"{self.label} {self.done}/{self.total}{share}{' ' + detail if detail else ''} "
                f"elapsed {clock_text(elapsed)} ETA {clock_text(eta) if eta is not None else '?'}")  # fmt: skip
        now = self._start + elapsed
        due = self.done >= self._next and now - self._logged >= self._min_interval
        if due or self.done >= self.total:
            self._next, self._logged = self._due_after(self.done), now
            if self._log is not None:
                self._log.info("%s", line)
            if self._out is not None:
                print(line, file=self._out, flush=True)
        return line
