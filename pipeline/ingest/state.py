"""A dataset's ingestion state beside its store: watermarks, frozen manifests, the runs table, superseded chips.

Everything lives under `<store>/state/` on the store's own filesystem (local or `s3://`):

- `state.json`: the acquisition watermark (latest item datetime ingested), the `updated` watermark (latest
  `updated` property ingested), the current snapshot manifest (every item the dataset is built from) and the
  list of manifests frozen by incremental runs. Written last by a successful run, so it is the run's commit
  point: a run that dies before it leaves the previous state in place and the next run redoes its window.
- `runs.parquet`: one row per run (id, owner, windows, counts, manifest hashes, start/end time, status, error).
- `unusable.parquet`: chips (versioned ids, so content-addressed) that were read and gave nothing usable for a
  permanent reason (all nodata, cloudy, corrupt, missing…); later runs do not read them again. A transient
  failure is not recorded there (the chip is retried), and a changed item gives the chip a new id.
- `superseded.parquet` (`pipeline.store.superseded`): chips that are still stored in a shard but were replaced by a newer version of the same
  grid cell (an item of theirs was updated or a better date arrived); readers drop them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import fsspec
import pandas as pd

from pipeline.atomic import read_parquet, write_json, write_parquet

__all__ = ["DatasetState", "RunRecord", "append_unusable", "new_run_id", "read_runs", "read_state", "read_unusable",
           "record_run", "write_state"]  # fmt: skip


@dataclass(frozen=True)
class DatasetState:
    """What incremental ingestion has done so far.

    Attributes:
        acquired_until: Latest acquisition datetime (ISO 8601, UTC) of the items ingested; "" before any run.
        updated_until: Latest `updated` property of the items ingested; "" if none carried one.
        snapshot_manifest: URL of the manifest of every item the dataset is currently built from.
        manifests: Versions of the manifests frozen by incremental runs (the new or updated items of each run).
        last_run_id: Id of the run that wrote this state.
        sensors: Per modality, its own watermarks `{"acquired_until": …, "updated_until": …}` (each sensor's
            searches start from its own, so a lagging sensor's late-published items are found);
            `acquired_until`/`updated_until` above stay the maxima over every sensor.
    """

    acquired_until: str = ""
    updated_until: str = ""
    snapshot_manifest: str = ""
    manifests: tuple[str, ...] = ()
    last_run_id: str = ""
    sensors: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """One row of the runs table."""

    run_id: str
    owner: str
    status: str  # running | succeeded | no_new_items | failed
    started_at: str
    ended_at: str = ""
    acquired_after: str = ""  # the search windows: acquisition datetime >= this …
    acquired_before: str = ""
    updated_after: str = ""  # … or `updated` >= this
    items_found: int = 0
    items_new: int = 0
    items_updated: int = 0
    chips_planned: int = 0
    chips_written: int = 0
    chips_superseded: int = 0
    shards_written: int = 0
    manifest_version: str = ""  # the new or updated items of this run
    snapshot_version: str = ""  # every item after this run
    error: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def new_run_id(started_at: str) -> str:
    """A sortable run id: the start time and a random suffix."""
    return f"{started_at.replace(':', '').replace('-', '')[:15]}-{uuid.uuid4().hex[:6]}"


def _fs(root: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/state", **dict(storage_options or {}))
    return fs, path.rstrip("/")


def read_state(root: str, *, storage_options: Mapping[str, Any] | None = None) -> DatasetState:
    """The dataset's state (an empty state before the first incremental run)."""
    fs, base = _fs(root, storage_options)
    if not fs.exists(f"{base}/state.json"):
        return DatasetState()
    with fs.open(f"{base}/state.json", "rb") as f:
        raw = json.loads(f.read())
    raw["manifests"] = tuple(raw.get("manifests", ()))
    raw["sensors"] = {str(k): dict(v) for k, v in dict(raw.get("sensors") or {}).items()}
    return DatasetState(**{k: v for k, v in raw.items() if k in {f.name for f in fields(DatasetState)}})


def write_state(root: str, state: DatasetState, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Replace the dataset's state (the commit point of an incremental run)."""
    fs, base = _fs(root, storage_options)
    write_json(fs, f"{base}/state.json", asdict(state))


def _read_table(root: str, name: str, storage_options: Mapping[str, Any] | None) -> pd.DataFrame | None:
    fs, base = _fs(root, storage_options)
    return read_parquet(fs, f"{base}/{name}")


def _write_table(root: str, name: str, frame: pd.DataFrame, storage_options: Mapping[str, Any] | None) -> None:
    fs, base = _fs(root, storage_options)
    write_parquet(fs, f"{base}/{name}", frame)


RUN_COLUMNS = [f.name for f in fields(RunRecord)]


def read_runs(root: str, *, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The runs table, oldest first (empty with its columns before the first run)."""
    frame = _read_table(root, "runs.parquet", storage_options)
    return pd.DataFrame(columns=RUN_COLUMNS) if frame is None else frame


def record_run(root: str, record: RunRecord, *, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Insert or replace (by `run_id`) one row of the runs table; only the lease holder calls this."""
    runs = read_runs(root, storage_options=storage_options)
    row = asdict(record) | {"extra": json.dumps(dict(record.extra), sort_keys=True)}
    runs = runs[runs["run_id"] != record.run_id]
    runs = pd.concat([runs, pd.DataFrame([row], columns=RUN_COLUMNS)], ignore_index=True) if len(runs) else \
        pd.DataFrame([row], columns=RUN_COLUMNS)  # fmt: skip
    _write_table(root, "runs.parquet", runs, storage_options)
    return runs


def read_unusable(root: str, *, storage_options: Mapping[str, Any] | None = None) -> set[str]:
    """Chip ids already read that gave nothing usable for a permanent reason (not to be read again)."""
    frame = _read_table(root, "unusable.parquet", storage_options)
    return set() if frame is None else {str(c) for c in frame["chip_id"]}


def append_unusable(root: str, chip_ids: Sequence[str], run_id: str, *,
                    storage_options: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """Record chips that gave nothing usable (only the lease holder calls this)."""
    if not chip_ids:
        return
    frame = _read_table(root, "unusable.parquet", storage_options)
    new = pd.DataFrame({"chip_id": list(chip_ids), "run_id": run_id})
    table = new if frame is None else pd.concat([frame, new], ignore_index=True)
    _write_table(root, "unusable.parquet", table.drop_duplicates("chip_id", keep="first"), storage_options)
