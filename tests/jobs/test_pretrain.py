"""jobs/pretrain.py on the plain path through the real servers: learning on the demo store, exact resume after an
abrupt exit, MLflow tracking and the registry round trip in fresh processes, promotion, MLflow unreachable.

The demo store is ingested once per module from the session stack's STAC API (240 m chips: 16 chips in 8 shards,
so batches can be shuffled and split). Jobs run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anysat import AnySat
from anysat.metrics import effective_rank
from modelops import from_registry
from anysat.train import read_state
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest
from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def demo_store(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("pretrain") / "demo-dataset"
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         [f"store={store}", "grid.chip_size_m=240", "chips_per_shard=2"])  # fmt: skip
    run_ingest(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    return store


def _job(script: str, args: list[str], env: dict[str, str], *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([PY, f"jobs/{script}", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    if ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _summary(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(out.stdout.strip().splitlines()[-1])  # the summary: the last line, one JSON object


def _pretrain_args(store: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["--config", "configs/pretrain-demo.yaml", "--no-ray", "--set", f"data.datasets.0.url={store}",
            "--set", f"run.storage={runs}", "--set", f"run.name={name}", "--set", "data.batch_size=4",
            "--set", "data.patch_sizes_m=[40]", *[a for x in extra for a in ("--set", x)]]  # fmt: skip


NO_MLFLOW = {"MLFLOW_TRACKING_URI": ""}


@pytest.mark.xfail(strict=False, raises=AssertionError, reason="Issue 10 is open: with the new defaults the effective rank of these tiny real batches still falls below half its first value (measured: 29.5 -> 13.5 over 50 steps on 6 BigEarthNet pairs; 4.1 -> 1.7 on the demo store). Not strict: near the threshold (13.5 vs 14.8) a CPU with other rounding may pass it; an XPASS is shown in the summary.")
def test_the_loss_falls_on_the_demo_store_without_collapse(demo_store: Path, tmp_path: Path) -> None:
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "learn", "optim.total_steps=30",
                                             "optim.warmup_steps=3", "optim.lr=0.001", "run.checkpoint_every=0"),
               NO_MLFLOW)  # fmt: skip
    history = read_state(_summary(out)["checkpoint"])["state"]["history"]
    losses = np.array([row[1] for row in history])
    assert len(losses) == 30 and np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    assert last < 0.85 * first, f"the loss went from {first:.3f} to {last:.3f}"
    # and the encoder did not get there by collapsing: the effective rank of its fused patch tokens on the
    # store's chips stays >= half that of the same architecture at its initial weights (the job's seed 0)
    src = DatasetSource(str(demo_store), modalities={"s2": "s2", "s1": "s1-asc"})
    batch = next(iter_batches(LoaderConfig((src,), batch_size=8, patch_sizes_m=(40,), shuffle_buffer=0,
                                           drop_last=False)))  # fmt: skip
    x = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    trained = AnySat.load(Path(_summary(out)["checkpoint"]) / "student")
    torch.manual_seed(0)
    init = AnySat(trained.config)
    ranks = []
    for model in (init, trained):
        with torch.no_grad():
            tokens = model.eval()(x, patch_size=40, output="all")[:, 1:]
        ranks.append(effective_rank(tokens.reshape(-1, tokens.shape[-1])))
    assert ranks[1] >= 0.5 * ranks[0], f"the effective rank collapsed from {ranks[0]:.2f} to {ranks[1]:.2f}"


def test_resume_after_an_abrupt_exit_reproduces_the_uninterrupted_run(demo_store: Path, tmp_path: Path) -> None:
    common = ["optim.total_steps=5", "optim.warmup_steps=1", "run.checkpoint_every=2", "data.batch_size=2"]
    full = _summary(_job("pretrain.py", _pretrain_args(demo_store, tmp_path, "full", *common), NO_MLFLOW))
    killed = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "cut", *common, "run.fail_at_step=3"),
                  NO_MLFLOW, ok=False)  # fmt: skip
    assert killed.returncode == 1 and "fail_at_step=3" in killed.stderr
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoint_000002", "datasets"]  # + stats
    again = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "cut", *common), NO_MLFLOW, ok=False)
    assert again.returncode == 2 and "--resume" in again.stderr  # an existing run is never overwritten silently
    resumed = _summary(_job("pretrain.py", [*_pretrain_args(demo_store, tmp_path, "cut", *common), "--resume"],
                            NO_MLFLOW))  # fmt: skip
    assert [r["step"] for r in resumed["resumes"]] == [2]
    a, b = read_state(full["checkpoint"]), read_state(resumed["checkpoint"])
    assert b["state"]["history"] == a["state"]["history"]  # the same five losses, bit for bit
    assert b["state"]["epoch"] == a["state"]["epoch"] and b["state"]["batches_in_epoch"] == a["state"]["batches_in_epoch"]


def _embed_in_process(checkpoint: Path, store: Path) -> list[float]:
    model = AnySat.load(checkpoint / "student").eval()
    src = DatasetSource(str(store), modalities={"s2": "s2", "s1": "s1-asc"})
    batch = next(iter_batches(LoaderConfig((src,), batch_size=1, patch_sizes_m=(40,), shuffle_buffer=0)))
    with torch.no_grad():
        x = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        tile = model(x, patch_size=batch["patch_size"], output="patch")[0].mean(dim=(0, 1))  # mean of patch tokens
        return [round(float(v), 6) for v in tile]


def test_tracking_registry_round_trip_and_promotion(demo_store: Path, tmp_path: Path,
                                                    stack_env: dict[str, str]) -> None:  # fmt: skip
    import mlflow
    from mlflow.tracking import MlflowClient

    name = f"anysat-test-{os.getpid()}"
    env = {**stack_env}
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "tracked", "optim.total_steps=3",
                                             "optim.warmup_steps=1", f"run.registered_model={name}"), env)  # fmt: skip
    summary = _summary(out)
    assert summary["tracking"] == "on" and summary["version"] == 1
    client = MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    run = client.get_run(summary["run_id"])
    assert run.data.params["optim.total_steps"] == "3" and run.data.params["model.size"] == "tiny"
    manifest = run.data.params["dataset.demo-dataset.manifest"]
    assert len(manifest) == 64 and run.data.params["dataset.demo-dataset.chips"] == "16"
    for metric in ("loss", "loss_pred", "loss_nce", "lr", "ema_momentum", "samples_per_s", "data_wait_share"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 3, metric
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "config.json", "datasets"} <= top
    assert client.get_model_version_by_alias(name, "candidate").version == "1"
    # a fresh process pulls @candidate from the registry and embeds the chip the trained model embeds here
    pulled = json.loads(_job("embed.py", ["--model", f"models:/{name}@candidate", "--store", str(demo_store),
                                          "--patch-size", "40"], env).stdout.strip().splitlines()[-1])  # fmt: skip
    # the job embeds in batches (another matmul blocking than one chip): equal to float32 rounding, not bit for bit
    np.testing.assert_allclose(pulled["embedding"], _embed_in_process(Path(summary["checkpoint"]), demo_store),
                               rtol=0, atol=1e-5)
    # promotion: @champion follows @candidate by default (forced: it was never evaluated; the gate itself is
    # tested in tests/modelops/test_evaluate_promote.py), and an explicit missing version fails clearly
    refused = _job("promote.py", ["--name", name], env, ok=False)
    assert refused.returncode == 3 and "no recorded eval.balanced_accuracy" in refused.stderr
    promoted = json.loads(_job("promote.py", ["--name", name, "--force"], env).stdout)
    assert (promoted["name"], promoted["alias"], promoted["version"], promoted["forced"]) == (name, "champion", 1, True)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    bad = _job("promote.py", ["--name", name, "--version", "9"], env, ok=False)
    assert bad.returncode == 1 and "not found" in bad.stderr
    champion = from_registry(f"models:/{name}@champion", tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    trained = AnySat.load(Path(summary["checkpoint"]) / "student")
    for (key, a), b in zip(champion.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    local = Path(mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(name, "1"),
                                                     tracking_uri=stack_env["MLFLOW_TRACKING_URI"],
                                                     dst_path=str(tmp_path / "dl")))  # fmt: skip
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"artifacts/encoder/model.safetensors", "artifacts/encoder/config.json", "pyfunc.py"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth"))], "no pickled module or weights"


def test_training_completes_and_says_so_when_mlflow_is_unreachable(demo_store: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scratch = tmp_path / "tmp"  # the job's temp folder: empty again when it ends
    scratch.mkdir()
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "offline", "optim.total_steps=2",
                                             "optim.warmup_steps=1"),
               {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "TMPDIR": str(scratch)})  # fmt: skip
    # torch's own per-user compile cache (`torchinductor_<user>`, shared and reused by every torch process) is
    # not a result of the run; anything else left there is
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")]
    assert left == [], f"pretraining left files in the temp folder: {left}"
    assert "MLflow unreachable" in out.stderr and "training completed without tracking" in out.stderr
    summary = _summary(out)
    assert summary["steps"] == 2 and summary["tracking"].startswith("off") and summary["version"] is None
    assert Path(summary["checkpoint"], "student", "model.safetensors").is_file()


def test_an_invalid_config_exits_2_before_training(demo_store: Path, tmp_path: Path) -> None:
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "bad", "optim.warmup_step=3"), NO_MLFLOW, ok=False)
    assert out.returncode == 2 and "PretrainConfig.optim: unknown key 'warmup_step'; valid keys are" in out.stderr
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "bad", "data.datasets.0.modalities.s1=s1-des",
                                             "model.modalities=[s2]"), NO_MLFLOW, ok=False)  # fmt: skip
    assert out.returncode == 2 and "not among model.modalities" in out.stderr
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "bad", f"monitor.probe_store={demo_store}"),
               NO_MLFLOW, ok=False)  # the demo store has no labels to probe  # fmt: skip
    assert out.returncode == 2 and "monitor.probe_store" in out.stderr and "has no labels" in out.stderr
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "bad", "monitor.collapse_action=halt"), NO_MLFLOW,
               ok=False)  # fmt: skip
    assert out.returncode == 2 and "PretrainConfig.monitor.collapse_action: expected one of" in out.stderr


def _run_named(client: Any, experiment: str, name: str) -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              filter_string=f"attributes.run_name = '{name}'")  # fmt: skip
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_the_monitor_logs_ranks_stds_and_the_probe_and_stays_silent_on_a_healthy_run(
        demo_store: Path, landcover_store: Path, tmp_path: Path, stack_env: dict[str, str]) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    experiment = f"monitor-{os.getpid()}"
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "watched", "optim.total_steps=4",
                                             "optim.warmup_steps=1", "run.registered_model=''",
                                             f"run.experiment={experiment}", "run.log_every=3",
                                             "monitor.eval_every=2", "monitor.collapse_action=stop",
                                             f"monitor.probe_store={landcover_store}"), stack_env)  # fmt: skip
    assert "COLLAPSE" not in out.stderr  # the guard is silent on a healthy encoder, even with `stop`
    client = MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    run_id = _summary(out)["run_id"]
    history = {m: {h.step: h.value for h in client.get_metric_history(run_id, m)}
               for m in ("rank_student", "rank_target", "std_student", "std_target", "rank_ratio",
                         "probe_balanced_accuracy")}  # fmt: skip
    for metric, values in history.items():  # measured before the first step and every 2 steps
        assert sorted(values) == [0, 2, 4], metric
    assert history["rank_student"][0] > 2 and history["rank_target"][0] == pytest.approx(history["rank_student"][0])
    assert history["rank_ratio"][0] == 1.0 and all(v >= 0.5 for v in history["rank_ratio"].values())
    assert all(0 < v <= 1 for v in history["probe_balanced_accuracy"].values())
    assert all(v > 0 for v in history["std_student"].values())
    lines = [line for line in out.stderr.splitlines() if "step 2/4" in line]  # step 2: off log_every, on eval_every
    assert lines and "rank_student" in lines[0] and "probe_balanced_accuracy" in lines[0]


@pytest.mark.timeout(1800)  # two jobs
def test_the_collapse_guard_stops_a_collapsed_run_and_marks_it_failed(demo_store: Path, tmp_path: Path,
                                                                      stack_env: dict[str, str]) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    experiment = f"collapse-{os.getpid()}"
    common = ["optim.total_steps=4", "optim.warmup_steps=1", "run.registered_model=''", f"run.experiment={experiment}",
              "monitor.eval_every=2", "monitor.batch_size=4", "monitor.plant_collapse_at_step=2"]  # collapse after 2
    out = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "collapsed", *common, "monitor.collapse_action=stop"),
               stack_env, ok=False)  # fmt: skip
    assert out.returncode == 3, out.stderr[-3000:]
    assert "REPRESENTATION COLLAPSE at step 4" in out.stderr
    assert "training stopped by the collapse guard: REPRESENTATION COLLAPSE" in out.stderr
    assert "Traceback" not in out.stderr
    client = MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    run = _run_named(client, experiment, "collapsed")
    assert run.info.status == "FAILED" and run.data.tags["stopped_by"] == "collapse_guard"
    ranks = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "rank_student")}
    assert sorted(ranks) == [0, 2, 4] and ranks[4] < 1.5 < ranks[0]  # stopped at the first measurement after it
    # `warn` (the default action) says the same loudly and trains to the end
    warned = _job("pretrain.py", _pretrain_args(demo_store, tmp_path, "warned", *common), stack_env)
    assert "REPRESENTATION COLLAPSE at step 4" in warned.stderr and _summary(warned)["steps"] == 4
    assert client.get_run(_summary(warned)["run_id"]).info.status == "FINISHED"
