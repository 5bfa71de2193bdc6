"""The superseded-chips table beside a store: chips still stored in a shard but replaced by a newer version of
the same grid cell (an item of theirs was updated or a better date arrived). Incremental ingestion appends to
it; every reader drops the chips it lists. It lives at `<store>/state/superseded.parquet`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pipeline.atomic import read_parquet, url_fs, write_parquet

__all__ = ["SUPERSEDED_COLUMNS", "append_superseded", "read_superseded"]


def _path(root: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, base = url_fs(f"{root.rstrip('/')}/state", storage_options)
    return fs, f"{base}/superseded.parquet"


SUPERSEDED_COLUMNS = ["chip_id", "shard_id", "cell", "superseded_by", "run_id"]


def read_superseded(root: str, *, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Chips replaced by a newer version of their cell (still stored, to be skipped by readers)."""
    frame = read_parquet(*_path(root, storage_options))
    return pd.DataFrame(columns=SUPERSEDED_COLUMNS) if frame is None else frame


def append_superseded(root: str, rows: Sequence[Mapping[str, str]], *,
                      storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:  # fmt: skip
    """Add superseded chips (a chip already listed keeps its first entry)."""
    table = read_superseded(root, storage_options=storage_options)
    if rows:
        new = pd.DataFrame(list(rows), columns=SUPERSEDED_COLUMNS)
        table = pd.concat([table, new], ignore_index=True) if len(table) else new
        table = table.drop_duplicates("chip_id", keep="first").reset_index(drop=True)
        write_parquet(*_path(root, storage_options), table)
    return table
