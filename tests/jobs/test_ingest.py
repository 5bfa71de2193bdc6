"""Ingestion end to end through the real servers: plain process into a local store, `ray job submit` into S3."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import s3fs
import xarray as xr

from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest
from pipeline.store.shards import StoreLayout, read_index

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "ingest-demo.yaml"


def test_ingest_into_a_local_store_and_rerun_skips_committed_shards(stack_env: dict[str, str], tmp_path: Path) -> None:
    config = load_config(IngestConfig, CONFIG, [f"store={tmp_path / 'ds'}", "chips_per_shard=1"])
    first = run_ingest(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    assert first.chips_written == first.chips_planned >= 2 and first.shards_written == first.chips_planned
    index = read_index(StoreLayout(config.store))
    assert len(index) == first.shards_written
    ds = xr.open_zarr(index["url"][0], group="s2", zarr_format=3, consolidated=False)
    assert ds["data"].shape == (1, 4, 10, 48, 48) and ds["date_mask"].values.sum() == 1
    assert ds["data"].encoding["dtype"] == np.uint16  # packed DN, decoded by xarray (NaN where not valid)
    assert 0 < float(np.nanmean(ds["data"].values[0, 0])) < 1  # reflectance
    s1 = xr.open_zarr(index["url"][0], group="s1", zarr_format=3, consolidated=False)
    assert -40 < float(np.nanmean(s1["data"].values[0, 0])) < 10  # dB
    stats = json.loads((tmp_path / "ds" / "stats.json").read_text())
    valid_px = sum(int(xr.open_zarr(u, group="s2", zarr_format=3, consolidated=False)["valid"].values.sum())
                   for u in index["url"])  # fmt: skip
    assert stats["s2"]["B2"]["summary"]["count"] == valid_px  # merged per-shard stats = a full pass
    assert 0 < stats["s2"]["B2"]["summary"]["mean"] < 0.5 and stats["s1"]["VV"]["summary"]["max"] < 20
    pngs = sorted((tmp_path / "ds" / "quicklooks").glob("*.png"))
    assert 1 <= len(pngs) <= config.quicklooks and pngs[0].read_bytes()[:4] == b"\x89PNG"
    again = run_ingest(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    assert again.manifest_version == first.manifest_version
    assert again.chips_written == 0 and again.shards_skipped == first.shards_written


def test_ray_job_submit_ingests_into_s3(stack_env: dict[str, str]) -> None:
    prefix = f"tests/ingest-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", stack_env["RAY_ADDRESS"],
         "--working-dir", str(ROOT), "--", "python", "jobs/ingest.py", "--config", "configs/ingest-demo.yaml",
         "--set", f"store={stack_env['ANYSAT_STORE_URL']}/{prefix}"],
        capture_output=True, text=True, timeout=600, env={**stack_env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    fs = s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip
    bucket = stack_env["ANYSAT_STORE_URL"].removeprefix("s3://")
    assert fs.glob(f"{bucket}/{prefix}/shards/*.zarr/_COMMITTED")
    assert fs.exists(f"{bucket}/{prefix}/shards.parquet") and fs.exists(f"{bucket}/{prefix}/rejects.parquet")
    written = fs.cat(f"{bucket}/{prefix}/config.json").decode()
    assert stack_env["AWS_SECRET_ACCESS_KEY"] not in written and "sig=" not in written
