"""From a manifest to committed shards: the chip grid, raster reading with retries, chip preparation, the run
(full or incremental) under a lease, its state and quicklooks."""
