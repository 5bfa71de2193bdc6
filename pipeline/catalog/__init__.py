"""STAC search, Planetary Computer signing and frozen manifests: what a dataset is built from."""
