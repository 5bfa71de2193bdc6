"""The evaluate command through the MLflow server, and promotion gated on the recorded score (real servers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from anysat import AnySat, AnySatConfig
from modelops.cli.evaluate import main as evaluate_main
from modelops.cli.promote import REFUSED
from modelops.cli.promote import main as promote_main
from modelops.registry import register_encoder

pytestmark = pytest.mark.stack


def _register(name: str, seed: int, uri: str, tmp: Path) -> int:
    from mlflow.tracking import MlflowClient

    torch.manual_seed(seed)
    saved = AnySat(AnySatConfig.from_dict({"size": "tiny", "modalities": ["l7"]})).save(tmp / f"enc{seed}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("anysat-test-registry")
    exp_id = experiment.experiment_id if experiment else client.create_experiment("anysat-test-registry")
    run = client.create_run(exp_id)
    version = register_encoder(saved, name=name, tracking_uri=uri, run_id=run.info.run_id)
    client.set_terminated(run.info.run_id)
    return version


def test_evaluate_writes_its_metrics_on_the_model_version_and_promote_gates_on_them(
        landcover_store: Path, stack_env: dict[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    uri = stack_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = f"anysat-gate-{os.getpid()}"
    v1 = _register(name, 1, uri, tmp_path)
    args = ["--model", f"models:/{name}/{v1}", "--store", str(landcover_store), "--tracking-uri", uri,
            "--cs", "0.1", "1", "--cv-folds", "3"]  # fmt: skip
    assert evaluate_main(args) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert "random init  linear" in out.out and "embed step" in out.err and "ETA" in out.err
    run = client.get_run(summary["run_id"])
    assert run.data.tags["model_version"] == str(v1) and run.data.tags["model_name"] == name
    assert run.data.tags["source_run"] == client.get_model_version(name, str(v1)).run_id
    assert run.data.metrics["model_linear_balanced_accuracy"] == pytest.approx(summary["score"], abs=1e-6)
    assert {"random_linear_balanced_accuracy", "raw_linear_balanced_accuracy", "model_knn_balanced_accuracy",
            "model_effective_rank", "model_linear_f1_forest"} <= set(run.data.metrics)  # fmt: skip
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_model_linear.png", "evaluation.json", "probe_table.txt"} <= artifacts
    tags = client.get_model_version(name, str(v1)).tags
    assert float(tags["eval.balanced_accuracy"]) == pytest.approx(summary["score"], abs=1e-6)
    assert tags["eval.run_id"] == summary["run_id"] and len(tags["eval.store_manifest"]) == 64
    assert tags["eval.store"] == str(landcover_store)

    # no champion yet: the evaluated version is promoted; an unevaluated one is refused
    assert promote_main(["--name", name, "--version", str(v1), "--tracking-uri", uri]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == str(v1)
    description = client.get_model_version(name, str(v1)).description
    assert tags["eval.store_manifest"] in description and tags["eval.commit"] in description
    v2 = _register(name, 2, uri, tmp_path)
    capsys.readouterr()
    assert promote_main(["--name", name, "--version", str(v2), "--tracking-uri", uri]) == REFUSED
    assert "no recorded eval.balanced_accuracy" in capsys.readouterr().err
    # worse than the champion (a recorded score below v1's, on the same labelled data): refused, then forced
    score = float(tags["eval.balanced_accuracy"])
    for key in ("eval.store_manifest", "eval.store", "eval.commit", "eval.run_id"):
        client.set_model_version_tag(name, str(v2), key, tags[key])
    client.set_model_version_tag(name, str(v2), "eval.balanced_accuracy", f"{score - 0.05:.6f}")
    assert promote_main(["--name", name, "--version", str(v2), "--tracking-uri", uri]) == REFUSED
    assert f"< @champion version {v1}" in capsys.readouterr().err
    assert client.get_model_version_by_alias(name, "champion").version == str(v1)
    assert promote_main(["--name", name, "--version", str(v2), "--tracking-uri", uri, "--force"]) == 0
    assert "FORCED" in capsys.readouterr().err
    assert client.get_model_version(name, str(v2)).tags["promotion.forced"] == "true"
    # better than the (forced) champion: accepted; on other labelled data: refused
    v3 = _register(name, 3, uri, tmp_path)
    for key in ("eval.store_manifest", "eval.store", "eval.commit", "eval.run_id"):
        client.set_model_version_tag(name, str(v3), key, tags[key])
    client.set_model_version_tag(name, str(v3), "eval.balanced_accuracy", f"{score - 0.01:.6f}")
    client.set_registered_model_alias(name, "candidate", str(v3))
    assert promote_main(["--name", name, "--tracking-uri", uri]) == 0  # the @candidate by default
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["promoted"] and not result["forced"] and result["champion_version"] == v2
    assert client.get_model_version_by_alias(name, "champion").version == str(v3)
    client.set_model_version_tag(name, str(v1), "eval.store_manifest", "0" * 64)
    client.set_model_version_tag(name, str(v1), "eval.balanced_accuracy", "0.99")
    assert promote_main(["--name", name, "--version", str(v1), "--tracking-uri", uri]) == REFUSED
    assert "not comparable" in capsys.readouterr().err
    assert promote_main(["--name", name, "--version", "99", "--tracking-uri", uri]) == 1
