"""Frozen manifests: a search result as Parquet rows of item JSON, whose content hash is the dataset version.

After the search, the rest of an ingestion reads only the manifest, so a re-run sees exactly the same items
even if the catalog changed. Hrefs are stored unsigned (any SAS token is stripped) and the hash does not depend
on the order in which the API returned the items. Writing is atomic and idempotent:
`<root>/manifests/<hash>.parquet` is written once.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pystac

from pipeline.atomic import write_parquet
from pipeline.errors import ManifestError
from pipeline.catalog.proj import item_epsg
from pipeline.catalog.signing import redact, unsigned

__all__ = ["Manifest", "freeze_manifest", "manifest_rows", "read_manifest"]

COLUMNS = ("modality", "collection", "item_id", "datetime", "cloud_cover", "epsg", "bbox", "geometry", "item_json")


@dataclass(frozen=True)
class Manifest:
    """A frozen search result.

    Attributes:
        version: sha256 hex digest of the canonical rows (the dataset version).
        url: Where the Parquet file lives.
        rows: One row per (modality, item), sorted, with the columns in `COLUMNS`.
        conflicts: Ids the search returned twice with different content (e.g. an item updated between two
            pages); neither copy is trusted, the run records them as `duplicate_item` rejects.
    """

    version: str
    url: str
    rows: pd.DataFrame
    conflicts: tuple[str, ...] = ()  # item ids returned twice with different content, left out (ambiguous)

    def items(self, modality: str | None = None) -> list[pystac.Item]:
        """The items (unsigned hrefs), optionally of one modality, in row order."""
        rows = self.rows if modality is None else self.rows[self.rows["modality"] == modality]
        return [pystac.Item.from_dict(json.loads(s)) for s in rows["item_json"]]


def _clean_item(item: pystac.Item) -> dict[str, Any]:
    """Item dict with unsigned hrefs and no links: links point at the API that served the item (its host and
    port), which would change the dataset version without any change of data."""
    raw = item.to_dict(include_self_link=False, transform_hrefs=False)
    for asset in raw.get("assets", {}).values():
        asset["href"] = unsigned(asset["href"])
    raw["links"] = []
    return raw


def manifest_rows(items_by_modality: Mapping[str, Sequence[pystac.Item]]) -> pd.DataFrame:
    """Canonical, sorted rows of the manifest (no I/O)."""
    records = []
    for modality, items in items_by_modality.items():
        for item in items:
            raw = _clean_item(item)
            props = raw.get("properties", {})
            records.append({
                "modality": modality, "collection": raw.get("collection") or "", "item_id": raw["id"],
                "datetime": props.get("datetime") or props.get("start_datetime") or "",
                "cloud_cover": props.get("eo:cloud_cover"), "epsg": item_epsg(raw),
                "bbox": json.dumps(raw.get("bbox")), "geometry": json.dumps(raw.get("geometry"), sort_keys=True),
                "item_json": json.dumps(raw, sort_keys=True, separators=(",", ":")),
            })  # fmt: skip
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    key = ["modality", "collection", "item_id"]
    frame = frame[~frame.duplicated([*key, "item_json"])]  # paging can repeat an item: identical copies are one
    conflicting = frame.duplicated(key, keep=False)  # the same id with different content: trust neither
    conflicts = tuple(sorted(set(frame.loc[conflicting, "item_id"])))
    frame = frame[~conflicting]
    frame = frame.sort_values(["modality", "collection", "item_id"], kind="stable").reset_index(drop=True)
    frame["epsg"] = frame["epsg"].astype("Int64")
    frame.attrs["conflicts"] = conflicts  # read by freeze_manifest (not part of the rows or the version)
    return frame


def _version(rows: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for modality, item_json in zip(rows["modality"], rows["item_json"], strict=True):
        digest.update(modality.encode() + b"\x00" + item_json.encode() + b"\n")
    return digest.hexdigest()


def freeze_manifest(items_by_modality: Mapping[str, Sequence[pystac.Item]], *, root: str,
                    storage_options: Mapping[str, Any] | None = None) -> Manifest:  # fmt: skip
    """Write the manifest under `<root>/manifests/<version>.parquet` (once) and return it.

    Args:
        items_by_modality: Items found per modality key (e.g. `{"s2": [...], "s1": [...]}`).
        root: Dataset root: a local path or an fsspec URL (`s3://bucket/prefix`).
        storage_options: fsspec options (e.g. the S3 endpoint); never written anywhere.

    Raises:
        ManifestError: No items, or the file could not be written.
    """
    rows = manifest_rows(items_by_modality)
    if rows.empty:
        raise ManifestError("the search found no items; widen the area, the dates or the cloud-cover limit")
    leaked = rows["item_json"].str.contains("sig=", regex=False) & rows["item_json"].str.contains("blob.core", regex=False)
    if leaked.any():
        raise ManifestError(f"refusing to store signed hrefs: {redact(rows['item_json'][leaked].iloc[0][:200])}")
    version = _version(rows)
    url = f"{root.rstrip('/')}/manifests/{version}.parquet"
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    try:
        if not fs.exists(path):
            write_parquet(fs, path, rows)  # local: temporary file + rename; object stores: one PUT
    except OSError as err:
        raise ManifestError(f"could not write the manifest to {url}: {redact(str(err))}") from err
    return Manifest(version, url, rows, tuple(rows.attrs.get("conflicts", ())))


def read_manifest(url: str, *, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Read a manifest written by `freeze_manifest` and check its content against the version in its name.

    Raises:
        ManifestError: Missing file or content that does not match its version.
    """
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    try:
        with fs.open(path, "rb") as f:
            rows = pd.read_parquet(io.BytesIO(f.read()))
    except (OSError, FileNotFoundError) as err:
        raise ManifestError(f"could not read the manifest {url}: {err}") from err
    version = _version(rows)
    expected = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    if version != expected:
        raise ManifestError(f"manifest {url} was modified: its content hashes to {version}, not {expected}")
    return Manifest(version, url, rows)
