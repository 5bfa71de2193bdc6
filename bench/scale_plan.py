"""Size one year of Sentinel-2 L2A + Sentinel-1 RTC over Europe from measured rates: a plan, not a measurement.

Every input is a flag; the defaults are the figures in docs/BENCHMARKS.md (measured on this project's code) or
public facts and estimates, each explained with its source in docs/SCALING.md. Replace the estimates with your
own measurements (e.g. `--s2-mb-s-per-core` from `python bench/ingest.py` on your nodes, `--samples-per-s-per-gpu`
from a training run) and the plan follows. Prints a table and one JSON line.

    python bench/scale_plan.py [--area-km2 10.2e6] [--ingest-nodes 16] [--samples-seen 100e6] ...
    python bench/scale_plan.py --measure-store out/some-dataset   # compression, bytes and objects per shard

Model, in short (docs/SCALING.md has the reasoning):
- chips = area / chip area; each chip holds `dates` per sensor (the configs' max_dates), float32 bands plus a
  1-byte valid mask per pixel and date; TB of Zarr = uncompressed bytes / each sensor's measured compression.
- scenes = S2 MGRS tiles x acquisitions per tile-year, + S1 scenes over the area x acquisitions per year.
- ingestion node-hours = uncompressed output MB / (measured MB/s per core x cores per node) / 3600; the wall time
  on N nodes is the slowest of: compute (node-hours / N), node network (source bytes read / N NICs), object
  store writes (one prefix's PUT limit), source reads (the source store's request limit).
- training: GPUs = samples seen / (samples/s per GPU x hours); per training node, bytes/s and GET/s from the
  object store; the bottleneck moves from GPUs to the NIC or the store's GET limit as nodes grow.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, fields

MB = 1e6
TB = 1e12


@dataclass(frozen=True)
class PlanInputs:
    """Every number the plan depends on (units in the names); defaults are documented in docs/SCALING.md."""

    # area and sensors
    area_km2: float = 10.2e6  # geographic Europe (incl. European Russia), estimate
    s2_tile_km2: float = 100 * 100  # MGRS tile without its 9.8 km overlap
    s2_tile_overhead: float = 1.25  # tiles cut by coasts and UTM zone edges, estimate
    s2_acq_per_tile_year: float = 120  # two satellites, 5-day revisit, more at high latitudes, estimate
    s1_scene_km2: float = 250 * 170  # one IW GRD slice
    s1_acq_per_year: float = 60  # one satellite, 12-day repeat, ascending + descending, estimate
    # chips (configs/examples/ingest-pc-s2-s1.yaml)
    chip_m: float = 1200
    res_m: float = 10
    s2_bands: int = 10
    s1_bands: int = 2
    s2_dates: int = 12
    s1_dates: int = 12
    chips_per_shard: int = 32
    # measured on our shards (--measure-store; docs/SCALING.md): S2 on the L1C scene, S1 and objects on the demo
    s2_compression_ratio: float = 3.5
    s1_compression_ratio: float = 1.0
    objects_per_shard: int = 52
    # ingestion rates (docs/BENCHMARKS.md: Ray Data, 2 workers, 4.1 MB/s on 2 cores)
    ingest_mb_s_per_core: float = 2.05
    ingest_cores_per_node: int = 16
    ingest_nodes: int = 16
    node_price_per_h: float = 0.78  # c6i.4xlarge on demand, eu-central-1, estimate
    node_nic_gbit_s: float = 12.5
    source_bytes_per_output_byte: float = 0.35  # uint16 COG deflate read vs float32 written, estimate
    source_requests_per_chip_date_band: float = 1.0  # one range read per asset window
    source_request_limit_per_s: float = 20_000  # one source storage account, estimate
    store_put_limit_per_s: float = 3_500  # S3, per prefix
    store_get_limit_per_s: float = 5_500  # S3, per prefix
    # training (no training benchmark yet: estimates)
    samples_seen: float = 100e6
    samples_per_s_per_gpu: float = 25
    train_hours: float = 72
    gpus_per_node: int = 1
    get_requests_per_sample: float = 1.6  # whole-shard reads: at most every object of a shard once, 52 / 32


def _chip_bytes(p: PlanInputs) -> dict[str, float]:
    """Uncompressed bytes of one chip per sensor: float32 bands + a 1-byte valid mask per pixel and date."""
    px = (p.chip_m / p.res_m) ** 2
    return {"s2": p.s2_dates * px * (4 * p.s2_bands + 1), "s1": p.s1_dates * px * (4 * p.s1_bands + 1)}


def _chip_stored_bytes(p: PlanInputs) -> float:
    """Bytes of one chip in the store, after each sensor's measured compression."""
    raw = _chip_bytes(p)
    return raw["s2"] / p.s2_compression_ratio + raw["s1"] / p.s1_compression_ratio


