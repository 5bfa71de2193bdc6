"""Glue that needs both data and model: pretraining runs (Ray Train), checkpoint storage, MLflow tracking, the
model registry and its pyfunc model, evaluation and embeddings. `pipeline` and `anysat` never import it."""

from modelops.registry import from_registry

__all__ = ["from_registry"]
