"""Retries of transient raster read failures, with GDAL's HTTP cache bypassed on each retry.

Which errors are transient and the backoff are `pipeline.transient`'s (re-exported here). A read that fails with an HTTP 5xx or 429 answer, a timeout or a dropped connection (as GDAL/rasterio, fsspec,
aiohttp or botocore word them) is worth trying again; a 404, a file that is not a raster or a missing asset is
not, and becomes a reject at once. GDAL remembers a failed HTTP answer for the rest of the process (its
`/vsicurl/` cache), so a retry is attempted with that cache turned off for the failing hrefs
(`CPL_VSIL_CURL_NON_CACHED`), otherwise it would replay the cached failure without asking the server again.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from pipeline.errors import ChipError
from pipeline.transient import RetryPolicy, is_transient
from pipeline.catalog.signing import redact

__all__ = ["RetryPolicy", "TransientReadError", "call_with_retries", "describe_error", "is_transient", "vsi_path"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_MISSING_TEXT = re.compile(r"does not exist|no such file|HTTP response code: ?404", re.IGNORECASE)


class TransientReadError(ChipError):
    """A read still failed transiently after every retry; `attempts` says how many were made."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def describe_error(err: BaseException) -> str:
    """The error's message followed by the distinct messages of its causes (GDAL's own reason of a failed read
    is in the cause: rasterio's "Read failed. See previous exception for details." alone says nothing)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and not any(text in p for p in parts):
            parts.append(text)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts) or type(err).__name__


def vsi_path(href: str) -> str | None:
    """GDAL's virtual path of a remote href (`/vsicurl/…`, `/vsis3/…`), None for local files."""
    if href.startswith(("http://", "https://")):
        return f"/vsicurl/{href}"
    if href.startswith("s3://"):
        return f"/vsis3/{href.removeprefix('s3://')}"
    return None


def call_with_retries(fn: Callable[[], T], *, policy: RetryPolicy, hrefs: Sequence[str] = (), what: str = "read",
                      sleep: Callable[[float], None] = time.sleep) -> T:  # fmt: skip
    """Call `fn`, retrying transient failures with bounded exponential backoff.

    Args:
        fn: The read; it must reopen what it reads (a retry never reuses a dataset that failed).
        policy: Number of retries and waits.
        hrefs: Hrefs the read touches; their GDAL HTTP cache is bypassed on retries.
        what: Names the read in log lines.
        sleep: Waits between attempts.

    Raises:
        TransientReadError: Every attempt failed transiently (the last error is its cause).
        Exception: A non-transient failure, at once and unchanged.
    """
    import rasterio

    prefixes = [p for p in (vsi_path(h) for h in hrefs) if p]
    uncached = os.path.commonprefix(prefixes) if prefixes else ""
    fresh = False  # this attempt bypasses GDAL's HTTP cache
    attempt = -1
    while attempt < policy.max_retries:
        attempt += 1
        try:
            if (attempt or fresh) and uncached:
                with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=uncached):
                    return fn()
            return fn()
        except Exception as err:  # noqa: BLE001 - classified below; non-transient errors are re-raised unchanged
            if not is_transient(err):
                if uncached and attempt == 0 and not fresh and _MISSING_TEXT.search(describe_error(err)):
                    # GDAL remembers a failed open ("does not exist") for the rest of the process, also after an
                    # outage: ask the server once more, uncached, before calling the file missing
                    fresh, attempt = True, -1
                    continue
                raise
            if attempt == policy.max_retries:
                raise TransientReadError(f"{what} still failed after {attempt + 1} attempts: "
                                         f"{redact(describe_error(err))}",
                                         attempt + 1) from err  # fmt: skip
            wait = policy.wait_s(attempt + 1)
            log.warning("%s failed transiently (%s); retry %d/%d in %.2f s", what, redact(str(err)), attempt + 1,
                        policy.max_retries, wait)  # fmt: skip
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
