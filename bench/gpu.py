"""Benchmark: the GPU path — the official AnySat (fp32 and its fp16 autocast) vs ours (bf16 autocast, fused
`scaled_dot_product_attention`), JEPA training samples/s, and a one-GPU Ray Train run with nccl.

1. **Model**, forward+backward of the `patch` output, tiny and base, Sentinel-2 tiles of `--px` (64/128/256),
   T = `--dates`, patch 40 m, batch 1, same weights (the official model's, converted with `anysat.load_official`)
   and same input: median seconds over `--repeats` after a warm-up, peak memory
   (`torch.cuda.max_memory_allocated`, reset before each), and the cosine similarity of each output to the fp32
   output of the same code (eval mode, no dropout; ≥ 0.999 expected). Goal: ours bf16 ≥ 2× the official fp32.
   The attention kernels that ran in ours (the `aten::_scaled_dot_product_*` ops seen by the profiler) are listed,
   to show that the fused kernels (flash / memory-efficient) are used.
2. **JEPA training**: `anysat.train.Trainer.step` (bf16 autocast on CUDA) on a fixed synthetic S2 + S1 batch,
   samples/s, tiny and base.
3. **Ray Train**: `jobs/pretrain.py` (modelops.pretrain through Ray Train's TorchTrainer, `run.use_gpu=true`, so
   nccl) for a few steps on a small store written here (synthetic values, real layout); wall time and exit code.

    python bench/gpu.py --official PATH            # on a machine with one GPU: all three (~5-8 min)
    python bench/gpu.py --device cpu --quick       # smoke test of the script on CPU (seconds)

Needs torch and safetensors for 1-2; 3 needs the project's dependencies (ray[train], zarr, ...), else it is
skipped with the reason. Prints a table and one JSON line (and writes it to `--out` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anysat import AnySat, AnySatConfig, load_official  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument("--quick", action="store_true", help="tiny only, 16 px, 3 dates, 1 repeat, no Ray: seconds")
    parser.add_argument("--official", default=None, help="checkout of github.com/gastruc/AnySat")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "small", "base"])
    parser.add_argument("--px", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 with --quick, torch's own otherwise)")
    parser.add_argument("--skip-ray", action="store_true", help="leave out the Ray Train run")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (use --device cpu --quick for a smoke test)")
    if args.official and not (Path(args.official) / "hubconf.py").exists():
        parser.error(f"--official {args.official}: no hubconf.py there; pass a checkout of gastruc/AnySat")
    if any(p % 4 for p in args.px) or args.dates < 1 or args.repeats < 1:
        parser.error("--px must be multiples of 4 (40 m patches of 10 m pixels); --dates and --repeats >= 1")
    if args.quick:
        args.sizes, args.px, args.dates, args.repeats, args.train_steps, args.skip_ray = ["tiny"], [16], 3, 1, 1, True
        args.threads = args.threads or 1
    return args


def _official(path: str, size: str):  # noqa: ANN202 - the official class
    if path not in sys.path:
        sys.path[:0] = [path, str(Path(path) / "src")]
    import hubconf  # the official checkout's torch.hub entry point

    return hubconf.AnySat(model_size=size, flash_attn=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype | None):  # noqa: ANN202
    import contextlib

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _variant(name: str, model: torch.nn.Module, call, x: dict, dtype: torch.dtype | None, device: torch.device,
             repeats: int, ref: torch.Tensor | None) -> dict[str, Any]:  # noqa: ANN001 - call(model, x)
    """Time fwd+bwd (train mode), peak memory, then the eval output and its cosine to `ref`."""
    row: dict[str, Any] = {"variant": name}
    try:
        model.train()
        times = []
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            begin = time.perf_counter()
            with _autocast(device, dtype):
                out = call(model, x)
            out.float().square().mean().backward()
            _sync(device)
            if i:
                times.append(time.perf_counter() - begin)
            model.zero_grad(set_to_none=True)
        row["fwd_bwd_s"] = round(statistics.median(times), 4)
        row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None
        model.eval()
        with torch.no_grad(), _autocast(device, dtype):
            y = call(model, x).float()
        row["output"] = y
        if ref is not None:
            row["cosine_to_fp32"] = round(float(torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(),
                                                                                      dim=0)), 6)  # fmt: skip
    except torch.cuda.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err).splitlines()[0]}"
    except RuntimeError as err:  # e.g. an autocast dtype this device does not support
        row["error"] = str(err).splitlines()[0]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def attention_kernels(model: AnySat, x: dict, device: torch.device) -> list[str]:
    """The `aten::_scaled_dot_product_*` ops one bf16 forward of ours runs (fused kernels where listed)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof, torch.no_grad(), _autocast(device, torch.bfloat16):
        model(x, 40, "patch")
    return sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key})


