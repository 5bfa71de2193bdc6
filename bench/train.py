"""Benchmark: JEPA step time under Ray Train (1 worker) vs a plain PyTorch loop, data-wait share, samples/s.

Measured side by side in one run, same model (tiny unless told), same batch, same torch thread count:

1. step time (fastest and median over `--steps` after `--warmup`) of `anysat.train.Trainer.step` on one fixed batch, in this
   process and inside a Ray Train TorchTrainer worker (1 worker, gloo); ratio Ray / plain (target <= 1.05);
2. share of step time spent waiting for data while pretraining from the store: `fit` over the plain loader
   (`pipeline.load.loader.iter_batches`) here, and in the Ray worker over `pipeline.load.ray_loader.RayEpochs` (the
   next epoch's stream prefetched, what jobs/pretrain.py uses) and over `ray_batches` called once per epoch
   (each epoch's stream started when the trainer asks for it), one after the other on the same splits
   (target <= 5%);
3. samples/s of the plain loop for each of `--sizes` (tiny and base) on this CPU.

    python bench/train.py [--store out/demo-dataset] [--synthetic] [--sizes tiny base] [--steps 8]

The store is one written by jobs/ingest.py (`make demo` writes out/demo-dataset); `--synthetic` uses random
tensors of the same shapes instead (then there is no data-wait figure). Starts its own local Ray instance
unless `--ray-address` is given. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anysat import AnySat, AnySatConfig  # noqa: E402
from anysat.jepa import Jepa, JepaConfig  # noqa: E402
from anysat.train import OptimConfig, Trainer, fit  # noqa: E402


def _loader_config(store: str, batch_size: int) -> Any:
    from pipeline.load.loader import DatasetSource, LoaderConfig

    src = DatasetSource(store, modalities={"s2": "s2", "s1": "s1-asc"})
    return LoaderConfig((src,), batch_size=batch_size, patch_sizes_m=(40,), shuffle_buffer=8)


def _batch(args: argparse.Namespace) -> dict[str, Any]:
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        b, t, px = args.batch_size, 2, 48
        out: dict[str, Any] = {"patch_size": 40, "dataset": "synthetic", "chip_id": [str(i) for i in range(b)]}
        for key, c in (("s2", 10), ("s1-asc", 2)):
            out[key] = torch.randn(b, t, c, px, px, generator=g)
            out[f"{key}_dates"] = torch.randint(1, 366, (b, t), generator=g)
            out[f"{key}_mask"] = torch.ones(b, t, dtype=torch.bool)
        return out
    from pipeline.load.loader import iter_batches

    return next(iter_batches(_loader_config(args.store, args.batch_size)))


def _trainer(size: str, steps: int) -> Trainer:
    torch.manual_seed(0)
    jepa = Jepa(AnySat(AnySatConfig(size=size, modalities=("s2", "s1-asc"))), JepaConfig(predictor_depth=2))
    return Trainer(jepa, OptimConfig(total_steps=steps, warmup_steps=1))


def step_times(size: str, batch: dict[str, Any], *, warmup: int, steps: int) -> list[float]:
    """Seconds per optimiser step on one fixed batch, after `warmup` untimed steps."""
    trainer = _trainer(size, warmup + steps)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer.step([batch])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def wait_share(batches_for: Any, *, steps: int) -> tuple[float, float]:
    """(share of wall time waiting for batches, samples/s) of a `fit` of `steps` steps over real batches."""
    trainer = _trainer("tiny", steps)
    waits, computes, samples = [], [], []

    def report(r: Any) -> None:
        waits.append(r.data_wait_s)
        computes.append(r.step_time_s)
        samples.append(r.samples)

    fit(trainer, batches_for, report=report)
    return sum(waits) / (sum(waits) + sum(computes)), sum(samples) / (sum(waits) + sum(computes))


def _ray_worker(cfg: dict[str, Any]) -> None:
    import itertools

    import ray.train

    from pipeline.load.ray_loader import RayEpochs, ray_batches

    torch.set_num_threads(cfg["threads"])
    times = step_times("tiny", cfg["batch"], warmup=cfg["warmup"], steps=cfg["steps"])
    share = sps = share_direct = sps_direct = float("nan")
    if cfg["loader"] is not None:
        shards = {name: ray.train.get_dataset_shard(name) for name in cfg["names"]}
        share_direct, sps_direct = wait_share(
            lambda e, s: itertools.islice(ray_batches(shards, cfg["loader"], epoch=e), s, None), steps=cfg["fit_steps"])
        with RayEpochs(shards, cfg["loader"]) as feed:
            share, sps = wait_share(feed.batches_for, steps=cfg["fit_steps"])
    metrics = {"step_s": statistics.median(times), "step_min_s": min(times), "wait_share": share, "samples_per_s": sps,
               "wait_share_per_epoch": share_direct, "samples_per_s_per_epoch": sps_direct}
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train keeps the metrics reported with a checkpoint
        Path(tmp, "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def ray_figures(args: argparse.Namespace, batch: dict[str, Any]) -> dict[str, float]:
    import ray
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=args.ray_address or "local", num_cpus=None if args.ray_address else 2,
             include_dashboard=False, log_to_driver=False)  # fmt: skip
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    datasets, loader = {}, None
    if not args.synthetic:
        from pipeline.load.ray_loader import ray_datasets

        loader = _loader_config(args.store, args.batch_size)
        datasets = ray_datasets(loader)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"batch": batch, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
                           "loader": loader, "names": list(datasets), "fit_steps": args.fit_steps},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"bench-train-{int(time.time())}", storage_path=str(Path(args.tmp).resolve())),
        datasets=datasets,
    )  # fmt: skip
    result = trainer.fit()
    ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"the Ray Train run failed: {result.error}") from result.error
    return dict(result.metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=str(ROOT / "out" / "demo-dataset"), help="dataset root (jobs/ingest.py)")
    parser.add_argument("--synthetic", action="store_true", help="random tensors instead of the store")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], help="model sizes for samples/s")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--fit-steps", type=int, default=12, help="steps of the data-wait measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both loops")
    parser.add_argument("--ray-address", default="", help="an existing cluster (default: a local instance)")
    parser.add_argument("--tmp", default="/tmp/anysat-bench-train", help="Ray Train run storage")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    torch.set_num_threads(args.threads)
    batch = _batch(args)
    plain_times = step_times("tiny", batch, warmup=args.warmup, steps=args.steps)
    plain_wait = plain_sps = float("nan")
    if not args.synthetic:
        from pipeline.load.loader import iter_batches

        cfg = _loader_config(args.store, args.batch_size)
        plain_wait, plain_sps = wait_share(lambda e, s: iter_batches(cfg, epoch=e, skip_batches=s),
                                           steps=args.fit_steps)  # fmt: skip
    ray_m = ray_figures(args, batch)
    plain_times += step_times("tiny", batch, warmup=args.warmup, steps=args.steps)  # before and after Ray
    # medians drift with the load of a shared machine; the fastest step of each is the overhead-only comparison
    plain_step, plain_min = statistics.median(plain_times), min(plain_times)
    sizes = {s: args.batch_size / statistics.median(step_times(s, batch, warmup=1, steps=max(2, args.steps // 4)))
             for s in args.sizes}  # fmt: skip
    shape = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 5}
    out = {"bench": "train", "device": "cpu", "threads": args.threads, "batch": shape, "patch_size_m": 40,
           "data": "synthetic" if args.synthetic else "store", "torch": torch.__version__,
           "python": platform.python_version(), "plain_step_s": round(plain_step, 4),
           "plain_step_min_s": round(plain_min, 4), "ray_step_s": round(ray_m["step_s"], 4),
           "ray_step_min_s": round(ray_m["step_min_s"], 4),
           "ray_over_plain_min": round(ray_m["step_min_s"] / plain_min, 3),
           "ray_over_plain_median": round(ray_m["step_s"] / plain_step, 3),
           "wait_share_plain_loader": round(plain_wait, 4), "wait_share_ray_loader": round(ray_m["wait_share"], 4),
           "wait_share_ray_per_epoch_stream": round(ray_m["wait_share_per_epoch"], 4),
           "fit_samples_per_s_plain": round(plain_sps, 2), "fit_samples_per_s_ray": round(ray_m["samples_per_s"], 2),
           "fit_samples_per_s_ray_per_epoch_stream": round(ray_m["samples_per_s_per_epoch"], 2),
           "samples_per_s": {s: round(v, 3) for s, v in sizes.items()}}  # fmt: skip
    print(f"step time, tiny, one fixed batch (fastest / median): plain {plain_min:.3f} / {plain_step:.3f} s, Ray Train "
          f"(1 worker) {ray_m['step_min_s']:.3f} / {ray_m['step_s']:.3f} s -> {out['ray_over_plain_min']}x / "
          f"{out['ray_over_plain_median']}x (target <= 1.05)")
    print(f"data-wait share while pretraining: plain loader {plain_wait:.1%}, Ray loader (RayEpochs) "
          f"{ray_m['wait_share']:.1%}, Ray loader with a stream started per epoch {ray_m['wait_share_per_epoch']:.1%} "
          "(target <= 5%)")
    for s, v in sizes.items():
        print(f"samples/s on CPU, {s}: {v:.2f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
