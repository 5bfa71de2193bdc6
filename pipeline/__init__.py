"""STAC → frozen manifest → co-registered chips → Zarr v3 shards, and the loaders that stream them.

Sub-packages, in the order they may import each other (only downwards): `catalog` (search, signing,
manifests), `store` (the Zarr layout), then `ingest` (manifest → shards) and `load` (shards → batches). The
modules at this level (`errors`, `config`, `atomic`) are shared by all of them and import none of them.
"""
