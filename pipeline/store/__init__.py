"""The Zarr v3 store: layout, shard writing and reading, commit markers, the shard index, statistics and the
superseded-chips table. The only package that knows how shards are laid out."""