def model_rows(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    rows, kernels = [], {}
    for size in args.sizes:
        torch.manual_seed(0)
        off = _official(args.official, size).to(device) if args.official else None
        ours = (load_official(off.model.state_dict(), size=size, modalities=["s2"]) if off is not None
                else AnySat(AnySatConfig(size=size, modalities=("s2",)))).to(device)  # fmt: skip
        for px in args.px:
            gen = torch.Generator().manual_seed(px)
            x = {"s2": torch.randn(1, args.dates, 10, px, px, generator=gen).to(device),
                 "s2_dates": torch.linspace(5, 360, args.dates).round()[None].to(device)}  # fmt: skip
            found = []
            if off is not None:
                call_off = lambda m, v: m(v, 40, output="patch")  # noqa: E731
                ref = _variant("official fp32", off, call_off, x, None, device, args.repeats, None)
                found += [ref, _variant("official fp16", off, call_off, x, torch.float16, device, args.repeats,
                                        ref.get("output"))]  # fmt: skip
            call = lambda m, v: m(v, 40, "patch")  # noqa: E731
            mine = _variant("ours fp32", ours, call, x, None, device, args.repeats, None)
            found += [mine, _variant("ours bf16", ours, call, x, torch.bfloat16, device, args.repeats,
                                     mine.get("output"))]  # fmt: skip
            if off is not None and "output" in mine and "output" in found[0]:
                mine["max_abs_diff_vs_official_fp32"] = float((mine["output"] - found[0]["output"]).abs().max())
            base = next((r.get("fwd_bwd_s") for r in found if r["variant"] == "official fp32"), None)
            for r in found:
                r.pop("output", None)
                r.update(size=size, px=px, T=args.dates)
                if base and r.get("fwd_bwd_s"):
                    r["speedup_vs_official_fp32"] = round(base / r["fwd_bwd_s"], 2)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
            if size not in kernels:
                kernels[size] = attention_kernels(ours, x, device)
        del off, ours
    return rows, kernels


def _train_batch(b: int, t: int, px: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"patch_size": 40, "dataset": "synthetic", "chip_id": [str(i) for i in range(b)]}
    for key, c in (("s2", 10), ("s1-asc", 2)):
        out[key] = torch.randn(b, t, c, px, px, generator=g)
        out[f"{key}_dates"] = torch.randint(1, 366, (b, t), generator=g)
        out[f"{key}_mask"] = torch.ones(b, t, dtype=torch.bool)
    return out


def train_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """JEPA optimiser steps per second × batch on one fixed batch (bf16 autocast on CUDA)."""
    from anysat.jepa import Jepa, JepaConfig
    from anysat.train import OptimConfig, Trainer

    rows = []
    for size in args.sizes:
        batch_size, t, px = (8, 4, 48) if not args.quick else (1, 2, 24)
        torch.manual_seed(0)
        jepa = Jepa(AnySat(AnySatConfig(size=size, modalities=("s2", "s1-asc"))), JepaConfig()).to(device)
        trainer = Trainer(jepa, OptimConfig(total_steps=args.train_steps + 2, warmup_steps=1), device=device)
        batch = _train_batch(batch_size, t, px)
        trainer.step([batch])  # warm-up (allocator, kernels)
        _sync(device)
        begin = time.perf_counter()
        for _ in range(args.train_steps):
            trainer.step([batch])
        _sync(device)
        seconds = time.perf_counter() - begin
        row = {"size": size, "batch": batch_size, "dates": t, "px": px, "steps": args.train_steps,
               "samples_per_s": round(batch_size * args.train_steps / seconds, 2)}  # fmt: skip
        if device.type == "cuda":
            row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        del trainer, jepa
    return rows


def _small_store(root: Path, chips: int = 32) -> str:
    """A store of `chips` 240 m chips (s2 and s1, 4 dates, synthetic values) written with the store's writer."""
    import numpy as np

    from pipeline.store.records import Chip, ModalityArray
    from pipeline.store.shards import StoreLayout, rebuild_index, write_shard
    from pipeline.store.stats import chip_stats, stats_to_json

    rng = np.random.default_rng(0)
    dates = np.array(["2021-03-01", "2021-05-01", "2021-07-01", "2021-09-01"], dtype="datetime64[s]")
    made = []
    for i in range(chips):
        mods = {}
        for key, bands in (("s2", tuple(f"B{j}" for j in range(10))), ("s1", ("vv", "vh"))):
            data = rng.normal(size=(4, len(bands), 24, 24)).astype(np.float32)
            mods[key] = ModalityArray(data, np.ones((4, 24, 24), bool), dates, tuple(f"{key}-{d}" for d in range(4)),
                                      bands, 10.0)  # fmt: skip
        x0 = 500_000.0 + 240 * i
        made.append(Chip(f"chip-{i:03d}", 32618, (x0, 4_000_000.0, x0 + 240, 4_000_240.0), -75.0, 36.0, mods))
    layout = StoreLayout(str(root), max_dates={"s2": 4, "s1": 4})
    for start in range(0, chips, 4):
        write_shard(made[start : start + 4], layout=layout, shard_id=f"shard-{start:05d}")
    rebuild_index(layout)
    (root / "stats.json").write_text(json.dumps(stats_to_json(chip_stats(made))))
    return str(root)


def ray_train_row(args: argparse.Namespace) -> dict[str, Any]:
    """`jobs/pretrain.py` on Ray Train with one GPU worker (nccl), a few steps on a small store."""
    try:
        import ray  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as err:
        return {"skipped": f"the project's dependencies are not installed here ({err})"}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        store = _small_store(Path(tmp) / "store")
        argv = [sys.executable, str(ROOT / "jobs" / "pretrain.py"), "--config", str(ROOT / "configs" / "pretrain-demo.yaml"),
                "--set", f"data.datasets.0.url={store}", "--set", "run.use_gpu=true", "--set", "run.workers=1",
                "--set", "run.cpus_per_worker=1", "--set", f"run.storage={tmp}/runs", "--set", "optim.total_steps=6"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        begin = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=420, check=False)
        row = {"exit_code": out.returncode, "wall_s": round(time.perf_counter() - begin, 1),
               "nccl": "nccl" in (out.stdout + out.stderr).lower()}  # fmt: skip
        if out.returncode:
            row["tail"] = (out.stdout + out.stderr)[-1500:]
        return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if not args.official:
        print("official AnySat checkout not given (--official PATH): measuring our model only", file=sys.stderr)
    info = {"bench": "gpu", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "quick": args.quick}  # fmt: skip
    began = time.perf_counter()
    rows, kernels = model_rows(args, device)
    train = train_rows(args, device)
    ray_row = {"skipped": "--skip-ray or --quick"} if args.skip_ray else ray_train_row(args)
    print(f"{'size':<5} {'px':>4} {'variant':<14} {'fwd+bwd s':>9} {'peak MiB':>8} {'cos fp32':>9} {'vs off fp32':>11}")
    for r in rows:
        print(f"{r['size']:<5} {r['px']:>4} {r['variant']:<14} {str(r.get('fwd_bwd_s', '-')):>9} "
              f"{str(r.get('peak_mib', '-')):>8} {str(r.get('cosine_to_fp32', '-')):>9} "
              f"{str(r.get('speedup_vs_official_fp32', '-')):>11} {r.get('error', '')}")
    for r in train:
        print(f"JEPA training {r['size']}: {r['samples_per_s']} samples/s (batch {r['batch']})")
    print(f"attention ops in ours: {kernels}")
    print(f"Ray Train, one GPU, nccl: {ray_row}")
    result = {**info, "seconds": round(time.perf_counter() - began, 1), "model": rows, "attention_ops": kernels,
              "train": train, "ray_train": ray_row}  # fmt: skip
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
