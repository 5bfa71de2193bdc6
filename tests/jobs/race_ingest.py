"""`jobs/ingest.py` with a start line at the lease, for racing two real runs: `python race_ingest.py ARGS…`.

The run is the job's own `main` (same arguments, same output). The one addition: right after its first look at
the lease (`Lease.current`, the first step of `Lease.acquire`) it prints `ready` and waits for a line on stdin.
A test starts two of these, waits until both are ready and then lets both go at once, so both have seen the same
lease state (no lease yet) and race for the same generation with their create-if-absent writes; which one wins
is decided by the store, not by which process finished importing first. Nothing else is changed.
"""

from __future__ import annotations

import sys

from modelops.cli.ingest import main
from pipeline.ingest.lease import Lease, LeaseInfo

_look = Lease.current
_waited: list[bool] = []


def _look_then_wait(self: Lease) -> LeaseInfo | None:
    seen = _look(self)
    if not _waited:
        _waited.append(True)
        print("ready", flush=True)
        sys.stdin.readline()
    return seen


Lease.current = _look_then_wait  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
