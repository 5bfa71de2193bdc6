"""Pretraining runs behind jobs/pretrain.py: dataset facts, the plain and the Ray Train paths, MLflow logging, registration.

Both paths run the same `_train` body around `anysat.train.fit`; they differ only in where batches come from
(`pipeline.load.loader.iter_batches` in this process, or `ray_batches` over `get_dataset_shard` on each Ray Train
worker), how checkpoints are stored (a directory under `<storage>/<run name>/` or `ray.train.report`) and
where a restarted run finds its last checkpoint (on Ray, `RayEpochs` also prefetches across epoch boundaries).
Only rank 0 logs to MLflow and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anysat import AnySat
from anysat.jepa import Jepa
from modelops.monitoring import COLLAPSE_FILE, build_monitor, plant_collapse, tracked_metrics
from modelops.registry import register_encoder
from modelops.run_storage import (CKPT_PREFIX, checkpoints, newer_checkpoint, remove_stale_checkpoint, storage_fs,
                                  worker_scratch, write_run_file)
from modelops.tracking import Tracker, write_loss_curve
from anysat.train import (CollapseError, StepReport, Trainer, fit, load_checkpoint, read_state, save_checkpoint,
                          wrap_ddp)  # fmt: skip
from pipeline.config import to_dict
from pipeline.progress import Progress
from pipeline.load.loader import LoaderConfig, iter_batches, read_stats
from pipeline.logs import install_redaction
from pipeline.store.shards import StoreLayout, read_index

if TYPE_CHECKING:
    from modelops.pretrain_config import PretrainConfig

log = logging.getLogger("pretrain")


def dataset_facts(data: LoaderConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Per dataset: manifest version(s), shards and chips as MLflow params, and its stats.json (validates URLs)."""
    import fsspec

    params: dict[str, str] = {}
    stats: dict[str, Any] = {}
    for src in data.datasets:
        stats[src.name] = read_stats(src.url)
        index = read_index(StoreLayout(src.url))
        fs, root = fsspec.core.url_to_fs(src.url)
        manifests = sorted(Path(p).stem for p in fs.glob(f"{root.rstrip('/')}/manifests/*.parquet"))
        params |= {f"dataset.{src.name}.manifest": ",".join(manifests), f"dataset.{src.name}.url": src.url,
                   f"dataset.{src.name}.shards": str(len(index)),
                   f"dataset.{src.name}.chips": str(int(index["n_chips"].sum()) if len(index) else 0)}  # fmt: skip
    return params, stats


def _build_trainer(cfg: PretrainConfig, *, rank: int, device: torch.device) -> Trainer:
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    jepa = Jepa(AnySat(cfg.model.anysat()), dataclasses.replace(cfg.jepa, seed=cfg.jepa.seed + rank)).to(device)
    return Trainer(jepa, cfg.optim, device=device)


