"""The MLflow model registry for AnySat encoders: register a trained encoder, move aliases, load one back.

A registered version is an MLflow pyfunc model whose code is `modelops/pyfunc.py` (a model-from-code, so no pickled
module) and whose `encoder` artifact is the directory `AnySat.save` writes (`model.safetensors` + `config.json`).
`modelops.from_registry("models:/<name>@champion")` downloads that artifact and rebuilds the encoder with
`AnySat.load` in any process. `promote` moves an alias only when the candidate's recorded evaluation is at least
the champion's. mlflow is imported inside the functions only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from anysat.model import AnySat

__all__ = ["Promotion", "PromotionRefused", "from_registry", "promote", "register_encoder"]

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
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # the run's own experiment: a process that set another one (e.g. an evaluation) could not resume the run
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory(prefix="anysat-register-") as tmp, mlflow.start_run(run_id=run_id):
        staged = Path(tmp) / "encoder"  # the artifact keeps this name: <model>/artifacts/encoder/
        staged.mkdir()
        for part in ("model.safetensors", "config.json"):
            shutil.copy2(src / part, staged / part)
        info = mlflow.pyfunc.log_model(name="encoder", python_model=str(_PACKAGE / "pyfunc.py"),
                                       artifacts={"encoder": str(staged)}, code_paths=[str(_PACKAGE)],
                                       pip_requirements=_REQUIREMENTS, registered_model_name=name)  # fmt: skip
    version = int(info.registered_model_version)
    client.set_registered_model_alias(name, alias, str(version))
    return version


@dataclass(frozen=True)
class Promotion:
    """What `promote` decided: the version, whether the alias moved, the scores compared and why."""

    name: str
    alias: str
    version: int
    promoted: bool
    forced: bool
    candidate_score: float | None
    champion_version: int | None
    champion_score: float | None
    reason: str


class PromotionRefused(Exception):
    """The candidate's recorded evaluation does not allow the promotion (the reason is the message)."""


def _score(tags: Mapping[str, str], metric: str) -> float | None:
    try:
        return float(tags[metric]) if metric in tags else None
    except ValueError:
        return None


def _describe(mv_tags: Mapping[str, str], metric: str, alias: str, previous: str, forced: bool) -> str:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = (f"@{alias} since {when}{' (forced)' if forced else ''}: {metric} {mv_tags.get(metric, 'not recorded')} "
            f"(random init {mv_tags.get('eval.random_init_balanced_accuracy', '?')}, raw pixels "
            f"{mv_tags.get('eval.raw_pixels_balanced_accuracy', '?')}, effective rank "
            f"{mv_tags.get('eval.effective_rank', '?')}) on labelled store {mv_tags.get('eval.store', '?')} "
            f"(manifest {mv_tags.get('eval.store_manifest', '?')}), evaluation run {mv_tags.get('eval.run_id', '?')}, "
            f"commit {mv_tags.get('eval.commit', '?')}; previous {previous}.")  # fmt: skip
    return text


def promote(name: str, *, tracking_uri: str, version: int | None = None, alias: str = "champion",
            source_alias: str = "candidate", metric: str = "eval.balanced_accuracy",
            force: bool = False) -> Promotion:  # fmt: skip
    """Point `alias` at `version` (default: the `source_alias` version) only if its recorded score is at least the
    current `alias` version's.

    The score is the model-version tag `metric` written by `modelops.evaluate` (the linear-probe balanced accuracy
    of the encoder on a labelled store). Promotion is refused when the candidate has no score, when the two were
    evaluated on different labelled data (`eval.store_manifest`), or when the candidate scores below the champion;
    with no champion yet, a scored candidate is promoted. `force=True` promotes anyway and records that it did.
    The promoted version gets `promotion.*` tags and a description naming the evaluation (metric, labelled store
    and its manifest version, commit).

    Raises:
        PromotionRefused: The gate said no (and `force` is False).
        mlflow.exceptions.MlflowException: The model, alias or version does not exist.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if version is None:
        version = int(client.get_model_version_by_alias(name, source_alias).version)
    candidate = client.get_model_version(name, str(version))  # a clear "not found" for a missing version
    tags = dict(candidate.tags or {})
    score = _score(tags, metric)
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champion = None
    champ_version = int(champion.version) if champion is not None else None
    champ_tags = dict(champion.tags or {}) if champion is not None else {}
    champ_score = _score(champ_tags, metric)
    reason = ""
    if champ_version == version:
        reason = f"version {version} already is @{alias}"
    elif score is None:
        reason = f"version {version} has no recorded {metric}; evaluate it first (jobs/evaluate.py)"
    elif champion is not None and champ_score is not None:
        if tags.get("eval.store_manifest") != champ_tags.get("eval.store_manifest"):
            reason = (f"version {version} was evaluated on labelled data {tags.get('eval.store_manifest')!r}, the "
                      f"@{alias} version {champ_version} on {champ_tags.get('eval.store_manifest')!r}: the scores "
                      "are not comparable; evaluate both on one store")  # fmt: skip
        elif score < champ_score:
            reason = f"version {version} scores {metric} {score:.4f} < @{alias} version {champ_version}'s {champ_score:.4f}"
    result = Promotion(name, alias, version, False, False, score, champ_version, champ_score, reason)
    if reason and champ_version == version:
        return result
    if reason and not force:
        raise PromotionRefused(reason)
    client.set_registered_model_alias(name, alias, str(version))
    previous = (f"@{alias} version {champ_version} ({metric} {champ_score})" if champ_version is not None
                else f"no @{alias}")  # fmt: skip
    client.set_model_version_tag(name, str(version), "promotion.alias", alias)
    client.set_model_version_tag(name, str(version), "promotion.previous", str(champ_version or ""))
    client.set_model_version_tag(name, str(version), "promotion.forced", str(bool(reason)).lower())
    if reason:
        client.set_model_version_tag(name, str(version), "promotion.forced_over", reason)
    client.update_model_version(name, str(version), description=_describe(tags, metric, alias, previous, bool(reason)))
    return Promotion(name, alias, version, True, bool(reason), score, champ_version, champ_score,
                     reason or f"{metric} {score} >= {champ_score if champ_score is not None else 'no champion'}")


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
