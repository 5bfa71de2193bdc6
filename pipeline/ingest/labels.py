"""Labels attached to chips at ingestion: raster label items (STAC label extension) read onto every chip's grid.

With `labels:` in the ingestion config (`LabelSource`), the run searches the label collection over the area,
freezes the label items into the manifest beside the sensors' items (modality key `LABELS`, so the dataset
version covers them), and gives each planned chip the label item whose footprint covers it (`assign_labels`;
several: the first by id). Label items are matched by footprint only, not by date: a land-cover map usually
dates from another year than the imagery (the item's own dates say which). Each shard task reads every chip's
label raster with the shard's `ChipReader` at `res_m` on the chip's grid (nearest; reprojected when the label
file has another CRS) and writes it with the shard (`pipeline.store.labels`). A chip whose label cannot be read
is stored without label (coverage 0) and recorded as a `label_error` reject; a chip no label item covers is
stored without label (its `label_item` is empty).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pystac
from pyproj import Transformer
from shapely.geometry import box, shape
from shapely.ops import transform as shp_transform

from pipeline.catalog.manifest import Manifest
from pipeline.catalog.search import StacQuery, search_items
from pipeline.errors import ChipError, PipelineError
from pipeline.ingest.grid import ChipPlan, Reject
from pipeline.ingest.raster_reader import ChipReader
from pipeline.store.labels import label_files

__all__ = ["LABELS", "LabelSource", "assign_labels", "label_classes", "search_labels", "sensor_manifest",
           "shard_label_files", "store_classes"]

LABELS = "labels"  # the manifest's modality key of label items (not a store group of pixels)


@dataclass(frozen=True)
class LabelSource:
    """Where chip labels come from.

    Attributes:
        collection: STAC collection of raster label items (e.g. `landsat-7-nc-landcover`).
        asset: Asset key of the label raster in each item.
        res_m: Pixel size of the stored label raster on the chip grid (usually the label file's own).
        stac_url: STAC API root; empty = the job's default.
        min_coverage: Share of a chip a label item's footprint must cover for the item to label it.
    """

    collection: str
    asset: str = "labels"
    res_m: float = 10.0
    stac_url: str = ""
    min_coverage: float = 1.0

    def __post_init__(self) -> None:
        if not self.collection or not self.asset:
            raise ValueError("labels: collection and asset must be non-empty")
        if self.res_m <= 0 or not 0 < self.min_coverage <= 1:
            raise ValueError(f"labels: res_m must be > 0 and min_coverage in (0, 1], got {self.res_m}, "
                             f"{self.min_coverage}")  # fmt: skip


def search_labels(source: LabelSource, *, bbox: tuple[float, float, float, float], stac_url: str,
                  page_size: int = 100) -> list[pystac.Item]:  # fmt: skip
    """The label items over the area, at any date (see the module docstring).

    Raises:
        PipelineError: No STAC API is known, or no label item was found.
    """
    url = source.stac_url or stac_url
    if not url:
        raise PipelineError("labels: no stac_url and no default STAC API was given")
    found = search_items(StacQuery(url=url, collections=(source.collection,), bbox=bbox, page_size=page_size))
    if not found:
        raise PipelineError(f"labels: no item of collection {source.collection!r} intersects the area {bbox}")
    return found


def sensor_manifest(manifest: Manifest) -> Manifest:
    """The manifest without its label rows (what the chip plan reads)."""
    rows = manifest.rows[manifest.rows["modality"] != LABELS].reset_index(drop=True)
    return replace(manifest, rows=rows)


def assign_labels(plans: Sequence[ChipPlan], manifest: Manifest, source: LabelSource) -> list[ChipPlan]:
    """Each plan with `items[LABELS] = (label item id,)` when a label item covers `min_coverage` of its cell."""
    rows = manifest.rows[manifest.rows["modality"] == LABELS].sort_values("item_id")
    footprints = [(str(r.item_id), shape(json.loads(r.geometry))) for r in rows.itertuples(index=False)]
    out: list[ChipPlan] = []
    transformers: dict[int, Any] = {}
    for plan in plans:
        if plan.epsg not in transformers:
            transformers[plan.epsg] = Transformer.from_crs(4326, plan.epsg, always_xy=True).transform
        cell = box(*plan.bounds)
        chosen = ""
        for item_id, geom in footprints:
            inside = shp_transform(transformers[plan.epsg], geom).intersection(cell).area
            if inside >= source.min_coverage * cell.area - 1e-6:
                chosen = item_id
                break
        out.append(replace(plan, items={**plan.items, LABELS: (chosen,)}) if chosen else plan)
    return out


def label_classes(item: pystac.Item, asset: str) -> dict[int, str]:
    """Class value -> name of a label item's raster: the asset's `classification:classes`, else `label:classes`.

    Raises:
        ChipError: The item has no such asset, or declares no classes.
    """
    if asset not in item.assets:
        raise ChipError(f"label item {item.id} has no asset {asset!r}; it has {sorted(item.assets)}")
    named = item.assets[asset].extra_fields.get("classification:classes")
    if named:
        return {int(c["value"]): str(c["name"]) for c in named}
    declared = [v for group in item.properties.get("label:classes") or [] for v in group.get("classes", [])]
    if declared and all(isinstance(v, int | float) and float(v).is_integer() for v in declared):
        return {int(v): str(int(v)) for v in declared}
    raise ChipError(f"label item {item.id} declares no numeric classes (classification:classes on asset {asset!r} "
                    "or label:classes)")  # fmt: skip


def store_classes(items: Iterable[pystac.Item], source: LabelSource) -> dict[int, str]:
    """The classes of the label collection's items (every item must declare the same ones).

    Raises:
        ChipError: No item of the collection, or items that disagree on their classes.
    """
    classes: dict[int, str] | None = None
    for item in sorted((i for i in items if i.collection_id == source.collection), key=lambda i: i.id):
        these = label_classes(item, source.asset)
        if classes is not None and these != classes:
            raise ChipError(f"label item {item.id} has classes {these}, other items of {source.collection} {classes}")
        classes = these
    if classes is None:
        raise ChipError(f"the manifest holds no item of the label collection {source.collection!r}")
    return classes


def shard_label_files(plans: Sequence[ChipPlan], chip_ids: Sequence[str], items: Mapping[str, pystac.Item],
                      source: LabelSource, reader: ChipReader) -> tuple[dict[str, bytes], list[Reject]]:  # fmt: skip
    """Read the label raster of each written chip of a shard and encode the shard's `labels` group.

    Raises:
        ChipError: The label items disagree on their classes (`store_classes`).
    """
    by_id = {p.chip_id: p for p in plans}
    classes = store_classes(items.values(), source)
    rasters, used, rejects = [], [], []
    for chip_id in chip_ids:
        plan = by_id[chip_id]
        minx, miny, maxx, maxy = plan.bounds
        blank = np.zeros((round((maxy - miny) / source.res_m), round((maxx - minx) / source.res_m)), np.uint8)
        item_id = (plan.items.get(LABELS) or ("",))[0]
        item = items.get(item_id) if item_id else None
        if item is None:
            if item_id:
                rejects.append(Reject("label_error", chip_id, f"label item {item_id} is not in the manifest"))
            rasters.append(blank)
            used.append("")
            continue
        try:
            raw = reader.read_item(item, [source.asset], epsg=plan.epsg, bounds=plan.bounds, resolution=source.res_m)[0]
        except ChipError as err:
            rejects.append(Reject("label_error", chip_id, f"label item {item.id}: {err}"))
            rasters.append(blank)
            used.append("")
            continue
        nodata = item.assets[source.asset].extra_fields.get("raster:bands", [{}])[0].get("nodata", 0)
        raster = np.where(np.isfinite(raw) & (raw != nodata), raw, 0)
        rasters.append(raster.astype(np.uint8) if _fits_uint8(raster, item.id) else raster)
        used.append(item.id)
    attrs = {"res_m": source.res_m, "crs": f"EPSG:{plans[0].epsg}", "collection": source.collection,
             "asset": source.asset}  # fmt: skip
    return label_files(chip_ids, rasters, used, classes, attrs=attrs), rejects


def _fits_uint8(raster: np.ndarray, item_id: str) -> bool:
    if raster.size and (raster.min() < 0 or raster.max() > 255 or not np.all(np.equal(np.mod(raster, 1), 0))):
        raise ChipError(f"label item {item_id}: values {raster.min()}..{raster.max()} are not class numbers 0..255")
    return True

