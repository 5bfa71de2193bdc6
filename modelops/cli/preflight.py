"""Cheap checks before any work: the STAC API is one, its collections exist, the store takes a write.

Each check returns problems as one line each (empty: fine), so a job can print them all and exit 2 before a
search runs or a worker starts. Costs: one landing-page request per STAC API, one request per collection (a
listing only when one is missing), one small object written and deleted in the store. An `s3://` store with a
configured endpoint (`FSSPEC_S3_ENDPOINT_URL`/`AWS_ENDPOINT_URL`, or `endpoint_url` in its options) is first
probed with a plain TCP connection for up to 10 s: an endpoint nothing listens on is reported at once, instead
of after the object store's retry budget (~4 min of retried calls for the write probe against a dead endpoint).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_collections", "check_stac_api", "check_store", "get_json"]

_TIMEOUT_S = 10.0


def get_json(url: str, *, timeout_s: float = _TIMEOUT_S) -> tuple[int, Any, str]:
    """(HTTP status, parsed JSON or None, content type) of a GET; raises OSError when unreachable."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - a configured URL
            status, body, kind = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get("Content-Type", "") if err.headers else ""
    try:
        return status, json.loads(body), kind
    except ValueError:
        return status, None, kind


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason).splitlines()[0][:200] if str(reason) else type(err).__name__


def check_stac_api(url: str) -> list[str]:
    """The URL's landing page is STAC API JSON (a `conformsTo` list or `links`)."""
    try:
        status, body, kind = get_json(url)
    except (OSError, ValueError) as err:
        return [f"STAC API {url} is not reachable: {_reason(err)}"]
    if status >= 400:
        return [f"STAC API {url} answered HTTP {status}; check the URL (the API root, e.g. …/api/stac/v1)"]
    if not isinstance(body, dict):
        return [f"{url} is not a STAC API: its landing page is not JSON ({kind or 'no content type'}); is this "
                "the right URL (not the MLflow or S3 one)?"]  # fmt: skip
    if "conformsTo" not in body and "links" not in body:
        return [f"{url} is not a STAC API: its landing page has neither conformsTo nor links"]
    return []


def _collection_ids(url: str, *, pages: int = 20) -> list[str]:
    ids: list[str] = []
    next_url: str | None = f"{url.rstrip('/')}/collections"
    for _ in range(pages):
        if not next_url:
            break
        _, body, _ = get_json(next_url)
        if not isinstance(body, dict):
            break
        ids += [str(c.get("id")) for c in body.get("collections", []) if isinstance(c, dict)]
        next_url = next((link.get("href") for link in body.get("links", []) if link.get("rel") == "next"), None)
    return sorted(ids)


def check_collections(url: str, collections: Iterable[str]) -> list[str]:
    """Each collection id exists at the STAC API (else the ones that do are listed)."""
    missing = []
    for cid in collections:
        try:
            status, body, _ = get_json(f"{url.rstrip('/')}/collections/{cid}")
        except (OSError, ValueError) as err:
            return [f"STAC API {url} is not reachable: {_reason(err)}"]
        if not (status == 200 and isinstance(body, dict) and body.get("id") == cid):
            missing.append(cid)
    if not missing:
        return []
    try:
        known = _collection_ids(url)
    except (OSError, ValueError):
        known = []
    listed = ", ".join(known[:40]) + (" …" if len(known) > 40 else "") if known else "none listed"
    return [f"collection {cid!r} does not exist at {url}; it has: {listed}" for cid in missing]


def _s3_endpoint(storage_options: Mapping[str, Any]) -> str:
    """The S3 endpoint the store's client would use when one is configured ('' for AWS's own)."""
    client = dict(storage_options.get("client_kwargs") or {})
    return str(storage_options.get("endpoint_url") or client.get("endpoint_url")
               or os.environ.get("FSSPEC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "")  # fmt: skip


def _unreachable(endpoint: str, *, wait_s: float = 10.0) -> str:
    """Why no TCP connection to `endpoint` could be opened within `wait_s` ('' once one is)."""
    parts = urllib.parse.urlsplit(endpoint)
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            socket.create_connection(address, timeout=3).close()
            return ""
        except OSError as err:
            if time.monotonic() >= deadline:
                return _reason(err)
        time.sleep(1.0)


def check_store(url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The store (local path or any fsspec URL) takes a small write and delete with the current credentials."""
    import fsspec

    hint = ("; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and, for a non-AWS endpoint, "
            "FSSPEC_S3_ENDPOINT_URL/AWS_ENDPOINT_URL") if url.startswith("s3://") else ""  # fmt: skip
    endpoint = _s3_endpoint(dict(storage_options or {})) if url.startswith("s3://") else ""
    if endpoint and (why := _unreachable(endpoint)):
        return [f"store {url}: its S3 endpoint {endpoint} is not reachable ({why}); is the object store running, "
                "and FSSPEC_S3_ENDPOINT_URL/AWS_ENDPOINT_URL right?"]  # fmt: skip
    try:
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        probe = f"{root.rstrip('/')}/.preflight-{uuid.uuid4().hex[:12]}"
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"preflight")
        fs.rm_file(probe)
    except Exception as err:  # noqa: BLE001 - any failure here means the job could not write its results
        return [f"store {url} is not writable: {type(err).__name__}: {_reason(err)}{hint}"]
    return []
