"""Transient read failures through a real HTTP server: retried until they pass, rejected when they never do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import xarray as xr
from rasterio.windows import from_bounds

from infra.local.services import free_port
from pipeline.ingest.chips import SensorSpec, load_chip
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.grid import ChipPlan
from pipeline.ingest.run import run_ingest
from pipeline.ingest.raster_reader import ChipReader
from pipeline.ingest.retry import RetryPolicy, TransientReadError, call_with_retries, is_transient
from pipeline.store.shards import StoreLayout, read_index

ROOT = Path(__file__).resolve().parents[3]
S2 = SensorSpec("s2", ("B02", "B05"), ("B2", "B5"), 10.0, scale=1e-4)
FAST = RetryPolicy(max_retries=3, backoff_s=0.01, max_backoff_s=0.05)


class _Server:
    def __init__(self, root: Path, failures: dict[str, int], port: int = 0) -> None:
        self.root = root
        script = Path(__file__).with_name("range_server.py")
        rules = [f"{p}={n}" for p, n in failures.items()] + [f"--port={port}"]
        self.proc = subprocess.Popen([sys.executable, str(script), str(root), *rules], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def href(self, local_href: str) -> str:
        return f"{self.url}/{Path(local_href.removeprefix('file://')).relative_to(self.root).as_posix()}"

    def requests(self, path: str) -> list[int]:
        with urllib.request.urlopen(f"{self.url}/_requests", timeout=10) as resp:  # noqa: S310 - loopback
            return [status for _, p, status in json.loads(resp.read()) if p == path]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture()
def catalog_root(catalog_files) -> Path:
    return next(p for p in catalog_files if p.name == "collection.json").parent.parent


@pytest.fixture()
def s2_item(catalog_files) -> pystac.Item:
    path = next(p for p in catalog_files if p.parent.name == "sentinel-2-l2a" and p.suffix == ".ndjson")
    return pystac.Item.from_dict(json.loads(path.read_text().splitlines()[0]))


def _serve(catalog_root: Path, item: pystac.Item, failures: dict[str, int]) -> Iterator[tuple[_Server, pystac.Item]]:
    remote = item.clone()
    paths = {k: "/" + Path(a.href.removeprefix("file://")).relative_to(catalog_root).as_posix()
             for k, a in item.assets.items()}  # fmt: skip
    server = _Server(catalog_root, {paths[k]: n for k, n in failures.items()})
    for key, asset in remote.assets.items():
        asset.href = server.href(item.assets[key].href)
    try:
        yield server, remote
    finally:
        server.stop()


def test_503_answers_are_retried_and_the_chip_equals_the_direct_read(catalog_root: Path, s2_item) -> None:
    x0, y0 = s2_item.assets["B02"].extra_fields["proj:transform"][2], s2_item.assets["B02"].extra_fields[
        "proj:transform"][5]  # fmt: skip
    bounds = (x0 + 120, y0 - 600, x0 + 600, y0 - 120)
    plan = ChipPlan("c", 32633, bounds, 0.0, 0.0, {"s2": (s2_item.id,)})
    for server, remote in _serve(catalog_root, s2_item, {"B02": 2, "B05": 3}):
        with ChipReader(retry=FAST) as reader:
            chip, rejects = load_chip(plan, {remote.id: remote}, {"s2": S2}, reader=reader)
        assert chip is not None and rejects == []
        b02 = server.href(s2_item.assets["B02"].href).removeprefix(server.url)
        statuses = server.requests(b02)
        assert statuses[:2] == [503, 503] and set(statuses[2:]) <= {200, 206} and len(statuses) > 2
    for c, key in enumerate(("B02", "B05")):
        with rasterio.open(s2_item.assets[key].href.removeprefix("file://")) as ds:
            ref = ds.read(1, window=from_bounds(*bounds, transform=ds.transform), out_shape=(48, 48))
        np.testing.assert_array_equal(chip.modalities["s2"].data[0, c], ref * np.float32(1e-4))


def test_a_file_that_always_fails_is_a_transient_reject_after_the_retries(catalog_root: Path, s2_item) -> None:
    x0, y0 = s2_item.assets["B02"].extra_fields["proj:transform"][2], s2_item.assets["B02"].extra_fields[
        "proj:transform"][5]  # fmt: skip
    plan = ChipPlan("c", 32633, (x0, y0 - 480, x0 + 480, y0), 0.0, 0.0, {"s2": (s2_item.id,)})
    for server, remote in _serve(catalog_root, s2_item, {"B05": -1}):
        with ChipReader(retry=FAST) as reader:
            chip, rejects = load_chip(plan, {remote.id: remote}, {"s2": S2}, reader=reader)
        assert chip is None and [r.kind for r in rejects] == ["transient_io", "no_usable_item"]
        assert "after 4 attempts" in rejects[0].reason and "503" in rejects[0].reason
        b05 = server.href(s2_item.assets["B05"].href).removeprefix(server.url)
        assert len(server.requests(b05)) >= 4  # the first attempt and three retries reached the server (GDAL may
        # send a HEAD and a GET per attempt)
        missing = remote.clone()
        missing.assets["B02"].href = f"{server.url}/no/such/B02.tif"
        with ChipReader(retry=FAST) as reader:
            _, rejects = load_chip(plan, {remote.id: missing}, {"s2": S2}, reader=reader)
        statuses = server.requests("/no/such/B02.tif")
        assert rejects[0].kind == "href_not_found" and statuses == [404, 404], statuses  # asked once more with
        # GDAL's cache bypassed (a cached failure must not pass for a deleted file), never retried with backoff


def test_an_outage_is_transient_and_does_not_turn_later_reads_into_href_not_found(catalog_root: Path,
                                                                                  s2_item) -> None:  # fmt: skip
    x0, y0 = s2_item.assets["B02"].extra_fields["proj:transform"][2], s2_item.assets["B02"].extra_fields[
        "proj:transform"][5]  # fmt: skip
    plan = ChipPlan("c", 32633, (x0, y0 - 480, x0 + 480, y0), 0.0, 0.0, {"s2": (s2_item.id,)})
    port = free_port()
    down = s2_item.clone()
    for key, asset in down.assets.items():
        rel = Path(s2_item.assets[key].href.removeprefix("file://")).relative_to(catalog_root).as_posix()
        asset.href = f"http://127.0.0.1:{port}/{rel}"
    no_retry = RetryPolicy(max_retries=0)
    with ChipReader(retry=no_retry) as reader:  # the server is down: connection refused
        chip, rejects = load_chip(plan, {down.id: down}, {"s2": S2}, reader=reader)
    assert chip is None and rejects[0].kind == "transient_io", rejects
    server = _Server(catalog_root, {}, port=port)  # back on the same address
    try:
        with ChipReader(retry=no_retry) as reader:
            chip, rejects = load_chip(plan, {down.id: down}, {"s2": S2}, reader=reader)
    finally:
        server.stop()
    assert chip is not None and rejects == [], rejects  # GDAL's cached "does not exist" was not believed
    dns = s2_item.clone()
    for asset in dns.assets.values():
        asset.href = "http://no-such-host.invalid/B.tif"
    with ChipReader(retry=no_retry) as reader:
        _, rejects = load_chip(plan, {dns.id: dns}, {"s2": S2}, reader=reader)
    assert rejects[0].kind == "transient_io" and "resolve" in rejects[0].reason, rejects


def test_a_truncated_cog_is_corrupt_and_its_reason_has_gdals_cause(s2_item, tmp_path: Path) -> None:
    src = Path(s2_item.assets["B02"].href.removeprefix("file://"))
    cut = tmp_path / "B02.tif"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    item = s2_item.clone()
    item.assets["B02"].href = cut.as_uri()
    x0, y0 = item.assets["B02"].extra_fields["proj:transform"][2], item.assets["B02"].extra_fields["proj:transform"][5]
    plan = ChipPlan("c", 32633, (x0, y0 - 480, x0 + 480, y0), 0.0, 0.0, {"s2": (item.id,)})
    chip, rejects = load_chip(plan, {item.id: item}, {"s2": S2})
    assert chip is None and rejects[0].kind == "corrupt_raster", rejects
    assert "IReadBlock failed" in rejects[0].reason or "TIFFRead" in rejects[0].reason, rejects[0].reason


def test_transient_errors_are_told_apart_from_permanent_ones() -> None:
    assert is_transient(OSError("HTTP response code: 503")) and is_transient(TimeoutError("read"))
    assert is_transient(RuntimeError("An error occurred (SlowDown) when calling the GetObject operation"))
    assert not is_transient(OSError("HTTP response code: 404")) and not is_transient(ValueError("not recognized as"))
    assert is_transient(OSError("CURL error: Failed to connect to 127.0.0.1 port 9: Could not connect to server"))
    assert is_transient(OSError("CURL error: Could not resolve host: example.invalid"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    calls: list[float] = []
    with pytest.raises(TransientReadError) as info:
        call_with_retries(lambda: (_ for _ in ()).throw(ConnectionResetError("reset by peer")),
                          policy=RetryPolicy(3, 0.5, 1.0), sleep=calls.append)  # fmt: skip
    assert info.value.attempts == 4 and calls == [0.5, 1.0, 1.0]  # doubled, then capped


@pytest.mark.stack
def test_run_with_an_always_failing_file_keeps_the_other_data(catalog_files, tmp_path: Path) -> None:
    """Two S2 items over the demo chips; one of them has a file that always answers 503."""
    rows = {}
    for name in ("sentinel-2-l2a", "sentinel-1-rtc"):
        path = next(p for p in catalog_files if p.parent.name == name and p.suffix == ".ndjson")
        lines = path.read_text().splitlines()
        rows[name] = next(json.loads(x) for x in lines if json.loads(x)["id"].endswith("_87_48"))
    www = tmp_path / "www"
    items: dict[str, list[dict]] = {"sentinel-2-l2a": [], "sentinel-1-rtc": []}
    for folder, name, suffix in (("s2-good", "sentinel-2-l2a", "-good"), ("s2-flaky", "sentinel-2-l2a", ""),
                                 ("s1", "sentinel-1-rtc", "")):  # fmt: skip
        item = json.loads(json.dumps(rows[name]))
        item["id"] += suffix
        item["links"] = []
        for asset in item["assets"].values():
            local = Path(asset["href"].removeprefix("file://"))
            (www / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(local, www / folder / local.name)
            asset["href"] = f"/{folder}/{local.name}"
        items[name].append(item)
    server = _Server(www, {"/s2-flaky/B03.tif": -1})
    rustac = None
    try:
        files = []
        for name, collection_items in items.items():
            for item in collection_items:
                for asset in item["assets"].values():
                    asset["href"] = server.url + asset["href"]
            folder = tmp_path / name
            folder.mkdir()
            source = next(p for p in catalog_files if p.parent.name == name and p.name == "collection.json")
            (folder / "collection.json").write_text(source.read_text())
            (folder / "items.ndjson").write_text("".join(json.dumps(r) + "\n" for r in collection_items))
            files += [folder / "collection.json", folder / "items.ndjson"]
        port = free_port()
        rustac = subprocess.Popen([str(Path(sys.executable).parent / "rustac"), "serve", "--addr", f"127.0.0.1:{port}",
                                   *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1.0)
        config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml", [
            f"store={tmp_path / 'ds'}", "quicklooks=0", "max_retries=2", "retry_backoff_s=0.01"])  # fmt: skip
        summary = run_ingest(config, stac_url=f"http://127.0.0.1:{port}", use_ray=False)
        flaky_requests = len(server.requests("/s2-flaky/B03.tif"))
    finally:
        if rustac is not None:
            rustac.kill()
            rustac.wait()
        server.stop()
    rejects = pd.read_parquet(tmp_path / "ds" / "rejects.parquet")
    flaky = rejects[rejects["subject"] == rows["sentinel-2-l2a"]["id"]]
    assert len(flaky) == summary.chips_planned >= 2  # one reject per chip that planned the flaky item
    assert set(flaky["kind"]) == {"transient_io"} and all("after 3 attempts" in r for r in flaky["reason"])
    assert flaky_requests >= 3 * summary.chips_planned  # every attempt reached the server
    assert summary.chips_written == summary.chips_planned and "no_usable_item" not in summary.rejects
    index = read_index(StoreLayout(str(tmp_path / "ds")))
    ds = xr.open_zarr(index["url"][0], group="s2", zarr_format=3, consolidated=False)
    assert {str(i) for i in ds["item_ids"].values.ravel() if i} == {rows["sentinel-2-l2a"]["id"] + "-good"}
