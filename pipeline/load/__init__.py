"""From shards to training batches: loader config, samples and batches, the plain and the Ray Data paths."""
