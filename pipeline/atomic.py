"""Atomic writes and table reads on any fsspec filesystem: a reader never sees half of a file.

Every table, JSON document, sidecar and marker the pipeline writes goes through `write_bytes`: on a local
filesystem the bytes go to a temporary file beside the target, are flushed, then renamed over it (rename is
atomic on POSIX); on object stores one PUT is atomic by itself, so the object is written in one request.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import pandas as pd

__all__ = ["create_new", "is_local", "read_parquet", "write_bytes", "write_json", "write_parquet"]


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (where a write is made atomic by a rename)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (local: temporary file + rename; object stores: one PUT)."""
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        fs.pipe_file(path, data)


def create_new(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create `path` holding `data` only if it does not exist, atomically: nobody ever sees it empty.

    Local: the bytes go to a temporary file that is hard-linked to `path` (`link` fails if `path` exists) and
    then unlinked; object stores: one conditional PUT (`If-None-Match: *`, s3fs's mode "xb").

    Raises:
        FileExistsError: `path` exists.
    """
    if is_local(fs):
        import os

        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with fs.open(path, "xb") as f:
            f.write(data)


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    write_bytes(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(fs: fsspec.AbstractFileSystem, path: str, frame: pd.DataFrame) -> None:
    """Write a table as Parquet (no index), atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(fs, path, buffer.getvalue())


def read_parquet(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame | None:
    """A Parquet table, or None when the file does not exist."""
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return pd.read_parquet(io.BytesIO(f.read()))


def url_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a local path or URL (`s3://…`), without a trailing slash."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path.rstrip("/")
