"""Bulk embedding exports: GeoParquet of tile embeddings, Zarr mosaics of dense embeddings, a PCA-RGB map.

- `chip_table(store)`: per current chip its CRS, bounds, date range and source item ids (from the shards).
- `write_geoparquet`: one row per chip — `chip_id`, `geometry` (WGS84 polygon: the chip's bounds transformed
  corner by corner, WKB), `crs` (the native CRS code, e.g. `EPSG:32119`), `start_datetime`/`end_datetime` (the
  chip's first and last real date over its modalities), `item_ids`, `model_name`, `model_version`, `model_uri`,
  `manifest_version`, and `embedding` as a fixed-size list of float32 — with GeoParquet 1.1 `geo` metadata, so
  geopandas and any GeoParquet reader open it; pyarrow only, written atomically.
- `write_dense_zarr`: the patch embeddings of every chip placed on one grid per CRS (`embedding` [y, x, dim],
  1-D `x`/`y` patch-centre coordinates in metres, `crs` attribute, NaN where no chip), one group per EPSG code.
- `pca_rgb`: the first three principal components of a mosaic's embeddings as an RGB PNG (a quick look at what
  the encoder separates over a scene).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
from pyproj import Transformer
from shapely.geometry import Polygon

from modelops.embeddings import ModelRef, StoreEmbeddings
from pipeline.atomic import is_local, url_fs, write_bytes
from pipeline.store.shard_reader import read_arrays
from pipeline.store.shards import StoreLayout, read_index

__all__ = ["ChipInfo", "ExportResult", "chip_table", "export_embeddings", "pca_rgb", "write_dense_zarr",
           "write_geoparquet"]


@dataclass(frozen=True)
class ChipInfo:
    """One chip's place and provenance: EPSG code, bounds (native metres), first/last date, source item ids."""

    epsg: int
    bounds: tuple[float, float, float, float]
    start: np.datetime64
    end: np.datetime64
    item_ids: tuple[str, ...]


def chip_table(url: str, groups: list[str], *, storage_options: Mapping[str, Any] | None = None) -> dict[str, ChipInfo]:
    """Chip id -> `ChipInfo` for every chip of the store's committed shards (the modality `groups` give dates)."""
    out: dict[str, ChipInfo] = {}
    index = read_index(StoreLayout(url, storage_options=dict(storage_options or {})))
    for shard in sorted(str(u) for u in index["url"]):
        paths = ["chips/chip", "chips/epsg", "chips/bounds"]
        paths += [f"{g}/{a}" for g in groups for a in ("chip", "dates", "date_mask", "item_ids")]
        a = read_arrays(shard, paths, storage_options=storage_options)
        rows = {str(c): i for i, c in enumerate(a["chips/chip"])}
        per: dict[str, tuple[list[np.datetime64], list[str]]] = {c: ([], []) for c in rows}
        for g in groups:
            dates = a[f"{g}/dates"].view("datetime64[s]")
            for i, chip in enumerate(str(c) for c in a[f"{g}/chip"]):
                real = a[f"{g}/date_mask"][i].astype(bool)
                per[chip][0].extend(dates[i][real])
                per[chip][1].extend(str(s) for s in a[f"{g}/item_ids"][i][real])
        for chip, i in rows.items():
            dates, items = per[chip]
            out[chip] = ChipInfo(int(a["chips/epsg"][i]), tuple(float(v) for v in a["chips/bounds"][i]),  # type: ignore[arg-type]
                                 min(dates) if dates else np.datetime64("NaT"),
                                 max(dates) if dates else np.datetime64("NaT"), tuple(sorted(set(items))))  # fmt: skip
    return out


def _wgs84_polygon(epsg: int, bounds: tuple[float, float, float, float], cache: dict[int, Any]) -> Polygon:
    if epsg not in cache:
        cache[epsg] = Transformer.from_crs(epsg, 4326, always_xy=True)
    minx, miny, maxx, maxy = bounds
    xs, ys = cache[epsg].transform([minx, maxx, maxx, minx], [miny, miny, maxy, maxy])
    return Polygon(list(zip(xs, ys, strict=True)))


