"""Which failures are transient, and how patiently they are retried: shared by raster reads and store calls.

A failure that an HTTP 5xx or 429 answer, a timeout or a dropped or refused connection caused (as GDAL/rasterio,
fsspec, aiohttp or botocore word them) may pass on a retry; a 404, an access denied, a file that is not a raster
or a missing object will not. `is_transient` looks at the error and every error it was raised from;
`RetryPolicy` is a bounded exponential backoff. `pipeline.ingest.retry` retries raster reads with them,
`pipeline.s3_retry` every object-store call of s3fs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RetryPolicy", "is_transient"]

_TRANSIENT_TEXT = re.compile(
    r"HTTP response code: ?(5\d\d|429)|\((5\d\d|429)\)|timed? ?out|timeout"
    r"|connection (reset|aborted|closed)|reset by peer|broken pipe|server ?disconnected|temporarily unavailable"
    r"|service ?unavailable|too many requests|slow ?down|throttl|incomplete ?read|internal ?error"
    r"|could not connect|failed to connect|couldn'?t connect|connection refused|could not resolve|couldn'?t resolve"
    r"|name or service not known|temporary failure in name resolution|network is unreachable|no route to host",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = frozenset((
    "TimeoutError", "ConnectionError", "ConnectionRefusedError", "gaierror", "ConnectionResetError",
    "ConnectionAbortedError", "BrokenPipeError", "FSTimeoutError", "ReadTimeoutError", "ConnectTimeoutError",
    "EndpointConnectionError", "ServerDisconnectedError", "ClientConnectionError", "ClientPayloadError",
    "IncompleteRead", "RemoteDisconnected",
))  # fmt: skip
_PERMANENT_TEXT = re.compile(r"HTTP response code: ?(4(0[0-9]|1[0-9]))\b|no such file|not recognized as|does not exist",
                             re.IGNORECASE)  # fmt: skip
_SERVER_ERROR = re.compile(r"HTTP response code: ?(5\d\d|429)")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    Attributes:
        max_retries: Retries after the first attempt (0 = no retry).
        backoff_s: Wait before the first retry; doubled at each further retry.
        max_backoff_s: Upper bound of one wait.
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"expected max_retries >= 0 and 0 <= backoff_s <= max_backoff_s, got {self}")

    def wait_s(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return float(min(self.backoff_s * 2 ** (retry - 1), self.max_backoff_s))

    def total_wait_s(self) -> float:
        """Seconds waited in all, when every retry is needed."""
        return sum(self.wait_s(i) for i in range(1, self.max_retries + 1))


def is_transient(err: BaseException) -> bool:
    """True when `err` (or an error it was raised from) looks like a failure that may pass on a retry."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {t.__name__ for t in type(current).__mro__}
        text = str(current)
        if _PERMANENT_TEXT.search(text) and not _SERVER_ERROR.search(text):
            return False
        if names & _TRANSIENT_TYPES or _TRANSIENT_TEXT.search(text):
            return True
        current = current.__cause__ or current.__context__
    return False