def _train(cfg: PretrainConfig, *, rank: int, world: int, device: torch.device,
           batches_for: Callable[[int, int], Iterable[Mapping[str, Any]]], restore: str | None,
           save: Callable[[Trainer, StepReport, dict[str, Any]], None],
           tracking: tuple[str, str | None]) -> Trainer:  # fmt: skip
    """The body every rank runs: build, restore, wrap in DDP, fit with the collapse monitor, report to MLflow
    (rank 0).

    Raises:
        CollapseError: The monitor's guard stopped the run (`monitor.collapse_action: stop`).
    """
    trainer = _build_trainer(cfg, rank=rank, device=device)
    resumes: list[dict[str, Any]] = []
    initial_rank = None
    if restore:
        initial_rank = read_state(restore)["extra"].get("monitor_initial_rank")
        state = load_checkpoint(trainer, restore, rank=rank)  # rank > 0: its own random streams, not rank 0's
        resumes = list(read_state(restore)["extra"].get("resumes", []))
        resumes.append({"step": state.step, "target_sha256": weights_digest(trainer.jepa.target)})
        log.info("rank %d resumed from %s at step %d (epoch %d, %d batches in; target %s, mask stream %s, "
                 "torch stream %s)", rank, restore, state.step, state.epoch, state.batches_in_epoch,
                 resumes[-1]["target_sha256"][:16], stream_digest(trainer.jepa.generator.get_state()),
                 stream_digest(torch.get_rng_state()))  # fmt: skip
    if world > 1:
        keys = [set(src.modalities.values()) if src.modalities else None for src in cfg.data.datasets]
        known = None if None in keys else [k for k in keys if k is not None]
        trainer.forward = wrap_ddp(trainer.jepa, device, batch_keys=known)
    monitor = build_monitor(cfg, rank=rank, world=world, device=device, initial_rank=initial_rank)
    tracker = Tracker(tracking[0], run_id=tracking[1]) if rank == 0 and tracking[1] else None
    last: dict[str, StepReport] = {}
    progress = Progress("step", cfg.optim.total_steps, done=trainer.state.step, log=log if rank == 0 else None)

    def report(r: StepReport) -> None:
        last["r"] = r
        due = r.step % cfg.run.log_every == 0 or r.step == cfg.optim.total_steps or bool(r.monitor)
        if tracker is not None and due:
            for step, metrics in tracked_metrics(r.metrics(), r.step).items():
                tracker.log_metrics(metrics, step=step)
        if due:
            progress.update(r.step, detail=r.line().removeprefix(f"step {r.step} "))
        if cfg.monitor.plant_collapse_at_step and r.step == cfg.monitor.plant_collapse_at_step:
            plant_collapse(trainer.jepa.student)
        if cfg.run.fail_at_step and r.step == cfg.run.fail_at_step and restore is None and rank == world - 1:
            log.warning("fail_at_step=%d (test-only): rank %d exits abruptly", r.step, rank)
            os._exit(1)

    def checkpoint(t: Trainer) -> None:
        first = monitor.initial_rank if monitor is not None else None
        save(t, last["r"], {"config": to_dict(cfg), "resumes": resumes, "monitor_initial_rank": first})

    try:
        fit(trainer, batches_for, report=report, checkpoint=checkpoint, checkpoint_every=cfg.run.checkpoint_every,
            monitor=monitor)  # type: ignore[arg-type]  # a SharedVerdict has Monitor's due/measure
    except CollapseError:  # the measurement that stopped the run never reached a step report: log it here
        measured = getattr(monitor, "monitor", monitor)
        if tracker is not None and measured is not None and measured.history:
            values = dict(measured.history[-1])
            tracker.log_metrics(values, step=int(values.pop("step")))
        raise
    if tracker is not None:
        tracker.wait_for_return()  # metrics kept during an MLflow outage: sent, or reported unsent (bounded)
    return trainer


def stream_digest(state: torch.Tensor) -> str:
    """A short SHA-256 of a random generator's state: two ranks with equal digests draw the same masks."""
    return hashlib.sha256(state.numpy().tobytes()).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights as safetensors bytes (proves a restored EMA target equals the checkpoint's)."""
    from safetensors.torch import save

    return hashlib.sha256(save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})).hexdigest()


# -- plain path ------------------------------------------------------------------------------------------------
def run_plain(cfg: PretrainConfig, *, restore: str | None, tracking: tuple[str, str | None]) -> Path:
    """Train in this process (no Ray); checkpoints go to `<storage>/<run name>/checkpoint_<step>`."""
    run_dir = Path(cfg.run.storage) / cfg.run.name
    device = torch.device("cuda" if cfg.run.use_gpu and torch.cuda.is_available() else "cpu")

    def save(t: Trainer, r: StepReport, extra: dict[str, Any]) -> None:
        save_checkpoint(t, run_dir / f"{CKPT_PREFIX}{t.state.step:06d}", extra=extra)
        for old in checkpoints(run_dir)[: -cfg.run.keep_checkpoints]:
            shutil.rmtree(old)

    def batches_for(epoch: int, skip: int) -> Iterable[Mapping[str, Any]]:
        return iter_batches(cfg.data, epoch=epoch, skip_batches=skip)

    _train(cfg, rank=0, world=1, device=device, batches_for=batches_for, restore=restore, save=save,
           tracking=tracking)  # fmt: skip
    return checkpoints(run_dir)[-1]


