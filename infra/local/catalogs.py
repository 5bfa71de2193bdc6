"""Build the sample STAC catalogs the local STAC API serves: COGs + collection JSON + item ndjson per collection.

`build_catalogs` turns the real samples committed in `data/samples/` (and the optional Sentinel-2 L1C scene) into
collections with Planetary Computer's ids, asset keys and properties. Output is deterministic: the same inputs
give byte-identical JSON, and existing COGs are not rewritten. `validate_offline` checks every item against the
JSON schemas of the extensions it declares without network, from `infra/local/schemas/`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
from pystac.validation import JsonSchemaSTACValidator

from infra.local.catalog_items import (
    EXT,
    aerial_items,
    landsat_items,
    sentinel1_items,
    sentinel2_l1c_items,
    sentinel2_l2a_items,
)
from infra.local.catalog_labels import bigearthnet_label_items, landcover_label_items, landsat7_nc_items

__all__ = ["BuiltCollection", "build_catalogs", "offline_validator", "validate_offline"]

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "schemas"


@dataclass(frozen=True)
class BuiltCollection:
    """One built collection: its id, collection JSON, newline-delimited items and item count."""

    collection_id: str
    collection_json: Path
    items_ndjson: Path
    n_items: int


@dataclass(frozen=True)
class _CollectionSpec:
    collection_id: str
    title: str
    description: str
    license: str
    extensions: tuple[str, ...]
    build: Callable[[Path, Path], list[dict[str, Any]]]


def _specs(l1c_dir: Path | None) -> list[tuple[_CollectionSpec, Path]]:
    return [
        (_CollectionSpec(
            "sentinel-2-l2a", "Sentinel-2 Level-2A (BigEarthNet samples)",
            "Sentinel-2 L2A surface reflectance patches from BigEarthNet, one item per 1200 m patch, assets as in "
            "Planetary Computer's sentinel-2-l2a (B01..B12 without B10, B8A; uint16, reflectance = DN / 10000 for "
            "processing baselines before 04.00, nodata 0). eo:cloud_cover is the percentage of pixels with blue "
            "reflectance above 0.2, since the patches carry no cloud mask.",
            "CDLA-Permissive-1.0", ("eo", "proj", "raster", "sat"), sentinel2_l2a_items), None),
        (_CollectionSpec(
            "sentinel-1-rtc", "Sentinel-1 RTC (BigEarthNet samples)",
            "Sentinel-1 IW VV/VH patches from BigEarthNet paired with the sentinel-2-l2a patches. The samples are "
            "backscatter in dB; they were converted to linear gamma0 (10 ** (dB / 10), float32) so that the assets "
            "match Planetary Computer's sentinel-1-rtc, whose vv/vh assets are linear. Convert to dB for models.",
            "CDLA-Permissive-1.0", ("sar", "sat", "proj", "raster"), sentinel1_items), None),
        (_CollectionSpec(
            "neon-aerial", "NEON aerial RGB (0.1 m)",
            "A 400x400 NEON airborne RGB tile at 0.1 m (OSBS site), shaped like Planetary Computer's naip items: "
            "one multi-band `image` asset (red, green, blue; no NIR).",
            "CC0-1.0", ("eo", "proj", "raster"), aerial_items), None),
        (_CollectionSpec(
            "landsat-c2-l2", "Landsat 5/7 Level-2 time series (Colorado)",
            "105 Landsat 5 TM / Landsat 7 ETM+ surface-reflectance scenes over one 61x61 px footprint at 30 m, shaped "
            "like Planetary Computer's landsat-c2-l2. The samples are reflectance x 10^4 (int16); they were converted "
            "to Collection 2 DN (uint16, scale 2.75e-05, offset -0.2, nodata 0) and their fmask classes to "
            "qa_pixel bits (0 fill, 3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water).",
            "MIT", ("eo", "proj", "raster", "classification"), landsat_items), None),
        (_CollectionSpec(
            "landsat-7-nc", "Landsat 7 ETM+ (Raleigh, North Carolina, west half)",
            "The west half of a Landsat 7 ETM+ scene from 2000 (acquisition date not recorded: an interval), bands "
            "1-5 and 7 under Planetary Computer's Landsat asset keys, 28.5 m on EPSG:32119 (not UTM). The samples "
            "are 8-bit DN stored as float32 (nodata -99999) and int16 (band 7, nodata -32768); every valid value is "
            "an integer in 1..255, so they were written as uint8 DN with nodata 0 (exact).",
            "CC-BY-SA-3.0", ("eo", "proj", "raster"), landsat7_nc_items), None),
        (_CollectionSpec(
            "landsat-7-nc-landcover", "Land cover of the Landsat 7 North Carolina scene (label extension)",
            "Raster labels (STAC label extension) of landsat-7-nc: the land-cover class of every pixel from a 1996 "
            "classification (1 developed, 2 agriculture, 3 herbaceous, 4 shrubland, 5 forest, 6 water, 7 sediment; "
            "0 no label), on the image's grid in the file's own CRS EPSG:3358 (NAD83(HARN), under a metre from "
            "EPSG:32119). Class numbers stored as float32 (nodata -99999) were written as uint8 (nodata 0, exact).",
            "CC-BY-SA-3.0", ("label", "proj", "raster", "classification"), landcover_label_items), None),
        (_CollectionSpec(
            "bigearthnet-labels", "BigEarthNet CORINE multi-labels (label extension)",
            "Vector labels (STAC label extension) of the BigEarthNet Sentinel-2/Sentinel-1 pairs: one item per "
            "pair, a GeoJSON asset with the 1200 m patch polygon and its CORINE Land Cover level-3 classes (tile-"
            "level multi-label classification), `source` links to the sentinel-2-l2a and sentinel-1-rtc items.",
            "CDLA-Permissive-1.0", ("label", "proj"), bigearthnet_label_items), None),
        (_CollectionSpec(
            "sentinel-2-l1c", "Sentinel-2 Level-1C (Virginia scene crop)",
            "One cloud-free Sentinel-2 L1C top-of-atmosphere crop with all 13 bands (uint16, x 10^4). Its "
            "acquisition date is unknown, so the item carries an interval instead of a datetime.",
            "CC0-1.0", ("eo", "proj", "raster"), sentinel2_l1c_items), l1c_dir),
    ]  # fmt: skip


def _collection_json(spec: _CollectionSpec, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    west = min(i["bbox"][0] for i in items)
    south = min(i["bbox"][1] for i in items)
    east = max(i["bbox"][2] for i in items)
    north = max(i["bbox"][3] for i in items)
    times = sorted(
        t for i in items for t in (i["properties"].get("datetime"), i["properties"].get("start_datetime"),
                                   i["properties"].get("end_datetime")) if t
    )  # fmt: skip
    return {
        "type": "Collection", "stac_version": "1.1.0", "stac_extensions": [], "id": spec.collection_id,
        "title": spec.title, "description": spec.description, "license": spec.license, "links": [],
        "extent": {"spatial": {"bbox": [[west, south, east, north]]}, "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": {"item_extensions": [EXT[e] for e in spec.extensions]},
    }  # fmt: skip


def build_catalogs(out_dir: Path, *, samples_dir: Path, l1c_dir: Path | None = None,
                   only: Sequence[str] = ()) -> tuple[BuiltCollection, ...]:  # fmt: skip
    """Write COGs, `collection.json` and `items.ndjson` for every sample collection under `out_dir/<id>/`.

    Args:
        out_dir: Output folder (created).
        samples_dir: The committed samples (`data/samples`).
        l1c_dir: Folder of the optional Sentinel-2 L1C scene (`s2_B01.tif` …); the collection is skipped if None.
        only: Collection ids to build (default: all).

    Returns:
        The built collections, in the order a STAC server should load them.
    """
    out_dir = out_dir.resolve()
    built = []
    unknown = sorted(set(only) - {spec.collection_id for spec, _ in _specs(l1c_dir)})
    if unknown:
        raise KeyError(f"no sample collection {unknown}")
    for spec, source in _specs(l1c_dir):
        if only and spec.collection_id not in only:
            continue
        if spec.collection_id == "sentinel-2-l1c":
            if source is None or not source.is_dir():
                log.info("sentinel-2-l1c skipped: the optional L1C scene folder is not present")
                continue
            items = spec.build(source, out_dir / spec.collection_id)
        else:
            items = spec.build(samples_dir, out_dir / spec.collection_id)
        folder = out_dir / spec.collection_id
        folder.mkdir(parents=True, exist_ok=True)
        collection_json = folder / "collection.json"
        items_ndjson = folder / "items.ndjson"
        for item in items:  # the core item schema wants a collection link where `collection` is set
            item["links"] = [{"rel": "collection", "type": "application/json", "href": collection_json.as_uri()}] + [
                link for link in item.get("links", []) if link["rel"] != "collection"]  # e.g. labels' `source`
        _write_if_changed(collection_json, json.dumps(_collection_json(spec, items), indent=2, sort_keys=True) + "\n")
        _write_if_changed(items_ndjson, "".join(json.dumps(i, sort_keys=True) + "\n" for i in items))
        built.append(BuiltCollection(spec.collection_id, collection_json, items_ndjson, len(items)))
        log.debug("built %s: %d items", spec.collection_id, len(items))
    log.info("sample catalogs: %d collections, %d items in %s (%s)", len(built), sum(c.n_items for c in built),
             out_dir, ", ".join(c.collection_id for c in built))  # fmt: skip
    return tuple(built)


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def offline_validator() -> JsonSchemaSTACValidator:
    """A pystac validator whose extension schemas come from `infra/local/schemas/` instead of the network."""
    validator = JsonSchemaSTACValidator()
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        validator.schema_cache[schema["$id"]] = schema
    return validator


def validate_offline(item: pystac.Item | pystac.Collection) -> list[str]:
    """Validate a STAC object against core and every declared extension schema, offline.

    Raises:
        pystac.errors.STACValidationError: The object breaks a schema.
        KeyError: It declares an extension whose schema is not in `infra/local/schemas/`.
    """
    validator = offline_validator()
    missing = [uri for uri in item.stac_extensions if uri not in validator.schema_cache]
    if missing:
        raise KeyError(f"no offline schema for {missing}; add it to {SCHEMA_DIR}")
    return pystac.validation.validate(item, validator=validator)
