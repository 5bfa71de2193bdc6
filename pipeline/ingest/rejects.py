"""The rejects table beside a store: every item or chip a run could not use, with its reason, kept across runs.

`<store>/rejects.parquet` has the rejects of every run with the run that recorded them and when: a later run
appends what earlier runs did not record (same kind, subject and reason) and keeps the history (an incremental
run re-plans the whole snapshot, so the same planning rejects come back every run and are recorded once);
within one run every reject is a row (an item failing in two chips gives two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone

import pandas as pd

from pipeline.atomic import read_parquet, write_parquet
from pipeline.ingest.grid import Reject
from pipeline.store.shards import StoreLayout

__all__ = ["REJECT_COLUMNS", "append_rejects", "read_rejects"]

REJECT_COLUMNS = ["kind", "subject", "reason", "run_id", "recorded_at"]


def read_rejects(layout: StoreLayout) -> pd.DataFrame:
    """Every reject recorded so far (empty with its columns before the first run)."""
    fs, root = layout.fs()
    frame = read_parquet(fs, f"{root}/rejects.parquet")
    if frame is None:
        return pd.DataFrame(columns=REJECT_COLUMNS)
    for column in REJECT_COLUMNS:  # tables written before run_id/recorded_at existed
        if column not in frame:
            frame[column] = ""
    return frame[REJECT_COLUMNS]


def append_rejects(layout: StoreLayout, rejects: Sequence[Reject], run_id: str) -> pd.DataFrame:
    """Add this run's rejects to the table (atomically); one recorded by an earlier run keeps its first row."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    new = pd.DataFrame([asdict(r) | {"run_id": run_id, "recorded_at": now} for r in rejects], columns=REJECT_COLUMNS)
    old = read_rejects(layout)
    if len(old):  # what an earlier run recorded keeps its row; within one run every reject counts (one per chip)
        seen = set(zip(old["kind"], old["subject"], old["reason"], strict=True))
        new = new[[k not in seen for k in zip(new["kind"], new["subject"], new["reason"], strict=True)]]
        table = pd.concat([old, new], ignore_index=True)
    else:
        table = new
    fs, root = layout.fs()
    write_parquet(fs, f"{root}/rejects.parquet", table)
    return table