# -- Ray Train path ----------------------------------------------------------------------------------------------
def _ray_worker(loop_config: dict[str, Any]) -> None:
    """`train_loop_per_worker`: restore from Ray's latest checkpoint (after a failure) or `--resume`'s, then train."""
    import ray
    import ray.train
    import ray.train.torch

    from pipeline.load.ray_loader import RayEpochs

    install_redaction()  # Ray Train workers log too
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train logs every `report` (metrics dict and checkpoint path) at INFO under a logger named by its source
    # file, which the `ray.train` level set by the command line does not reach: the step lines say it already
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    cfg: PretrainConfig = loop_config["config"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # which process this rank is and where rank 0's rendezvous store (torch's TCPStore) listens
    log.info("rank %d of %d on node %s (pid %d, process group store %s:%s)", rank, world,
             ray.get_runtime_context().get_node_id(), os.getpid(), os.environ.get("MASTER_ADDR", "-"),
             os.environ.get("MASTER_PORT", "-"))  # fmt: skip
    shards = {src.name: ray.train.get_dataset_shard(src.name) for src in cfg.data.datasets}
    def save(t: Trainer, r: StepReport, extra: dict[str, Any]) -> None:
        metrics = {**r.metrics(), "step": t.state.step}
        if rank != 0:
            ray.train.report(metrics)
            return
        remove_stale_checkpoint(cfg, t.state.step)  # Ray would copy over a killed attempt's folder file by file
        out = scratch / "save"
        shutil.rmtree(out, ignore_errors=True)
        try:
            path = save_checkpoint(t, out / "ckpt", extra=extra)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)),
                             checkpoint_dir_name=f"{CKPT_PREFIX}{t.state.step:06d}")  # fmt: skip
        finally:
            shutil.rmtree(out, ignore_errors=True)

    checkpoint = ray.train.get_checkpoint()  # a resumed run: the killed driver's last registered one, maybe older
    with worker_scratch(cfg, rank) as scratch:  # what a killed worker copied is removed by the next one
        restore = None
        source = newer_checkpoint(checkpoint.path if checkpoint else None, loop_config["resume_from"])
        if source is not None and (checkpoint is None or source != checkpoint.path):
            checkpoint = ray.train.Checkpoint(source, filesystem=storage_fs(cfg.run.storage)[0])
        if checkpoint is not None:
            restore = checkpoint.to_directory(str(scratch / "restore"))
        with RayEpochs(shards, cfg.data) as feed:  # the next epoch's stream starts before this one ends
            try:
                _train(cfg, rank=rank, world=world, device=ray.train.torch.get_device(),
                       batches_for=feed.batches_for, restore=restore, save=save,
                       tracking=loop_config["tracking"])  # fmt: skip
            except CollapseError as err:  # every rank stops here (SharedVerdict); no restart would cure it
                if rank == 0:
                    write_run_file(cfg, COLLAPSE_FILE, json.dumps({"message": str(err)}).encode())


def run_ray(cfg: PretrainConfig, *, restore: str | None, tracking: tuple[str, str | None]) -> str:
    """Train with Ray Train's TorchTrainer (gloo on CPU, nccl on GPU); returns the final checkpoint's path on the
    run storage (`local_checkpoint` gives it as a local directory)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.load.ray_loader import ray_datasets

    if not ray.is_initialized():  # the command line connects first (`modelops.cli.common.connect_ray`)
        address = os.environ.get("RAY_ADDRESS", "")
        if address.startswith("http"):  # a dashboard URL (for `ray job submit`) is not a cluster address
            address = os.environ.get("RAY_GCS_ADDRESS", "")
        ray.init(address=address or "local", log_to_driver=True)
    fs, path = storage_fs(cfg.run.storage)
    resources = {"CPU": cfg.run.cpus_per_worker} | ({"GPU": 1.0} if cfg.run.use_gpu else {})
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": cfg, "resume_from": restore, "tracking": tracking},
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cfg.run.placement),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        run_config=RunConfig(name=cfg.run.name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
                             # Ray Train's INFO lines (worker group started, each report) stay in its log files
                             logging_config=LoggingConfig(log_level="WARNING")),
        datasets=ray_datasets(cfg.data),
    )  # fmt: skip
    collapse = f"{path.rstrip('/')}/{cfg.run.name}/{COLLAPSE_FILE}"
    if fs.get_file_info(collapse).type.name == "File":  # left by an earlier attempt of a resumed run
        fs.delete_file(collapse)
    result = trainer.fit()
    if fs.get_file_info(collapse).type.name == "File":
        with fs.open_input_stream(collapse) as f:
            raise CollapseError(json.loads(f.read())["message"])
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return str(result.checkpoint.path)  # on the run storage: a local path, or bucket/key on s3


def log_dataset_stats(cfg: PretrainConfig, stats: Mapping[str, Any], tracker: Tracker) -> None:
    """Each dataset's statistics under `<run>/datasets/stats-<name>.json` and as MLflow artifacts."""
    with tempfile.TemporaryDirectory(prefix="anysat-stats-") as tmp:
        for name, table in stats.items():
            data = json.dumps(table, sort_keys=True).encode()
            write_run_file(cfg, f"datasets/stats-{name}.json", data)
            (Path(tmp) / f"stats-{name}.json").write_bytes(data)
            tracker.log_artifact(Path(tmp) / f"stats-{name}.json", artifact_path="datasets")