def write_geoparquet(emb: StoreEmbeddings, chips: Mapping[str, ChipInfo], out_url: str, *, model: ModelRef,
                     manifest_version: str, key: str = "model",
                     storage_options: Mapping[str, Any] | None = None) -> int:  # fmt: skip
    """Write the tile embeddings `emb.tiles[key]` as GeoParquet at `out_url` (see the module docstring).

    Returns:
        The number of rows (one per chip).
    """
    vectors = np.ascontiguousarray(emb.tiles[key], dtype=np.float32)
    n, dim = vectors.shape
    cache: dict[int, Any] = {}
    info = [chips[c] for c in emb.chip_ids]
    polygons = [_wgs84_polygon(c.epsg, c.bounds, cache) for c in info]
    corners = np.array([p.bounds for p in polygons])
    bbox = [float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 2].max()),
            float(corners[:, 3].max())]  # fmt: skip
    table = pa.table({
        "chip_id": pa.array(emb.chip_ids, pa.string()),
        "geometry": pa.array([p.wkb for p in polygons], pa.binary()),
        "crs": pa.array([f"EPSG:{c.epsg}" for c in info], pa.string()),
        "start_datetime": pa.array(np.array([c.start for c in info], "datetime64[s]"), pa.timestamp("s", tz="UTC")),
        "end_datetime": pa.array(np.array([c.end for c in info], "datetime64[s]"), pa.timestamp("s", tz="UTC")),
        "item_ids": pa.array([list(c.item_ids) for c in info], pa.list_(pa.string())),
        "model_name": pa.array([model.name] * n, pa.string()),
        "model_version": pa.array([model.version] * n, pa.string()),
        "model_uri": pa.array([model.uri] * n, pa.string()),
        "manifest_version": pa.array([manifest_version] * n, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    })  # fmt: skip
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "bbox": bbox}}}  # CRS84
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs, path = url_fs(out_url, storage_options)
    write_bytes(fs, path, buffer.getvalue())
    return n


def _mosaics(emb: StoreEmbeddings, chips: Mapping[str, ChipInfo]) -> dict[int, xr.Dataset]:
    """One patch-embedding grid per EPSG code (patch centres from each chip's bounds, row 0 = north)."""
    out: dict[int, xr.Dataset] = {}
    by_epsg: dict[int, list[str]] = {}
    for chip in emb.dense:
        by_epsg.setdefault(chips[chip].epsg, []).append(chip)
    for epsg, ids in sorted(by_epsg.items()):
        n, _, dim = emb.dense[ids[0]].shape
        step = (chips[ids[0]].bounds[2] - chips[ids[0]].bounds[0]) / n
        minx = min(chips[c].bounds[0] for c in ids)
        maxy = max(chips[c].bounds[3] for c in ids)
        width = int(round((max(chips[c].bounds[2] for c in ids) - minx) / step))
        height = int(round((maxy - min(chips[c].bounds[1] for c in ids)) / step))
        grid = np.full((height, width, dim), np.nan, np.float32)
        for c in ids:
            col, row = int(round((chips[c].bounds[0] - minx) / step)), int(round((maxy - chips[c].bounds[3]) / step))
            grid[row : row + n, col : col + n] = emb.dense[c]
        x = minx + (np.arange(width) + 0.5) * step
        y = maxy - (np.arange(height) + 0.5) * step
        out[epsg] = xr.Dataset({"embedding": (("y", "x", "dim"), grid)}, coords={"x": x, "y": y},
                               attrs={"crs": f"EPSG:{epsg}", "patch_m": step, "chips": len(ids)})  # fmt: skip
    return out


def write_dense_zarr(emb: StoreEmbeddings, chips: Mapping[str, ChipInfo], out_url: str, *, model: ModelRef,
                     manifest_version: str, storage_options: Mapping[str, Any] | None = None) -> dict[int, xr.Dataset]:
    """Write the dense mosaics as Zarr v3 at `out_url`, group `EPSG_<code>` each; returns them."""
    mosaics = _mosaics(emb, chips)
    if not mosaics:
        raise ValueError("no dense embeddings to write; embed with dense=True")
    fs, path = url_fs(out_url, storage_options)
    local = is_local(fs)
    target = f"{path}.tmp" if local else out_url  # local: written beside, then renamed into place
    if local and fs.exists(target):
        fs.rm(target, recursive=True)
    options = None if local else dict(storage_options or {}) or None
    for i, (epsg, ds) in enumerate(mosaics.items()):
        ds = ds.assign_attrs(model_uri=model.uri, model_name=model.name, model_version=model.version,
                             manifest_version=manifest_version)  # fmt: skip
        ds.to_zarr(target, group=f"EPSG_{epsg}", mode="w" if i == 0 else "a", zarr_format=3, consolidated=False,
                   storage_options=options)  # fmt: skip
    if local:
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.mv(target, path, recursive=True)
    return mosaics


