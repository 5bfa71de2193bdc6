"""Planetary Computer signing: SAS tokens requested right before a read, cached until expiry, never stored.

Only hrefs on Azure Blob Storage (`*.blob.core.windows.net`) are signed; any other href passes unchanged. The
signer speaks Planetary Computer's token protocol (`GET {sas_url}/token/{account}/{container}` →
`{"msft:expiry": ..., "token": ...}`), caches one token per account/container and refreshes it a margin before
it expires. `redact` removes tokens from any string before it is logged or written.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import StacError
from pipeline.logs import redact_secrets

__all__ = ["PlanetaryComputerSigner", "is_azure_blob", "redact", "unsigned"]

log = logging.getLogger(__name__)

PC_SAS_URL = "https://planetarycomputer.microsoft.com/api/sas/v1"
_SAS_PARAMS = re.compile(r"([?&])(sig|se|st|sp|sv|sr|skoid|sktid|skt|ske|sks|skv|spr|sip|token|signature)=[^&\s\"']*",
                         re.IGNORECASE)  # fmt: skip


def is_azure_blob(href: str) -> bool:
    """True for hrefs that Planetary Computer's storage serves (and that need a SAS token)."""
    host = urlsplit(href).hostname or ""
    return host.endswith(".blob.core.windows.net")


_SIGNING_KEYS = re.compile(r"^(sig|se|st|sp|sv|sr|spr|sip|ske|skoid|sktid|skt|sks|skv|ss|srt|token|signature"
                           r"|access_token|x-amz-[a-z-]+|x-goog-[a-z-]+)$", re.IGNORECASE)  # fmt: skip


def unsigned(href: str) -> str:
    """The href without signature: no query string for an Azure blob URL (SAS tokens live there), and for any
    other URL its signing parameters (SAS, `X-Amz-*`, `X-Goog-*`, `token`, `signature`) removed."""
    parts = urlsplit(href)
    if is_azure_blob(href):
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if not parts.query:
        return href
    kept = [p for p in parts.query.split("&") if not _SIGNING_KEYS.match(p.split("=", 1)[0])]
    if len(kept) == len(parts.query.split("&")):
        return href
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))


def redact(text: str) -> str:
    """Replace SAS/token query parameters, URL credentials and keys in `text` by `<redacted>` (for logs, errors
    and written files; `pipeline.logs.redact_secrets`)."""
    return redact_secrets(_SAS_PARAMS.sub(lambda m: f"{m.group(1)}{m.group(2)}=<redacted>", text))


@dataclass
class _Token:
    value: str
    expiry: datetime


class PlanetaryComputerSigner:
    """Callable href → signed href, for `pipeline.ingest.raster_load.load_items(sign=...)`.

    Args:
        sas_url: Root of the token service.
        subscription_key: Optional Planetary Computer key, sent as `Ocp-Apim-Subscription-Key`.
        refresh_margin: Refresh a token this long before its expiry.
        timeout_s: HTTP timeout of a token request.
        clock: Current UTC time (injectable for tests of expiry).
    """

    def __init__(self, *, sas_url: str = PC_SAS_URL, subscription_key: str | None = None,
                 refresh_margin: timedelta = timedelta(minutes=5), timeout_s: float = 30.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:  # fmt: skip
        self.sas_url = sas_url.rstrip("/")
        self._key = subscription_key
        self.refresh_margin = refresh_margin
        self.timeout_s = timeout_s
        self.clock = clock
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._lock = threading.Lock()
        self.requests = 0

    def __call__(self, href: str) -> str:
        if not is_azure_blob(href):
            return href
        parts = urlsplit(href)
        account = (parts.hostname or "").split(".")[0]
        container = parts.path.lstrip("/").split("/", 1)[0]
        token = self._token(account, container)
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        query = f"{parts.query}&{token}" if parts.query and "sig=" not in parts.query else token
        return f"{base}?{query}"

    def _token(self, account: str, container: str) -> str:
        with self._lock:
            cached = self._tokens.get((account, container))
            if cached is not None and cached.expiry - self.refresh_margin > self.clock():
                return cached.value
            url = f"{self.sas_url}/token/{account}/{container}"
            request = urllib.request.Request(url, headers={"Ocp-Apim-Subscription-Key": self._key} if self._key else {})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310 - configured URL
                    body = json.loads(resp.read())
            except (OSError, ValueError) as err:
                raise StacError(f"could not get a SAS token for {account}/{container} from {self.sas_url}: "
                                f"{redact(str(err))}") from None  # fmt: skip
            self.requests += 1
            expiry = datetime.fromisoformat(str(body["msft:expiry"]).replace("Z", "+00:00"))
            self._tokens[(account, container)] = _Token(str(body["token"]), expiry)
            log.info("new SAS token for %s/%s, valid until %s", account, container, expiry.isoformat())
            return str(body["token"])
