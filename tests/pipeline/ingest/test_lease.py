"""The store lease on a local path and on the S3 server: one holder at a time, takeover after expiry, renewal."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.ingest.lease import Lease, LeaseHeld, LeaseLost


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.stack)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A dataset root on a local path or on the session stack's S3 server (moto)."""
    if request.param == "local":
        return str(tmp_path / "ds"), {}
    env = request.getfixturevalue("stack_env")
    opts = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": env["AWS_ENDPOINT_URL"]}  # fmt: skip
    return f"{env['ANYSAT_STORE_URL']}/tests/lease-{uuid.uuid4().hex[:8]}", opts


def test_second_holder_is_refused_with_who_and_until_when(store: tuple[str, dict[str, str]]) -> None:
    root, opts = store
    first = Lease(root, owner="run-a", ttl_s=60, storage_options=opts)
    info = first.acquire()
    with pytest.raises(LeaseHeld) as held:
        Lease(root, owner="run-b", ttl_s=60, storage_options=opts).acquire()
    assert held.value.info.owner == "run-a" and held.value.info.expires_at == info.expires_at
    assert "run-a" in str(held.value) and info.expires_at in str(held.value)
    renewed = first.renew()
    assert renewed.expires_at >= info.expires_at and renewed.generation == info.generation
    first.release()
    second = Lease(root, owner="run-b", ttl_s=60, storage_options=opts).acquire()  # released: free at once
    assert second.owner == "run-b" and second.generation == info.generation + 1


def test_an_expired_lease_is_taken_over_and_the_old_holder_stops(store: tuple[str, dict[str, str]]) -> None:
    root, opts = store
    now = time.time()
    crashed = Lease(root, owner="crashed", ttl_s=30, storage_options=opts, clock=lambda: now)
    crashed.acquire()  # never renewed nor released
    with pytest.raises(LeaseHeld):
        Lease(root, owner="early", ttl_s=30, storage_options=opts, clock=lambda: now + 10).acquire()
    taker = Lease(root, owner="taker", ttl_s=30, storage_options=opts, clock=lambda: now + 31)
    info = taker.acquire()
    assert info.owner == "taker" and info.generation == 2
    with pytest.raises(LeaseLost, match="taken over by taker"):
        crashed.renew()
    crashed.release()  # refuses to release someone else's lease
    assert Lease(root, owner="reader", storage_options=opts).current() == info


def test_racing_acquirers_get_exactly_one_lease(store: tuple[str, dict[str, str]]) -> None:
    root, opts = store
    winners: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(6)

    def contend(name: str) -> None:
        lease = Lease(root, owner=name, ttl_s=60, storage_options=opts)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(name)
        except LeaseHeld as held:
            refused.append(held.info.owner)

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 5
    assert set(refused) == set(winners)  # every loser was told who holds it


def test_keep_alive_renews_and_releases_on_error(tmp_path: Path) -> None:
    lease = Lease(str(tmp_path / "ds"), owner="worker", ttl_s=0.6)
    first = lease.acquire()
    with pytest.raises(RuntimeError, match="boom"), lease.keep_alive(every_s=0.1) as check:
        deadline = time.monotonic() + 10
        while lease.held is not None and lease.held.expires_at == first.expires_at and time.monotonic() < deadline:
            time.sleep(0.05)
        check()
        raise RuntimeError("boom")
    current = Lease(str(tmp_path / "ds"), owner="next").current()
    assert current is not None and current.released and current.expires_at > first.expires_at
