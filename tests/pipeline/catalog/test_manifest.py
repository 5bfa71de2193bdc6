"""Frozen manifests from the real local STAC API: round trip, order-independent version, no signed hrefs, S3."""

from __future__ import annotations

import json
import random

import pandas as pd
import pystac
import pytest

from pipeline.errors import ManifestError
from pipeline.catalog.manifest import freeze_manifest, manifest_rows, read_manifest
from pipeline.catalog.search import StacQuery, search_items

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def found(stack_env: dict[str, str]) -> dict[str, list[pystac.Item]]:
    url = stack_env["STAC_API_URL"]
    return {
        "s2": search_items(StacQuery(url=url, collections=("sentinel-2-l2a",), page_size=4)),
        "s1": search_items(StacQuery(url=url, collections=("sentinel-1-rtc",), page_size=4)),
    }


def test_freeze_and_read_back_identical(found, tmp_path) -> None:
    manifest = freeze_manifest(found, root=str(tmp_path / "ds"))
    assert manifest.url.endswith(f"/manifests/{manifest.version}.parquet") and len(manifest.rows) == 12
    back = read_manifest(manifest.url)
    pd.testing.assert_frame_equal(back.rows, manifest.rows)
    assert back.version == manifest.version
    assert [i.id for i in back.items("s1")] == sorted(i.id for i in found["s1"])
    assert back.rows["epsg"].notna().all() and set(back.rows["modality"]) == {"s1", "s2"}
    again = freeze_manifest(found, root=str(tmp_path / "ds"))  # idempotent
    assert again.version == manifest.version and len(list((tmp_path / "ds" / "manifests").iterdir())) == 1


def test_version_ignores_order_and_tracks_content(found) -> None:
    shuffled = {k: random.Random(0).sample(v, len(v)) for k, v in found.items()}
    from pipeline.catalog.manifest import _version

    assert _version(manifest_rows(found)) == _version(manifest_rows(shuffled))
    changed = {k: [i.clone() for i in v] for k, v in found.items()}
    changed["s2"][0].properties["eo:cloud_cover"] = 99.0
    assert _version(manifest_rows(changed)) != _version(manifest_rows(found))


def test_signed_hrefs_are_stored_unsigned(found, tmp_path) -> None:
    items = [i.clone() for i in found["s2"]]
    for item in items:
        for asset in item.assets.values():
            asset.href = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/{item.id}.tif?st=1&se=2&sig=SECRET"
    manifest = freeze_manifest({"s2": items}, root=str(tmp_path / "ds"))
    raw = (tmp_path / "ds" / "manifests" / f"{manifest.version}.parquet").read_bytes()
    assert b"SECRET" not in raw and b"sig=" not in raw
    assert all("?" not in a.href for i in manifest.items() for a in i.assets.values())


def test_tampering_and_empty_searches_are_refused(found, tmp_path) -> None:
    manifest = freeze_manifest(found, root=str(tmp_path / "ds"))
    rows = manifest.rows.copy()
    rows.loc[0, "item_json"] = rows.loc[0, "item_json"].replace('"datetime":"2017', '"datetime":"2016')
    assert rows.loc[0, "item_json"] != manifest.rows.loc[0, "item_json"]
    rows.to_parquet(manifest.url, index=False)
    with pytest.raises(ManifestError, match="was modified"):
        read_manifest(manifest.url)
    with pytest.raises(ManifestError, match="found no items"):
        freeze_manifest({"s2": []}, root=str(tmp_path / "empty"))


def test_round_trip_on_the_s3_server(found, stack_env: dict[str, str]) -> None:
    options = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
               "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    root = f"{stack_env['ANYSAT_STORE_URL']}/tests/manifest-{random.Random().randint(0, 10**9)}"
    manifest = freeze_manifest(found, root=root, storage_options=options)
    assert manifest.url.startswith("s3://")
    back = read_manifest(manifest.url, storage_options=options)
    assert back.version == manifest.version
    assert json.loads(back.rows["item_json"][0])["id"] == manifest.rows["item_id"][0]
