"""MLflow pyfunc model-from-code for a registered AnySat encoder (logged as code; never imported by `anysat`).

`mlflow.pyfunc.load_model("models:/<name>@champion")` runs this file, whose model loads the encoder from the
model's `encoder` artifact (safetensors weights + JSON config) with `AnySat.load`: no pickled module is stored or
loaded. `predict({"s2": array, "s2_dates": array, …}, params={"patch_size": 40, "output": "tile"})` returns the
embeddings as a NumPy array. Most users call `modelops.from_registry(uri)` instead, which returns the `AnySat`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class AnySatEncoder(PythonModel):  # type: ignore[misc]
    """The encoder behind the pyfunc interface (inputs: the model's input dict as NumPy arrays)."""

    def load_context(self, context: Any) -> None:
        from anysat.model import AnySat

        self.model = AnySat.load(context.artifacts["encoder"]).eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        params = params or {}
        x = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}
        with torch.no_grad():
            out = self.model(x, patch_size=int(params.get("patch_size", 40)), output=params.get("output", "tile"))
        return out.numpy()


mlflow.models.set_model(AnySatEncoder())
