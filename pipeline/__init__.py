"""STAC → frozen manifest → co-registered chips → Zarr v3 shards, and the loaders that stream them.

Sub-packages, in the order they may import each other (only downwards): `catalog` (search, signing,
manifests), `store` (the Zarr layout), then `ingest` (manifest → shards) and `load` (shards → batches). The
modules at this level (`errors`, `config`, `atomic`) are shared by all of them and import none of them.

`pipeline.open_store(url)` (from `pipeline.store.dataset`, imported on first use so that `import pipeline.errors`
stays light) opens a whole store as one lazy xarray DataTree; `pipeline.chip_dataset` takes one chip out of it.

Importing the package also makes fsspec's `s3://` filesystem `pipeline.s3_retry.RetryingS3FileSystem`, which
retries transient object-store failures (bounded; see that module), in every process that uses the pipeline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chip_dataset", "install_store_retries", "open_store"]


def install_store_retries() -> None:
    """Register `RetryingS3FileSystem` for s3:// and s3a:// with fsspec (idempotent; s3fs imported on first use)."""
    import fsspec

    for protocol in ("s3", "s3a"):
        if protocol in fsspec.registry:  # s3fs already loaded in this process: replace the class itself
            from pipeline.s3_retry import RetryingS3FileSystem

            fsspec.register_implementation(protocol, RetryingS3FileSystem, clobber=True)
        else:
            fsspec.register_implementation(protocol, "pipeline.s3_retry.RetryingS3FileSystem", clobber=True,
                                           errtxt="s3:// needs s3fs: pip install s3fs")  # fmt: skip


install_store_retries()


def __getattr__(name: str) -> Any:
    if name in ("chip_dataset", "open_store"):
        from pipeline.store import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