def ingestion_wall_h(p: PlanInputs, nodes: int) -> dict[str, float]:
    """Hours each resource needs on `nodes` ingestion nodes; the wall time is the largest."""
    chips = p.area_km2 / (p.chip_m / 1000) ** 2
    raw = chips * sum(_chip_bytes(p).values())
    compute = raw / MB / (p.ingest_mb_s_per_core * p.ingest_cores_per_node) / 3600 / nodes
    network = raw * p.source_bytes_per_output_byte / (nodes * p.node_nic_gbit_s * 1e9 / 8) / 3600
    shards = chips / p.chips_per_shard
    writes = shards * p.objects_per_shard * 2 / p.store_put_limit_per_s / 3600  # written under _tmp, then copied
    reads = (chips * (p.s2_dates * p.s2_bands + p.s1_dates * p.s1_bands) * p.source_requests_per_chip_date_band
             / p.source_request_limit_per_s / 3600)  # fmt: skip
    return {"compute": compute, "node network": network, "store PUT limit": writes, "source request limit": reads}


def training_node_load(p: PlanInputs, nodes: int) -> dict[str, float]:
    """Per-node and cluster-wide object-store load when `nodes` training nodes run at full GPU speed."""
    chip_stored = _chip_stored_bytes(p)
    samples_s = nodes * p.gpus_per_node * p.samples_per_s_per_gpu
    return {
        "samples_per_s": samples_s,
        "node_mb_s": p.gpus_per_node * p.samples_per_s_per_gpu * chip_stored / MB,
        "node_nic_share": p.gpus_per_node * p.samples_per_s_per_gpu * chip_stored * 8 / (p.node_nic_gbit_s * 1e9),
        "cluster_get_per_s": samples_s * p.get_requests_per_sample,
        "store_get_share": samples_s * p.get_requests_per_sample / p.store_get_limit_per_s,
    }


def plan(p: PlanInputs) -> dict[str, float | str]:
    """The whole plan as flat numbers."""
    chips = p.area_km2 / (p.chip_m / 1000) ** 2
    chip = _chip_bytes(p)
    raw = chips * sum(chip.values())
    s2_tiles = p.area_km2 / p.s2_tile_km2 * p.s2_tile_overhead
    s1_scenes = p.area_km2 / p.s1_scene_km2 * p.s1_acq_per_year
    node_hours = raw / MB / (p.ingest_mb_s_per_core * p.ingest_cores_per_node) / 3600
    wall = ingestion_wall_h(p, p.ingest_nodes)
    gpus = math.ceil(p.samples_seen / (p.samples_per_s_per_gpu * p.train_hours * 3600))
    train_nodes = math.ceil(gpus / p.gpus_per_node)
    load = training_node_load(p, train_nodes)
    return {
        "s2_tiles": s2_tiles,
        "s2_scenes": s2_tiles * p.s2_acq_per_tile_year,
        "s1_scenes": s1_scenes,
        "chips": chips,
        "chip_mb_uncompressed": sum(chip.values()) / MB,
        "zarr_tb_uncompressed": raw / TB,
        "zarr_tb": chips * _chip_stored_bytes(p) / TB,
        "shards": chips / p.chips_per_shard,
        "store_objects": chips / p.chips_per_shard * p.objects_per_shard,
        "ingest_node_hours": node_hours,
        "ingest_cost": node_hours * p.node_price_per_h,
        "ingest_wall_hours": max(wall.values()),
        "ingest_bottleneck": max(wall, key=lambda k: wall[k]),
        "source_tb_read": raw * p.source_bytes_per_output_byte / TB,
        "train_gpus": gpus,
        "train_nodes": train_nodes,
        "epochs": p.samples_seen / chips,
        "train_node_mb_s": load["node_mb_s"],
        "train_node_get_per_s": p.gpus_per_node * p.samples_per_s_per_gpu * p.get_requests_per_sample,
        "train_cluster_get_per_s": load["cluster_get_per_s"],
        "train_store_get_share": load["store_get_share"],
    }


