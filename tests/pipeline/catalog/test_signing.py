"""Planetary Computer signing against a local endpoint that speaks the token protocol."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.errors import StacError
from pipeline.catalog.signing import PlanetaryComputerSigner, is_azure_blob, redact, unsigned

HREF = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/UP/2017/06/13/S2A.SAFE/B02_10m.tif"


class _TokenService(BaseHTTPRequestHandler):
    calls: list[str] = []
    lifetime = timedelta(hours=1)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        _TokenService.calls.append(self.path)
        n = len(_TokenService.calls)
        expiry = datetime.now(timezone.utc) + _TokenService.lifetime
        body = json.dumps({"msft:expiry": expiry.isoformat().replace("+00:00", "Z"),
                           "token": f"st=2026&se=2027&sp=rl&sv=2021&sr=c&sig=SECRET{n}"}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    _TokenService.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1"
    server.shutdown()
    server.server_close()


def test_tokens_are_requested_once_per_container_and_reused(service: str) -> None:
    sign = PlanetaryComputerSigner(sas_url=service)
    a = sign(HREF)
    b = sign(HREF.replace("B02", "B03"))
    assert a.startswith(HREF + "?") and "sig=SECRET1" in a and "sig=SECRET1" in b
    assert _TokenService.calls == ["/api/sas/v1/token/sentinel2l2a01/sentinel2-l2"]
    other = sign("https://landsateuwest.blob.core.windows.net/landsat-c2/x.tif")
    assert "sig=SECRET2" in other and len(_TokenService.calls) == 2


def test_tokens_are_refreshed_when_they_expire(service: str) -> None:
    now = [datetime.now(timezone.utc)]
    sign = PlanetaryComputerSigner(sas_url=service, clock=lambda: now[0], refresh_margin=timedelta(minutes=5))
    assert "SECRET1" in sign(HREF)
    now[0] += timedelta(minutes=50)  # within the lifetime minus the margin
    assert "SECRET1" in sign(HREF)
    now[0] += timedelta(minutes=6)  # 56 min: inside the 5 min refresh margin of a 60 min token
    assert "SECRET2" in sign(HREF) and len(_TokenService.calls) == 2


def test_other_hrefs_are_untouched_and_never_hit_the_service(service: str) -> None:
    sign = PlanetaryComputerSigner(sas_url=service)
    for href in ("file:///data/B02.tif", "s3://bucket/B02.tif", "https://example.com/B02.tif"):
        assert sign(href) == href
    assert _TokenService.calls == []
    assert not is_azure_blob("https://example.com/x.blob.core.windows.net.tif")


def test_redact_and_unsigned_remove_every_token() -> None:
    signed = HREF + "?st=2026&se=2027&sp=rl&sv=2021&sr=c&sig=SECRET9"
    assert "SECRET9" not in redact(f"reading {signed} failed") and "sig=<redacted>" in redact(signed)
    assert unsigned(signed) == HREF
    assert unsigned("https://example.com/a.tif?x=1") == "https://example.com/a.tif?x=1"


def test_an_unreachable_service_gives_a_clear_error_without_the_token() -> None:
    sign = PlanetaryComputerSigner(sas_url="http://127.0.0.1:9/api/sas/v1", timeout_s=2)
    with pytest.raises(StacError, match="could not get a SAS token for sentinel2l2a01/sentinel2-l2"):
        sign(HREF)
