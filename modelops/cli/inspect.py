"""What a store holds: `anysat-stac inspect <store>` (a local path or `s3://…`), read only.

Prints the shards (committed, chips, bytes), the sensors with their bands and the range of their real dates,
the rejects by reason, the statistics per band (count, mean, std) and the manifest versions. `--json` prints
the same as one JSON document. Exits 2 when the path is not a store.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any

from modelops.cli.common import EXIT_CONFIG, fail, quiet

MARKER = "_COMMITTED"


def _read_json(fs: Any, path: str) -> Any:
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def _read_parquet(fs: Any, path: str) -> Any:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(fs.cat_file(path))) if fs.exists(path) else None


def describe(url: str) -> dict[str, Any]:
    """The facts of a store as plain data (see the module docstring).

    Raises:
        FileNotFoundError: No committed shard and no shard index under `url`.
    """
    import fsspec
    import numpy as np
    import xarray as xr

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    markers = sorted(fs.glob(f"{root}/shards/*.zarr/{MARKER}"))
    index = _read_parquet(fs, f"{root}/shards.parquet")
    if not markers and index is None:
        raise FileNotFoundError(f"{url} is not a store: no shards/*.zarr/{MARKER} and no shards.parquet")
    shards = [m.rsplit("/", 1)[0] for m in markers]
    sensors: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for group in sorted(p.rsplit("/", 1)[-1] for p in fs.ls(shard, detail=False) if fs.isdir(p)):
            if group == "chips":
                continue
            prefix = "s3://" if url.startswith("s3://") else ""
            ds = xr.open_zarr(f"{prefix}{shard}", group=group, zarr_format=3, consolidated=False)
            dates = ds["dates"].values[ds["date_mask"].values.astype(bool)]
            entry = sensors.setdefault(group, {"bands": [str(b) for b in ds["band"].values], "chips": 0,
                                               "dates": 0, "first": None, "last": None})  # fmt: skip
            entry["chips"] += int(ds.sizes["chip"])
            entry["dates"] += int(dates.size)
            if dates.size:
                lo, hi = str(np.min(dates))[:10], str(np.max(dates))[:10]
                entry["first"] = min(filter(None, (entry["first"], lo)))
                entry["last"] = max(filter(None, (entry["last"], hi)))
    rejects = _read_parquet(fs, f"{root}/rejects.parquet")
    stats = _read_json(fs, f"{root}/stats.json") or {}
    summary = {m: {b: {k: v["summary"].get(k) for k in ("count", "mean", "std")} for b, v in bands.items()}
               for m, bands in stats.items()}  # fmt: skip
    return {
        "store": url,
        "shards": len(shards),
        "chips": int(index["n_chips"].sum()) if index is not None and len(index) else 0,
        "bytes": int(index["bytes"].sum()) if index is not None and len(index) else 0,
        "sensors": sensors,
        "rejects": {str(k): int(v) for k, v in rejects["kind"].value_counts().sort_index().items()}
        if rejects is not None and len(rejects) else {},
        "statistics": summary,
        "manifests": sorted(p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in fs.glob(f"{root}/manifests/*.parquet")),
    }  # fmt: skip


def _text(facts: dict[str, Any]) -> str:
    lines = [f"store      {facts['store']}",
             f"shards     {facts['shards']} committed, {facts['chips']} chips, {facts['bytes'] / 1e6:.1f} MB"]
    for name, s in facts["sensors"].items():
        lines.append(f"sensor     {name}: {s['chips']} chips, {s['dates']} dates {s['first']} .. {s['last']}, "
                     f"bands {' '.join(s['bands'])}")  # fmt: skip
    rejects = ", ".join(f"{k} {v}" for k, v in facts["rejects"].items()) or "none"
    lines.append(f"rejects    {rejects}")
    for name, bands in facts["statistics"].items():
        for band, v in bands.items():
            lines.append(f"stats      {name}.{band}: count {v['count']} mean {v['mean']:.4g} std {v['std']:.4g}")
    lines.append(f"manifests  {', '.join(facts['manifests']) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anysat-stac inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("store", help="dataset root written by the ingest command (path or s3://…)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")
    args = parser.parse_args(argv)
    quiet()
    try:
        facts = describe(args.store)
    except (FileNotFoundError, PermissionError) as err:
        return fail("inspect", err, EXIT_CONFIG)
    print(json.dumps(facts, indent=2) if args.json else _text(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
