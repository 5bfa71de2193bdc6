"""Secrets never reach a log: a redaction applied to every log record and warning of the process.

`install_redaction()` (called first by every job entry point, and by Ray tasks that log) wraps the log record
factory, so every record created anywhere — the pipeline's, GDAL's through rasterio, Ray's, urllib3's, botocore's,
MLflow's, warnings routed through `logging.captureWarnings` — has its message, arguments and traceback text
redacted before any handler or formatter sees it; handlers added later are covered too. `redact_secrets` removes:

- signed-URL query parameters: Azure SAS (`sig`, `se`, `st`, `sv`, `sp`, `sr`, `skoid`, …), AWS SigV4
  (`X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`), and `token`, `signature`, `access_token`,
  `password`, `secret`, `key`/`apikey`/`api_key`, `code` parameters;
- user:password in URLs (`https://user:pass@host` → `https://<redacted>@host`);
- AWS access key ids (`AKIA…`/`ASIA…`) and secret keys given as `aws_secret_access_key=…`/`"secret": …`;
- `Authorization: Bearer …`/`Basic …` headers and `Ocp-Apim-Subscription-Key: …`.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from typing import Any

__all__ = ["install_redaction", "redact_secrets"]

_QUERY = re.compile(
    r"([?&;])(sig|se|st|sp|sv|sr|spr|sip|ske|skoid|sktid|skt|sks|skv|ss|srt|rscc|rscd|token|signature"
    r"|access_token|password|passwd|secret|api_?key|key|code|x-amz-signature|x-amz-credential"
    r"|x-amz-security-token|x-goog-signature|x-goog-credential)=[^&\s\"'<>]*",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@\"'<>]+:[^/\s@\"'<>]*@", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_NAMED_SECRET = re.compile(
    r"""((?:aws_secret_access_key|aws_session_token|secret_access_key|secret|password|subscription_key)"""
    r"""["']?\s*[:=]\s*["']?)[^\s"',}]+""",
    re.IGNORECASE,
)
_HEADER = re.compile(r"((?:authorization|ocp-apim-subscription-key|x-api-key)\s*[:=]\s*(?:bearer |basic )?)"
                     r"[^\s\"',}]+", re.IGNORECASE)  # fmt: skip


def redact_secrets(text: str) -> str:
    """`text` with signed-URL parameters, URL credentials, keys and auth headers replaced by `<redacted>`."""
    text = _QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}=<redacted>", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}<redacted>@", text)
    text = _AWS_KEY_ID.sub("<redacted-key-id>", text)
    text = _NAMED_SECRET.sub(lambda m: f"{m.group(1)}<redacted>", text)
    return _HEADER.sub(lambda m: f"{m.group(1)}<redacted>", text)


_LOCK = threading.Lock()
_INSTALLED: list[Any] = []


def _redacting_factory(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is left to logging's own error handling
            return record
        record.msg, record.args = redact_secrets(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_secrets(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    return factory


def install_redaction() -> None:
    """Redact every log record and warning of this process from now on (idempotent, thread-safe)."""
    with _LOCK:
        current = logging.getLogRecordFactory()
        if not getattr(current, "redacting", False):
            logging.setLogRecordFactory(_redacting_factory(current))
        if not _INSTALLED:
            original = warnings.showwarning

            def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                     line: str | None = None) -> None:  # fmt: skip
                original(redact_secrets(str(message)), category, filename, lineno, file, line)

            warnings.showwarning = show
            _INSTALLED.append(show)
        logging.captureWarnings(True)  # warnings become `py.warnings` records, redacted like the others
