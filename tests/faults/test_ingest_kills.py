"""SIGKILL of the ingestion at seeded points, then a rerun: the store equals an uninterrupted run's, and a reader
looping over the store during all the writes never sees a truncated file."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]
SEED = 20260112


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _points(store: Path) -> list[tuple[str, Callable[[], bool]]]:
    """Kill points, each a condition on the store seen by polling: reads, encoding, commit, index, statistics."""
    def changed(path: Path) -> Callable[[], bool]:
        before = _stamp(path)
        return lambda: _stamp(path) != before

    def morecommitted(n: int) -> Callable[[], bool]:
        before = len(list((store / "shards").glob("*.zarr/_COMMITTED"))) if (store / "shards").exists() else 0
        return lambda: len(list((store / "shards").glob("*.zarr/_COMMITTED"))) >= before + n

    return [("reads", lambda: any((store / "manifests").glob("*.parquet"))),
            ("encoding", lambda: (store / "_tmp").exists() and any((store / "_tmp").iterdir())),
            ("commit", morecommitted(2)), ("index", changed(store / "shards.parquet")),
            ("statistics", changed(store / "rejects.parquet"))]  # rejects: the step right before the statistics


def _reader(store: Path, stop: threading.Event, bad: list[str]) -> None:
    """Parse every table, JSON document and marker of the store, over and over, while runs write it."""
    while not stop.is_set():
        for path in list(store.rglob("*")):
            name = path.name
            try:
                if name.endswith(".json") or name == "_COMMITTED":
                    json.loads(path.read_bytes())
                elif name.endswith(".parquet"):
                    pd.read_parquet(path)
                elif name.endswith(".png"):
                    blob = path.read_bytes()
                    if not blob.endswith(b"IEND\xaeB`\x82"):
                        bad.append(f"{path}: truncated PNG")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue  # renamed or removed between the listing and the read: not a partial file
            except Exception as err:  # noqa: BLE001 - any parse failure is a reader seeing half a file
                if "/_tmp/" not in str(path) and ".tmp-" not in name:
                    bad.append(f"{path}: {type(err).__name__}: {err}")


def test_kills_at_seeded_points_then_a_rerun_give_the_uninterrupted_store(sample_items, serve_stac, ingest_job,
                                                                          committed, tmp_path: Path) -> None:  # fmt: skip
    collection, rows = sample_items("landsat-c2-l2")
    rng = random.Random(SEED)
    with serve_stac(tmp_path / "api", {"landsat-c2-l2": (collection, rows)}) as url:
        reference = ingest_job(tmp_path / "ref", url)
        assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()[-2000:] if reference.stdout else ""
        expected = committed(tmp_path / "ref")
        assert len(expected) >= 6
        store = tmp_path / "run"
        stop, bad = threading.Event(), []
        reader = threading.Thread(target=_reader, args=(store, stop, bad), daemon=True)
        reader.start()
        landed = []
        try:
            for name, ready in _points(store):
                victim = ingest_job(store, url)
                time.sleep(rng.uniform(0.0, 0.01))
                deadline = time.monotonic() + 120
                while not ready() and victim.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.02))  # the seeded moment after the event
                alive = victim.poll() is None
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                landed.append((name, alive))
                if not alive:  # the run finished first: start the next point on a fresh run
                    break
            resumed = ingest_job(store, url)
            out = resumed.communicate(timeout=300)[0].decode()
        finally:
            stop.set()
            reader.join(timeout=30)
    assert resumed.returncode == 0, out[-2000:]
    assert sum(alive for _, alive in landed) >= 4, landed  # the kills landed mid-run
    final = committed(store)
    assert sorted(final) == sorted(expected)  # the same deterministic shards: none missing, none extra
    assert {k: v["content_hash"] for k, v in final.items()} == {k: v["content_hash"] for k, v in expected.items()}
    chips = [c for v in final.values() for c in v["chip_ids"]]
    assert len(chips) == len(set(chips)) == sum(v["n_chips"] for v in expected.values())  # lost 0, duplicated 0
    assert json.loads((store / "stats.json").read_text()) == json.loads((tmp_path / "ref" / "stats.json").read_text())
    assert not any((store / "_tmp").iterdir()) if (store / "_tmp").exists() else True
    assert bad == [], bad[:5]
