"""Planetary Computer signing against a local endpoint that speaks the token protocol."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.errors import StacError
from pipeline.catalog.signing import PlanetaryComputerSigner, is_azure_blob, redact, unsigned

HREF = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/UP/2017/06/13/S2A.SAFE/B02_10m.tif"


def test_tokens_are_requested_once_per_container_and_reused(sas_service: tuple[str, list[str]]) -> None:
    service, calls = sas_service
    sign = PlanetaryComputerSigner(sas_url=service)
    a = sign(HREF)
    b = sign(HREF.replace("B02", "B03"))
    assert a.startswith(HREF + "?") and "sig=SECRET1" in a and "sig=SECRET1" in b
    assert calls == ["/api/sas/v1/token/sentinel2l2a01/sentinel2-l2"]
    other = sign("https://landsateuwest.blob.core.windows.net/landsat-c2/x.tif")
    assert "sig=SECRET2" in other and len(calls) == 2


def test_tokens_are_refreshed_when_they_expire(sas_service: tuple[str, list[str]]) -> None:
    service, calls = sas_service
    now = [datetime.now(timezone.utc)]
    sign = PlanetaryComputerSigner(sas_url=service, clock=lambda: now[0], refresh_margin=timedelta(minutes=5))
    assert "SECRET1" in sign(HREF)
    now[0] += timedelta(minutes=50)  # within the lifetime minus the margin
    assert "SECRET1" in sign(HREF)
    now[0] += timedelta(minutes=6)  # 56 min: inside the 5 min refresh margin of a 60 min token
    assert "SECRET2" in sign(HREF) and len(calls) == 2


def test_other_hrefs_are_untouched_and_never_hit_the_service(sas_service: tuple[str, list[str]]) -> None:
    service, calls = sas_service
    sign = PlanetaryComputerSigner(sas_url=service)
    for href in ("file:///data/B02.tif", "s3://bucket/B02.tif", "https://example.com/B02.tif"):
        assert sign(href) == href
    assert calls == []
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
