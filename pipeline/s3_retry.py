"""Object-store calls that survive a short outage: every s3fs request retried on transient failures, bounded.

botocore retries a refused connection for ~3.5 s and s3fs not at all, so a restarted or briefly unreachable S3
endpoint used to fail the first write or read of an ingestion or a training run. `RetryingS3FileSystem` is
s3fs's filesystem with its one request method (`_call_s3`, which every list, head, get, put, copy, delete and
multipart call of s3fs, fsspec and zarr goes through) wrapped: a failure `pipeline.transient.is_transient`
calls transient (connection refused/reset, timeouts, HTTP 5xx, SlowDown) is retried with `STORE_RETRIES`'
backoff, each retry logged as a warning; any other failure (missing key, access denied, a failed conditional
PUT) is raised at once, unchanged. After the last retry the last error is raised as it is.

Budget: 6 retries waiting 0.5, 1, 2, 4, 8, 8 s (23.5 s), each attempt itself taking up to ~3.5 s of botocore's own
retries: an outage of ~45 s is bridged; a longer one fails the call. `import pipeline` registers the class
for `s3://` and `s3a://` with fsspec (`pipeline.install_store_retries`), so every s3fs filesystem made in the
process -- Ray workers' included, they import `pipeline` to unpickle their tasks -- is one. pyarrow's S3 filesystem (the run storage of Ray Train) takes `PYARROW_S3_ATTEMPTS` (its default retry
strategy: 10 attempts, 25 ms doubling, ~25 s).

A retried PUT writes the same bytes again (idempotent); only a conditional create whose first attempt reached
the server before the connection dropped can come back as "already exists" -- the lease treats that as
held and the run stops cleanly (no data is written without the lease).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import s3fs

from pipeline.transient import RetryPolicy, is_transient

__all__ = ["PYARROW_S3_ATTEMPTS", "STORE_RETRIES", "RetryingS3FileSystem"]

log = logging.getLogger(__name__)
STORE_RETRIES = RetryPolicy(max_retries=6, backoff_s=0.5, max_backoff_s=8.0)
PYARROW_S3_ATTEMPTS = 10


class RetryingS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
    """s3fs's filesystem whose every request retries transient failures per `STORE_RETRIES`."""

    retry_policy: RetryPolicy = STORE_RETRIES

    async def _call_s3(self, method: Any, *akwarglist: Any, **kwargs: Any) -> Any:
        policy = self.retry_policy
        for attempt in range(policy.max_retries + 1):
            try:
                return await super()._call_s3(method, *akwarglist, **kwargs)
            except Exception as err:  # noqa: BLE001 - classified here; anything not transient is raised unchanged
                if attempt == policy.max_retries or not is_transient(err):
                    raise
                wait = policy.wait_s(attempt + 1)
                name = method if isinstance(method, str) else getattr(method, "__name__", "call")
                log.warning("object store %s failed transiently (%s); retry %d/%d in %.2f s", name,
                            str(err).splitlines()[0][:200], attempt + 1, policy.max_retries, wait)  # fmt: skip
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

