"""STAC → frozen manifest → co-registered chips → Zarr v3 shards, and the loaders that stream them.

Sub-packages, in the order they may import each other (only downwards): `catalog` (search, signing,
manifests), `store` (the Zarr layout), then `ingest` (manifest → shards) and `load` (shards → batches). The
modules at this level (`errors`, `config`, `atomic`) are shared by all of them and import none of them.

`pipeline.open_store(url)` (from `pipeline.store.dataset`, imported on first use so that `import pipeline.errors`
stays light) opens a whole store as one lazy xarray DataTree; `pipeline.chip_dataset` takes one chip out of it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chip_dataset", "open_store"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.store import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
