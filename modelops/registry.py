"""The MLflow model registry for AnySat encoders: register a trained encoder, move aliases, load one back.

A registered version is an MLflow pyfunc model whose code is `modelops/pyfunc.py` (a model-from-code, so no pickled
module) and whose `encoder` artifact is the directory `AnySat.save` writes (`model.safetensors` + `config.json`).
`modelops.from_registry("models:/<name>@champion")` downloads that artifact and rebuilds the encoder with
`AnySat.load` in any process. mlflow is imported inside the functions only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from anysat.model import AnySat

__all__ = ["from_registry", "promote", "register_encoder"]

_PACKAGE = Path(__file__).resolve().parent
_REQUIREMENTS = ["torch==2.13.0", "safetensors>=0.4", "numpy>=1.26"]


def register_encoder(encoder_dir: str | Path, *, name: str, tracking_uri: str, run_id: str,
                     alias: str = "candidate") -> int:  # fmt: skip
    """Log the saved encoder in `encoder_dir` as a pyfunc model of run `run_id`, register it, set `alias`.

    Args:
        encoder_dir: Directory written by `AnySat.save` (e.g. a checkpoint's `student/`).
        name: Registered model name.
        tracking_uri: MLflow tracking URI.
        run_id: The training run the model belongs to.
        alias: Alias given to the new version.

    Returns:
        The new model version number.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    src = Path(encoder_dir)
    if not (src / "model.safetensors").is_file() or not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} must hold model.safetensors and config.json (written by AnySat.save)")
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="anysat-register-") as tmp, mlflow.start_run(run_id=run_id):
        staged = Path(tmp) / "encoder"  # the artifact keeps this name: <model>/artifacts/encoder/
        staged.mkdir()
        for part in ("model.safetensors", "config.json"):
            shutil.copy2(src / part, staged / part)
        info = mlflow.pyfunc.log_model(name="encoder", python_model=str(_PACKAGE / "pyfunc.py"),
                                       artifacts={"encoder": str(staged)}, code_paths=[str(_PACKAGE)],
                                       pip_requirements=_REQUIREMENTS, registered_model_name=name)  # fmt: skip
    version = int(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(name, alias, str(version))
    return version


def promote(name: str, *, tracking_uri: str, version: int | None = None, alias: str = "champion",
            source_alias: str = "candidate") -> int:  # fmt: skip
    """Point `alias` at `version` (default: the version `source_alias` points at); returns that version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if version is None:
        version = int(client.get_model_version_by_alias(name, source_alias).version)
    client.get_model_version(name, str(version))  # raises a clear "not found" for a missing version
    client.set_registered_model_alias(name, alias, str(version))
    return version


def from_registry(uri: str, *, tracking_uri: str | None = None, map_location: str = "cpu") -> AnySat:
    """Load a registered encoder: `modelops.from_registry("models:/<name>@champion")` (or `…/<version>`).

    Only the safetensors weights and the JSON config are read. Without `tracking_uri`, MLflow's own default
    (its MLFLOW_TRACKING_URI variable) is used.

    Raises:
        ValueError: `uri` is not a `models:/` URI.
        FileNotFoundError: The model has no `encoder` artifact (it was not registered by `register_encoder`).
    """
    name, sep, alias = uri.removeprefix("models:/").partition("@")
    version = ""
    if not sep:
        name, _, version = name.partition("/")
    if not uri.startswith("models:/") or not name or not (alias or version.isdigit()):
        raise ValueError(f"expected a registry URI like 'models:/<name>@champion' or 'models:/<name>/3', got {uri!r}")
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if alias:
        version = str(client.get_model_version_by_alias(name, alias).version)
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="anysat-registry-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri))
        found = sorted(local.rglob("artifacts/encoder/config.json"))
        if not found:
            raise FileNotFoundError(f"{uri} (version {version}) holds no artifacts/encoder/config.json; register "
                                    "models with modelops.registry.register_encoder")  # fmt: skip
        return AnySat.load(found[0].parent, map_location=map_location)