def scaling_rows(p: PlanInputs, counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)) -> list[dict[str, object]]:
    """Where the bottleneck is as ingestion and training nodes grow."""
    rows = []
    for n in counts:
        wall = ingestion_wall_h(p, n)
        load = training_node_load(p, n)
        train_limit = max(("GPU", 1.0), ("node NIC", load["node_nic_share"]), ("store GET limit",
                          load["store_get_share"]), key=lambda kv: kv[1])  # fmt: skip
        rows.append({"nodes": n, "ingest_wall_h": max(wall.values()), "ingest_bound": max(wall, key=lambda k: wall[k]),
                     "train_samples_per_s": load["samples_per_s"] / max(1.0, train_limit[1]),
                     "train_bound": train_limit[0]})  # fmt: skip
    return rows


def measure_store(url: str) -> dict[str, float]:
    """Compression ratio, uncompressed bytes per chip and objects per shard of an existing store (local or s3://)."""
    from pathlib import Path

    import fsspec
    import xarray as xr

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.store.shards import StoreLayout, read_index

    index = read_index(StoreLayout(url))
    fs, root = fsspec.core.url_to_fs(url)
    raw: dict[str, int] = {}
    stored: dict[str, int] = {}
    chips = objects = 0
    for shard_id, shard_url, n_chips in zip(index["shard_id"], index["url"], index["n_chips"], strict=True):
        chips += int(n_chips)
        shard = f"{root.rstrip('/')}/shards/{shard_id}.zarr"
        objects += len(fs.find(shard))
        for group in ("s2", "s1", "landsat", "naip"):
            if not fs.exists(f"{shard}/{group}/zarr.json"):
                continue
            ds = xr.open_zarr(shard_url, group=group, zarr_format=3, consolidated=False)
            stored_dtype = ds["data"].encoding.get("dtype", ds["data"].dtype)  # uint16 when packed (decoded: float)
            size = int(ds["data"].size) * int(getattr(stored_dtype, "itemsize", 4)) + int(ds["valid"].nbytes)
            raw[group] = raw.get(group, 0) + size
            stored[group] = stored.get(group, 0) + int(fs.du(f"{shard}/{group}"))
    out: dict[str, float] = {"shards": len(index), "chips": chips, "objects_per_shard": objects / len(index)}
    for group in raw:
        out[f"{group}_compression_ratio"] = raw[group] / stored[group]
        out[f"{group}_raw_mb_per_chip"] = raw[group] / chips / MB
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PlanInputs):
        kind = float if f.type == "float" else int
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                            help=f"default {f.default:g} (docs/SCALING.md)")  # fmt: skip
    parser.add_argument("--measure-store", metavar="URL", help="measure an existing store instead of planning")
    args = parser.parse_args(argv)
    if args.measure_store:
        print(json.dumps(measure_store(args.measure_store)))
        return
    inputs = PlanInputs(**{f.name: getattr(args, f.name) for f in fields(PlanInputs)})
    result = plan(inputs)
    rows = scaling_rows(inputs)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {_fmt(value)}")
    print()
    print("nodes | ingest wall h | ingest bound          | train samples/s | train bound")
    for r in rows:
        print(f"{r['nodes']:>5} | {_fmt(r['ingest_wall_h']):>13} | {r['ingest_bound']:<21} | "
              f"{_fmt(r['train_samples_per_s']):>15} | {r['train_bound']}")  # fmt: skip
    print(json.dumps({"inputs": asdict(inputs), "plan": result, "scaling": rows, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
