"""Benchmark: forward+backward time and peak memory of our AnySat vs the official implementation.

Same config (tiny/base), same weights (the official model's, converted with `anysat.load_official`), same
input (Sentinel-2, T dates, 10 bands, patch 40 m, batch 1, CPU fp32), measured side by side in one run, each
measurement in its own subprocess so peak memories do not mix. Outputs of the two are compared first.

    python bench/model.py [--official PATH] [--sizes tiny base] [--px 32 64 128] [--repeats 2]

`--official` is a checkout of github.com/gastruc/AnySat outside this project; without it only our model is
measured (and a message says so). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _official(path: str, size: str):  # noqa: ANN202 - the official class
    sys.path[:0] = [path, str(Path(path) / "src")]
    import hubconf  # the official checkout's torch.hub entry point

    return hubconf.AnySat(model_size=size, flash_attn=False)


def _input(px: int, t: int):  # noqa: ANN202
    import torch

    gen = torch.Generator().manual_seed(0)
    return {"s2": torch.randn(1, t, 10, px, px, generator=gen),
            "s2_dates": torch.linspace(5, 360, t).round()[None]}  # fmt: skip


def worker(impl: str, size: str, px: int, t: int, repeats: int, official: str | None, ckpt: bool) -> dict:
    """Run in a subprocess: build one model, time fwd+bwd, report peak RSS growth over the baseline."""
    import torch

    torch.manual_seed(0)
    if impl == "official":
        model = _official(official or "", size)
        model.train()
        run = lambda x: model(x, 40, output="patch")  # noqa: E731
    else:
        from anysat import AnySat, AnySatConfig

        model = AnySat(AnySatConfig(size=size, modalities=("s2",), grad_checkpointing=ckpt))
        run = lambda x: model(x, 40, "patch")  # noqa: E731
    x = _input(px, t)
    base = _rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x).square().mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"impl": impl + ("+ckpt" if ckpt else ""), "size": size, "px": px, "T": t,
            "fwd_bwd_s": round(statistics.median(times), 3), "peak_growth_mib": round(peak - base, 1)}  # fmt: skip


def compare_outputs(size: str, official: str, px: int, t: int) -> float:
    """Max |ours − official| on the same weights and input (patch output)."""
    import torch

    from anysat import load_official

    off = _official(official, size).eval()
    ours = load_official(off.model.state_dict(), size=size, modalities=["s2"]).eval()
    x = _input(px, t)
    with torch.no_grad():
        return float((off(x, 40, output="patch") - ours(x, 40, "patch")).abs().max())


def _spawn(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                         cwd=ROOT, check=False)  # fmt: skip
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", default=None, help="checkout of the official AnySat repository")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--px", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--ours-px", nargs="+", type=int, default=[32, 64, 128, 256], help="sizes for ours only")
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-official-px", nargs="+", default=["tiny:128", "base:64"],
                        help="largest tile per size for the (slow) official model")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, size, px, t, repeats, official, ckpt = args.worker
        print(json.dumps(worker(impl, size, int(px), int(t), int(repeats), None if official == "-" else official,
                                ckpt == "1")))  # fmt: skip
        return
    official = args.official
    if official and not (Path(official) / "hubconf.py").exists():
        raise SystemExit(f"--official {official}: no hubconf.py there; pass a checkout of gastruc/AnySat")
    if not official:
        print("official AnySat checkout not given (--official PATH): measuring our model only", file=sys.stderr)
    limits = dict(item.split(":") for item in args.max_official_px)
    rows, equal = [], {}
    for size in args.sizes:
        if official:
            equal[size] = compare_outputs(size, official, 32, args.dates)
        for px in sorted(set(args.px) | set(args.ours_px)):
            jobs = []
            if px in args.ours_px or px in args.px:
                jobs += [("ours", "0"), ("ours", "1")]
            if official and px in args.px and px <= int(limits.get(size, 10**6)):
                jobs.append(("official", "0"))
            for impl, ckpt in jobs:
                row = _spawn(impl, size, str(px), str(args.dates), str(args.repeats), official or "-", ckpt)
                row.setdefault("impl", impl + ("+ckpt" if ckpt == "1" else ""))
                row.update(size=size, px=px)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    print(f"{'size':<5} {'px':>4} {'impl':<10} {'fwd+bwd s':>10} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['size']:<5} {r['px']:>4} {r['impl']:<10} {r.get('fwd_bwd_s', float('nan')):>10} "
              f"{r.get('peak_growth_mib', float('nan')):>9} {r.get('error', '')}")
    import torch

    print(json.dumps({"bench": "model", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "dates": args.dates,
                      "patch_size_m": 40, "max_abs_diff_vs_official": equal, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
