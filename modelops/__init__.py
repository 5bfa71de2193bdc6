"""Glue that needs both data and model: training runs, tracking, registry, evaluation, embeddings."""