# -- after training ---------------------------------------------------------------------------------------------
REGISTER_ATTEMPTS = 3


def _register(cfg: PretrainConfig, final: Path, tracker: Tracker, kept_at: str) -> tuple[int | None, str | None]:
    """Register the encoder, retried `REGISTER_ATTEMPTS` times (waiting for MLflow between attempts, bounded);
    returns (version, None), or (None, why) when every attempt failed: the trained run is kept either way."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            return register_encoder(final / "student", name=cfg.run.registered_model, tracking_uri=tracker.uri,
                                    run_id=str(tracker.run_id)), None  # fmt: skip
        except (MlflowException, OSError) as err:
            why = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            if attempt == REGISTER_ATTEMPTS:
                log.warning("registering the encoder failed after %d attempts (%s); the checkpoint stays at %s",
                            attempt, why, kept_at)  # fmt: skip
                return None, f"failed after {attempt} attempts: {why}"
            log.warning("registering the encoder failed (%s); attempt %d/%d once MLflow answers", why, attempt + 1,
                        REGISTER_ATTEMPTS)  # fmt: skip
            time.sleep(2.0 * attempt)
            tracker.wait_for_return(check=True)
    raise AssertionError("unreachable")  # pragma: no cover


def tracking_gap(cfg: PretrainConfig, state: Mapping[str, Any], tracker: Tracker) -> list[int] | None:
    """Steps of this run (since its last resume) whose metrics MLflow does not have ([] when none is missing,
    None when tracking is off or the server cannot be asked): an outage's unsent metrics, stated in the summary."""
    if not tracker.active:
        return None
    logged = tracker.logged_steps("loss")
    if logged is None:
        return None
    resumes = state["extra"].get("resumes", [])
    start = int(resumes[-1]["step"]) if resumes else 0
    total = int(state["state"]["step"])
    due = [int(r[0]) for r in state["state"]["history"] if int(r[0]) > start and
           (int(r[0]) % cfg.run.log_every == 0 or int(r[0]) == total)]  # fmt: skip
    return [s for s in due if s not in logged]
def finish(cfg: PretrainConfig, final: Path, tracker: Tracker, *, checkpoint: str = "") -> dict[str, Any]:
    """Loss curve, config and summary under `run.storage/run.name/` and as artifacts, the encoder registered with
    alias `candidate`; returns the summary. `final` is the local final checkpoint, `checkpoint` where it is kept."""
    state = read_state(final)
    config_json = (json.dumps(state["extra"]["config"], indent=2, sort_keys=True) + "\n").encode()
    version, registration_error = None, None
    tracker.wait_for_return(check=True)  # an MLflow outage at the end: wait for it (bounded) before the uploads
    with tempfile.TemporaryDirectory(prefix="anysat-results-") as tmp:
        png = write_loss_curve(state["state"]["history"], Path(tmp) / "loss_curve.png")
        (Path(tmp) / "config.json").write_bytes(config_json)
        curve = write_run_file(cfg, "loss_curve.png", png.read_bytes())
        write_run_file(cfg, "config.json", config_json)
        if tracker.active:
            tracker.log_artifact(png)
            tracker.log_artifact(Path(tmp) / "config.json")
            if cfg.run.registered_model:
                version, registration_error = _register(cfg, final, tracker, checkpoint or str(final))
    last = state["state"]["history"][-1]
    summary = {"run_id": tracker.run_id, "tracking": "on" if tracker.active else f"off: {tracker.disabled_reason}",
               "steps": state["state"]["step"], "final_loss": last[1], "checkpoint": checkpoint or str(final),
               "registered_model": cfg.run.registered_model if version else None, "version": version,
               "resumes": state["extra"].get("resumes", []), "loss_curve": curve,
               "tracking_gap": tracking_gap(cfg, state, tracker), "registration_error": registration_error}  # fmt: skip
    summary["summary"] = write_run_file(cfg, "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
