"""Glue that needs both data and model: pretraining runs (Ray Train), checkpoint storage, MLflow tracking, the
model registry and its pyfunc model, evaluation and embeddings, and the command line (`modelops.cli`).
`pipeline` and `anysat` never import it. `from_registry` is imported on first use (torch is heavy, and the
command line answers `--help` and config errors without it)."""

from __future__ import annotations

from typing import Any

__all__ = ["from_registry"]


def __getattr__(name: str) -> Any:
    if name == "from_registry":
        from modelops.registry import from_registry

        return from_registry
    raise AttributeError(f"module 'modelops' has no attribute {name!r}")
