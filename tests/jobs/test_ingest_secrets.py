"""No token, signature or credential anywhere an ingestion writes: a real run with everything secret in play.

`jobs/ingest.py` runs with Planetary Computer signing for both sensors (SAS tokens from the suite's local token
endpoint, `…&sig=SECRET<n>`), every asset on an Azure Blob Storage host that only answers signed requests (a
loopback proxy standing in for it), the Sentinel-1 hrefs served already signed with a stale token (as some APIs
give them), one blob missing (a reject after a signed read), and an S3 store written with the local stack's
credentials. Then every object of the store
(manifest, index, rejects, config, statistics, shards, quicklooks, state) is scanned as bytes and, for tables and
shards, as decoded values (compression could hide a string), and every log line of the job too, for the tokens
and the secret key. The ingestion job logs nothing to MLflow (it has no tracking), so there is nothing to scan
there. The scan itself is shown finding a signed href and the key planted into the store, so a clean result means
something.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import s3fs
import xarray as xr

from pipeline.catalog.signing import PlanetaryComputerSigner

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "tests" / "pipeline" / "ingest" / "range_server.py"
GROUP_META = re.compile(r"(.*\.zarr)/([^/]+)/zarr\.json")
AZURE = {"s2": ("sentinel2l2a01", "sentinel2-l2"), "s1": ("sentinel1euwestrtc", "sentinel1-grd-rtc")}


def _on_azure(item: dict, modality: str, blobs: Path, *, missing: str = "", query: str = "") -> dict:
    """The item with every asset moved to an Azure blob href (unsigned as Planetary Computer's STAC API gives
    them, or with `query`); each file copied to where the loopback proxy serves it from, except asset `missing`."""
    account, container = AZURE[modality]
    out = json.loads(json.dumps(item))
    for key, asset in out["assets"].items():
        if not asset["href"].startswith("file://"):
            continue
        path = f"{container}/{out['id']}/{key}.tif"
        if key != missing:
            (blobs / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(asset["href"].removeprefix("file://"), blobs / path)
        asset["href"] = f"http://{account}.blob.core.windows.net/{path}{query}"
    return out


def _leaks(blobs: dict[str, bytes], secrets: list[bytes]) -> list[str]:
    """Names of the blobs holding any of the secrets."""
    return sorted(name for name, blob in blobs.items() if any(s in blob for s in secrets))


def test_a_signed_run_into_s3_writes_and_logs_no_secret(sample_items, serve_stac, sas_service, stack_env,
                                                        tmp_path: Path) -> None:  # fmt: skip
    s2_col, s2 = sample_items("sentinel-2-l2a")
    s1_col, s1 = sample_items("sentinel-1-rtc")
    blobs = tmp_path / "blobs"
    good = next(i for i in s2 if i["id"].endswith("_87_48"))
    other = json.loads(json.dumps(good))  # a second acquisition of the cell whose B02 blob is missing
    other["id"], other["properties"]["datetime"] = f"{good['id']}-missing", "2017-06-14T10:10:20Z"
    s2_items = [_on_azure(good, "s2", blobs), _on_azure(other, "s2", blobs, missing="B02")]
    s1_items = [_on_azure(next(i for i in s1 if i["id"].endswith("_87_48")), "s1", blobs,
                          query="?se=2017-01-01&sr=c&sig=STALESECRET")]  # fmt: skip
    proxy = subprocess.Popen([sys.executable, str(PROXY), str(blobs), "--require-signature"], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert proxy.stdout is not None
    port = int(proxy.stdout.readline())
    sas_url, token_calls = sas_service
    store = f"{stack_env['ANYSAT_STORE_URL']}/tests/secrets-{uuid.uuid4().hex[:8]}"
    try:
        with serve_stac(tmp_path / "api", {"sentinel-2-l2a": (s2_col, s2_items),
                                           "sentinel-1-rtc": (s1_col, s1_items)}) as url:  # fmt: skip
            env = os.environ | stack_env | {"STAC_API_URL": url, "PC_SAS_URL": sas_url, "PYTHONPATH": str(ROOT),
                                            "GDAL_HTTP_PROXY": f"127.0.0.1:{port}",
                                            "NO_PROXY": "127.0.0.1,localhost"}  # fmt: skip
            done = subprocess.run([sys.executable, str(ROOT / "jobs" / "ingest.py"), "--no-ray", "--config",
                                   str(ROOT / "configs" / "ingest-demo.yaml"), "--set", f"store={store}",
                                   "--set", "sensors.0.sign=planetary-computer",
                                   "--set", "sensors.1.sign=planetary-computer"],
                                  env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_requests", timeout=10) as resp:
            requests = json.loads(resp.read())
    finally:
        proxy.kill()
        proxy.wait()
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    summary = json.loads(done.stdout)
    assert summary["chips_written"] == summary["chips_planned"] >= 1, summary
    # the secrets were really in play: both containers got tokens, and every read of a blob was a signed one
    assert {c.split("/token/", 1)[1] for c in token_calls} == {f"{a}/{c}" for a, c in AZURE.values()}, token_calls
    reads = [(path, status) for method, path, status in requests if ".tif" in path]
    assert reads and all("sig=SECRET" in path and "STALE" not in path for path, _ in reads), reads[:5]
    assert {path.split("/")[2] for path, _ in reads} == {a + ".blob.core.windows.net" for a, _ in AZURE.values()}
    assert {status for path, status in reads if "-missing/B02" in path} == {404}, reads
    assert {status for path, status in reads if "-missing/B02" not in path} <= {200, 206}, reads

    opts = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    fs = s3fs.S3FileSystem(**opts)
    prefix = store.removeprefix("s3://")

    def scan() -> dict[str, bytes]:
        """Every object under the store as bytes, plus (`<table>#values`, `<shard>#<group>`) decoded views."""
        fs.invalidate_cache()
        out = {name.removeprefix(prefix): fs.cat_file(name) for name in fs.find(prefix)}
        for name, blob in list(out.items()):
            if name.endswith(".parquet"):
                out[f"{name}#values"] = pd.read_parquet(io.BytesIO(blob)).to_csv().encode()
            group = GROUP_META.fullmatch(name)
            if group:  # a shard's group: its attributes and every string array (item ids) decoded
                ds = xr.open_zarr(f"s3://{prefix}{group[1]}", group=group[2], zarr_format=3, consolidated=False,
                                  storage_options=opts)  # fmt: skip
                text = [json.dumps(v.attrs, default=str) for v in [ds, *ds.variables.values()]]
                text += [str(v.values.tolist()) for v in ds.variables.values() if v.dtype.kind in "OUS"]
                out[f"{group[1]}#{group[2]}"] = "\n".join(text).encode()
        return out

    written = scan()
    names = set(written)
    assert any(n.endswith("#s2") for n in names) and any(n.endswith("#values") for n in names), sorted(names)
    rejects = pd.read_parquet(io.BytesIO(written["/rejects.parquet"]))
    missed = rejects[rejects["subject"] == other["id"]]
    assert set(missed["kind"]) == {"href_not_found"}, rejects  # the failed signed read is a recorded reject
    assert {"/shards.parquet", "/rejects.parquet", "/config.json", "/stats.json"} <= names, sorted(names)
    assert any("manifest" in n for n in names) and any(n.endswith("/_COMMITTED") for n in names), sorted(names)
    assert any(n.endswith(".png") for n in names) and any("/state/" in n for n in names), sorted(names)
    secrets = [b"SECRET", stack_env["AWS_SECRET_ACCESS_KEY"].encode()]  # every token's signature is SECRET…
    in_store = _leaks(written, secrets)
    in_log = [line for line in log.splitlines() if any(s.decode() in line for s in secrets)]
    assert in_store == [] and in_log == [], (in_store, in_log[:5])

    # the scan finds what it looks for: a signed href and the secret key planted into the store
    signed = PlanetaryComputerSigner(sas_url=sas_url)(s2_items[0]["assets"]["B02"]["href"])
    fs.pipe_file(f"{prefix}/shards/planted-lineage.json", json.dumps({"href": signed}).encode())
    fs.pipe_file(f"{prefix}/planted-config.json", json.dumps({"storage_options": opts}).encode())
    assert _leaks(scan(), secrets) == ["/planted-config.json", "/shards/planted-lineage.json"]