def pca_rgb(mosaic: xr.Dataset) -> bytes:
    """PNG of the first three principal components of a mosaic's embeddings (2-98 % stretch, black = no chip)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = mosaic["embedding"].values  # [H, W, D]
    h, w, d = grid.shape
    flat = grid.reshape(-1, d)
    ok = np.isfinite(flat).all(axis=1)
    rgb = np.zeros((h * w, 3), np.float32)
    if ok.sum() >= 3:
        centred = flat[ok] - flat[ok].mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        comps = centred @ vt[:3].T
        lo, hi = np.percentile(comps, 2, axis=0), np.percentile(comps, 98, axis=0)
        rgb[ok, : comps.shape[1]] = np.clip((comps - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    buffer = io.BytesIO()
    plt.imsave(buffer, rgb.reshape(h, w, 3), format="png")
    return buffer.getvalue()


@dataclass(frozen=True)
class ExportResult:
    """What `export_embeddings` wrote: rows (chips), the output, the patch size used, the MLflow run (or "")."""

    rows: int
    out: str
    patch_size: int
    mapping: Mapping[str, str]
    run_id: str = ""


def export_embeddings(model_spec: str, store: str, out: str, *, patch_size: int = 0, batch_size: int = 64,
                      mapping: Mapping[str, str] | None = None, tracking_uri: str = "",
                      experiment: str = "anysat-embed", storage_options: Mapping[str, Any] | None = None,
                      progress: Any = None) -> ExportResult:  # fmt: skip
    """Embed every chip of `store` and write `out`: `.parquet` (GeoParquet of tile embeddings) or `.zarr` (dense
    mosaics); with `tracking_uri`, an MLflow run with the PCA-RGB map of the dense embeddings of each CRS.

    Raises:
        ValueError: `out` ends neither in `.parquet` nor in `.zarr`.
        StoreError: The store cannot be embedded (no chip, a group the model lacks, a patch that does not fit).
    """
    import sys

    from modelops.embeddings import embed_store, load_encoder
    from pipeline.store.shards import manifest_versions

    kind = "parquet" if out.endswith(".parquet") else "zarr" if out.rstrip("/").endswith(".zarr") else ""
    if not kind:
        raise ValueError(f"--out must end in .parquet (tile embeddings) or .zarr (dense embeddings), got {out!r}")
    model, ref = load_encoder(model_spec, tracking_uri=tracking_uri or None)
    dense = kind == "zarr" or bool(tracking_uri)
    emb = embed_store(store, {"model": model}, patch_size=patch_size, batch_size=batch_size, mapping=mapping,
                      dense=dense, storage_options=storage_options,
                      progress=sys.stderr if progress is None else progress)  # fmt: skip
    chips = chip_table(store, list(emb.mapping), storage_options=storage_options)
    manifest = ",".join(manifest_versions(StoreLayout(store, storage_options=dict(storage_options or {}))))
    if kind == "parquet":
        rows = write_geoparquet(emb, chips, out, model=ref, manifest_version=manifest, storage_options=storage_options)
        mosaics = _mosaics(emb, chips) if dense else {}
    else:
        mosaics = write_dense_zarr(emb, chips, out, model=ref, manifest_version=manifest,
                                   storage_options=storage_options)  # fmt: skip
        rows = len(emb.chip_ids)
    run_id = ""
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        tags = {"model_uri": ref.uri, "model_name": ref.name, "model_version": ref.version, "source_run": ref.run_id,
                "store": store, "store_manifest": manifest, "output": out}  # fmt: skip
        with mlflow.start_run(run_name=f"embed-{ref.name or 'model'}", tags=tags) as run:
            mlflow.log_params({"patch_size": emb.patch_size, "chips": rows, "mapping": json.dumps(emb.mapping)})
            for epsg, mosaic in mosaics.items():
                mlflow.log_image(_png_array(pca_rgb(mosaic)), f"pca_rgb_EPSG_{epsg}.png")
            run_id = str(run.info.run_id)
    return ExportResult(rows, out, emb.patch_size, emb.mapping, run_id)


def _png_array(png: bytes) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(io.BytesIO(png), format="png"))
