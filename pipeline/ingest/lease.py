"""A lease in the store that lets one ingestion run at a time work on a dataset, on any fsspec filesystem.

The lease is a series of small JSON objects `<store>/state/lease/lease-<generation>.json`; the highest
generation is the current lease. Acquiring writes generation g+1 with an atomic create-if-absent: `open(...,
"xb")`, which is `O_CREAT | O_EXCL` on a local filesystem and a conditional PUT `If-None-Match: *` on S3 (AWS
since 2024, honoured by moto 5.2; s3fs sends it for mode "x"). Of two runs racing for g+1 exactly one create
succeeds, so nothing is ever deleted or overwritten by a contender, and no conditional delete is needed.

A run may take generation g+1 only when generation g is released or expired, so a crashed holder blocks the
next run for at most one TTL (not at all on the same host: a holder whose process is gone there is taken over). The holder renews by rewriting its own object with a later expiry (only it writes
that object) and gives up (`LeaseLost`) if a newer generation exists or if its own expiry passed before it
renewed, by its own clock: a taker only ever sees an expired lease after that point, so two holders never
overlap as long as clocks agree to well within the TTL. Old generations are pruned after a successful acquire.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

import fsspec

from pipeline.atomic import create_new, write_bytes
from pipeline.errors import PipelineError

__all__ = ["Lease", "LeaseHeld", "LeaseInfo", "LeaseLost", "default_owner"]

log = logging.getLogger(__name__)
KEEP_GENERATIONS = 3


@dataclass(frozen=True)
class LeaseInfo:
    """One lease generation: who holds it, since when, until when (UTC ISO 8601), and whether it was released."""

    owner: str
    generation: int
    acquired_at: str
    expires_at: str
    released: bool = False

    def expired(self, now: float) -> bool:
        return datetime.fromisoformat(self.expires_at).timestamp() <= now


class LeaseHeld(PipelineError):
    """Another run holds the lease; `info` says who and until when."""

    def __init__(self, info: LeaseInfo) -> None:
        super().__init__(f"the dataset is being ingested by {info.owner} (lease generation {info.generation}, "
                         f"expires {info.expires_at}); try again after it finishes or expires")  # fmt: skip
        self.info = info


class LeaseLost(PipelineError):
    """The holder could not renew in time, or another run took the lease over; the holder must stop writing."""


def default_owner() -> str:
    """A lease owner id: host, process id and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _dead_here(owner: str) -> bool:
    """True when the owner (`host:pid:random`) ran on this host and its process no longer exists: a killed run
    on this machine frees its lease at once instead of after its TTL (other hosts still wait for the TTL)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


class Lease:
    """The lease of one dataset.

    Args:
        root: Dataset root (local path or `s3://bucket/prefix`); the lease lives under `<root>/state/lease/`.
        owner: Who acquires it (shown to other runs), e.g. `host:pid:random`.
        ttl_s: Seconds a lease stays valid without renewal.
        storage_options: fsspec options of the store.
        clock: Seconds since the epoch (tests pass another clock to reason about expiry without sleeping).
    """

    def __init__(self, root: str, *, owner: str, ttl_s: float = 600.0, storage_options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.owner, self.ttl_s, self.clock = owner, ttl_s, clock
        self._fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/state/lease", **dict(storage_options or {}))
        self._dir = path.rstrip("/")
        self.held: LeaseInfo | None = None

    def _path(self, generation: int) -> str:
        return f"{self._dir}/lease-{generation:012d}.json"

    def _generations(self) -> list[int]:
        self._fs.invalidate_cache(self._dir)
        try:
            names = self._fs.ls(self._dir, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            stem = name.rsplit("/", 1)[-1]
            if stem.startswith("lease-") and stem.endswith(".json"):
                out.append(int(stem[6:-5]))
        return sorted(out)

    def _read(self, generation: int) -> LeaseInfo:
        for _ in range(20):  # a local O_EXCL create is visible a moment before its content
            with self._fs.open(self._path(generation), "rb") as f:
                raw = f.read()
            if raw:
                return LeaseInfo(**json.loads(raw))
            time.sleep(0.05)
        raise PipelineError(f"lease object {self._path(generation)} is empty; remove it if no run is active")

    def current(self) -> LeaseInfo | None:
        """The newest lease generation, or None if the dataset never had one."""
        generations = self._generations()
        return self._read(generations[-1]) if generations else None

    def acquire(self) -> LeaseInfo:
        """Take the lease (a new generation) if it is free, released or expired.

        Raises:
            LeaseHeld: Another run holds a valid lease, or won the race for the next generation.
        """
        now = self.clock()
        latest = self.current()
        dead = latest is not None and not latest.released and _dead_here(latest.owner)
        if latest is not None and not latest.released and not latest.expired(now) and not dead:
            raise LeaseHeld(latest)
        if latest is not None and not latest.released:
            log.warning("taking over the %s lease of %s (expires %s)", "dead holder's" if dead else "expired",
                        latest.owner, latest.expires_at)  # fmt: skip
        info = LeaseInfo(self.owner, (latest.generation + 1) if latest else 1, _iso(now), _iso(now + self.ttl_s))
        self._fs.makedirs(self._dir, exist_ok=True)
        try:
            create_new(self._fs, self._path(info.generation), json.dumps(asdict(info)).encode())  # create-if-absent
        except FileExistsError:
            raise LeaseHeld(self._read(info.generation)) from None
        self.held = info
        for old in self._generations()[:-KEEP_GENERATIONS]:
            self._fs.rm(self._path(old))
        log.info("lease generation %d acquired by %s until %s", info.generation, info.owner, info.expires_at)
        return info

    def _check(self) -> LeaseInfo:
        if self.held is None:
            raise LeaseLost("this run does not hold the lease")
        if self.held.expired(self.clock()):
            raise LeaseLost(f"the lease of {self.owner} expired at {self.held.expires_at} before it was renewed; "
                            "another run may have taken it over, so this run stops")  # fmt: skip
        newer = [g for g in self._generations() if g > self.held.generation]
        if newer:
            taker = self._read(newer[-1])
            raise LeaseLost(f"the lease was taken over by {taker.owner} (generation {taker.generation})")
        return self.held

    def renew(self) -> LeaseInfo:
        """Push the expiry `ttl_s` ahead (call well within the TTL).

        Raises:
            LeaseLost: The lease expired before this renewal or a newer generation exists.
        """
        held = self._check()
        info = replace(held, expires_at=_iso(self.clock() + self.ttl_s))
        write_bytes(self._fs, self._path(info.generation), json.dumps(asdict(info)).encode())
        self.held = info
        return info

    def release(self) -> None:
        """Mark the held generation released (the next run may take the lease at once); idempotent."""
        if self.held is None:
            return
        try:
            self._check()
        except LeaseLost as err:
            log.warning("not releasing: %s", err)
            self.held = None
            return
        info = replace(self.held, released=True)
        write_bytes(self._fs, self._path(info.generation), json.dumps(asdict(info)).encode())
        self.held = None
        log.info("lease generation %d released by %s", info.generation, info.owner)

    @contextmanager
    def keep_alive(self, every_s: float | None = None) -> Iterator[Callable[[], None]]:
        """Renew in a background thread while the block runs; yields `check()`, which raises `LeaseLost` if a
        renewal failed (any error) or the lease was lost: call it before every step that makes work visible.
        The lease is released when the block ends, also on error."""
        stop = threading.Event()
        failure: list[BaseException] = []

        def loop() -> None:
            while not stop.wait(every_s or self.ttl_s / 3):
                try:
                    self.renew()
                except Exception as err:  # noqa: BLE001 - any failure ends the renewals; check() reports it
                    log.error("lease renewal failed, the run stops before its next write: %s", err)
                    failure.append(err)
                    return

        def check() -> None:
            if failure:
                raise LeaseLost(f"lease renewal failed: {failure[0]}") from failure[0]
            self._check()

        thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        thread.start()
        try:
            yield check
        finally:
            stop.set()
            thread.join()
            self.release()
