"""STAC → frozen manifest → co-registered chips → Zarr v3 shards, and the loaders that stream them."""
