"""Benchmark: forward+backward on cloudy series — ours skipping masked pixel-dates, ours computing them all, and
the official AnySat on the same tensors; in the dense case also the official L-TAE alone (its share of the
official's time bounds what skipping can gain: at most 1 / (1 − share × invalid share)).

The series are realistic in what decides the cost: the masks are the real `fmask` sequence of the Colorado
Landsat series (cloud, cloud shadow and fill invalid, as in configs/ingest-landsat.yaml; snow and water valid),
T consecutive dates of it in date order, each 61x61 mask wrapped to the tile size; the day of year is the
scene's. Values are standardised random numbers (the arithmetic does not depend on them), 0 where masked, as the
loader fills them. The model is Sentinel-2 shaped (10 bands, 10 m, patch 40 m, batch 1) so that the official
code runs unchanged; it has no mask input and computes every pixel-date. Same weights for all (the official
model's, converted with `anysat.load_official`); the three run interleaved in one process (best and median
of the repeats after a warm-up round; ratios from the best, the machine being shared), then the dense case
(no mask) for ours and the official.

    python bench/masked.py --official PATH [--sizes tiny base] [--dates 24 48] [--threads 1]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERIES = [ROOT.parent / "shared" / "data" / "landsat-timeseries-colorado",
          ROOT / "data" / "samples" / "landsat-timeseries-colorado"]  # fmt: skip
INVALID_FMASK = (2, 4, 255)  # cloud shadow, cloud, fill


def fmask_sequence() -> tuple[np.ndarray, np.ndarray]:
    """valid [105, 61, 61] bool and day of year [105] of the real series, in date order."""
    import rasterio

    folder = next((p for p in SERIES if p.is_dir()), None)
    if folder is None:
        raise SystemExit(f"the Colorado Landsat series is not in {' or '.join(map(str, SERIES))}")
    scenes = sorted((p for p in folder.iterdir() if re.match(r"L[ET]\d{14}", p.name)), key=lambda p: p.name[9:16])
    valid, doy = [], []
    for scene in scenes:
        with rasterio.open(scene / f"{scene.name}_fmask.tif") as ds:
            fmask = ds.read(1)
        with rasterio.open(scene / f"{scene.name}_b3.tif") as ds:
            nodata = ds.read(1) == -9999
        valid.append(~np.isin(fmask, INVALID_FMASK) & ~nodata)
        doy.append(float(scene.name[13:16]))
    return np.stack(valid), np.asarray(doy)


def series(valid: np.ndarray, doy: np.ndarray, *, start: int, t: int, px: int, seed: int = 0) -> dict:
    """One S2-shaped input: x [1, T, 10, px, px] (0 where masked), dates, valid [1, T, px, px]."""
    import torch

    reps = -(-px // valid.shape[1])
    mask = np.tile(valid[start : start + t], (1, reps, reps))[:, :px, :px]
    gen = torch.Generator().manual_seed(seed)
    ok = torch.from_numpy(mask)[None]
    x = torch.randn(1, t, 10, px, px, generator=gen) * ok[:, :, None]
    return {"s2": x, "s2_dates": torch.from_numpy(doy[start : start + t]).float()[None], "s2_valid": ok}


def ltae_mac_share(size: str, px: int, t: int, patch_px: int = 4) -> float:
    """Share of the L-TAE in the model's multiply-adds (dense series; forward, the backward scales alike).

    L-TAE per pixel-date: the input MLP (C → D/8 → D/2 → D → 2D → D) and the keys (D → 128); per pixel: the
    output MLP. Spatial encoder: per token and block 12·D² (qkv, projection, MLP ×4) + 2·N·D for attention, over
    (1 + patch_px²) tokens per patch; the backbone and fusion over 1 + patches tokens.
    """
    from anysat.config import SIZES

    d, depth, _ = SIZES[size]
    pixels, patches = px * px, (px // patch_px) ** 2
    ltae = pixels * t * (10 * d // 8 + d // 8 * d // 2 + d // 2 * d + 2 * d * d + 2 * d * d + 128 * d) + pixels * d * d
    tokens = 1 + patch_px**2
    spatial = patches * depth * tokens * (12 * d * d + 2 * tokens * d)
    backbone = (depth + 1) * (1 + patches) * (12 * d * d + 2 * (1 + patches) * d)
    return ltae / (ltae + spatial + backbone)


def _official(path: str, size: str):  # noqa: ANN202 - the official class
    sys.path[:0] = [path, str(Path(path) / "src")]
    import hubconf  # the official checkout's torch.hub entry point

    return hubconf.AnySat(model_size=size, flash_attn=False)


def _set_skip(model, skip: bool) -> None:  # noqa: ANN001
    from anysat.ltae import LTAE

    for m in model.modules():
        if isinstance(m, LTAE):
            m.skip_masked = skip


def measure(size: str, px: int, dates: list[int], repeats: int, official: str | None, start: int) -> list[dict]:
    """Interleaved fwd+bwd timings of official / ours without skipping / ours skipping, per T, then dense."""
    import torch

    from anysat import AnySat, AnySatConfig, load_official

    torch.manual_seed(0)
    if official:
        off = _official(official, size).train()
        ours = load_official(off.model.state_dict(), size=size, modalities=["s2"]).train()
    else:
        off, ours = None, AnySat(AnySatConfig(size=size, modalities=("s2",))).train()
    valid, doy = fmask_sequence()
    runs = {"official": (lambda x: off(x, 40, output="patch")) if off is not None else None,  # noqa: E731
            "official L-TAE": (lambda x: off.model.projector_s2(x["s2"], x["s2_dates"], 4)) if off else None,
            "ours": lambda x: ours(x, 40, "patch")}  # fmt: skip

    def once(impl: str, x: dict, skip: bool) -> float:
        _set_skip(ours, skip)
        begin = time.perf_counter()
        runs[impl](x).square().mean().backward()
        elapsed = time.perf_counter() - begin
        (off if impl.startswith("official") else ours).zero_grad(set_to_none=True)
        return elapsed

    rows = []
    cases = [(t, True) for t in dates] + [(dates[0], False)]
    for t, masked in cases:
        x = series(valid, doy, start=start, t=t, px=px)
        share = 1 - float(x["s2_valid"].float().mean())
        if not masked:
            x = {k: v for k, v in x.items() if k != "s2_valid"}
            x["s2"] = torch.randn(x["s2"].shape, generator=torch.Generator().manual_seed(1))
        official_input = {k: v for k, v in x.items() if k != "s2_valid"}
        variants = [("ours skip", "ours", x, True)] + ([("ours no-skip", "ours", x, False)] if masked else [])
        if off is not None:
            variants.append(("official", "official", official_input, False))
            if not masked:  # the L-TAE's share of the official's time bounds what skipping can gain
                variants.append(("official L-TAE", "official L-TAE", official_input, False))
        times: dict[str, list[float]] = {name: [] for name, *_ in variants}
        for rep in range(repeats + 1):  # first round is the warm-up
            for name, impl, inp, skip in variants:
                elapsed = once(impl, inp, skip)
                if rep:
                    times[name].append(elapsed)
        ours.eval(), off.eval() if off is not None else None  # no dropout (the official L-TAE has some)
        with torch.no_grad():
            _set_skip(ours, True)
            a = ours(x, 40, "patch")
            _set_skip(ours, False)
            b = ours(x, 40, "patch")
            diff = float((a - b).norm() / b.norm())
            vs_off = float((a - off(official_input, 40, output="patch")).abs().max()) if off and not masked else None
        ours.train(), off.train() if off is not None else None
        med = {name: min(v) for name, v in times.items()}
        row = {"size": size, "px": px, "T": t, "case": "cloudy" if masked else "dense",
               "invalid_share": round(share, 3) if masked else 0.0, "best_s": {k: round(v, 3) for k, v in med.items()},
               "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
               "skip_vs_noskip_rel_diff": diff if masked else None, "max_abs_diff_vs_official": vs_off}  # fmt: skip
        if "official" in med:
            row["official_over_ours_skip"] = round(med["official"] / med["ours skip"], 2)
        mac_share = ltae_mac_share(size, px, t)
        row["ltae_mac_share"] = round(mac_share, 3)
        if masked:  # what skipping alone can give if everything else costs the same
            row["skip_bound_from_macs"] = round(1 / (1 - mac_share * share), 2)
        if "official L-TAE" in med:
            row["official_ltae_share"] = round(med["official L-TAE"] / med["official"], 2)
        if masked:
            row["noskip_over_skip"] = round(med["ours no-skip"] / med["ours skip"], 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", default=None, help="checkout of the official AnySat repository")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--px", nargs="+", default=["tiny:32", "base:24"], help="tile side per size")
    parser.add_argument("--dates", nargs="+", type=int, default=[24, 48])
    parser.add_argument("--start", type=int, default=24, help="first date of the windows in the real series")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args()
    if args.official and not (Path(args.official) / "hubconf.py").exists():
        raise SystemExit(f"--official {args.official}: no hubconf.py there; pass a checkout of gastruc/AnySat")
    if not args.official:
        print("official AnySat checkout not given (--official PATH): measuring our model only", file=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    sides = dict(item.split(":") for item in args.px)
    load = os.getloadavg()
    rows = []
    for size in args.sizes:
        rows += measure(size, int(sides.get(size, 32)), args.dates, args.repeats, args.official, args.start)
    load_after = os.getloadavg()
    print(f"{'size':<5} {'px':>3} {'T':>3} {'case':<7} {'invalid':>7} {'official s':>10} {'no-skip s':>9} "
          f"{'skip s':>7} {'off/skip':>8} {'noskip/skip':>11} {'off L-TAE share':>15} {'L-TAE MACs':>10} "
          f"{'MAC bound':>9}")  # fmt: skip
    for r in rows:
        m = r["best_s"]
        print(f"{r['size']:<5} {r['px']:>3} {r['T']:>3} {r['case']:<7} {r['invalid_share']:>7} "
              f"{m.get('official', float('nan')):>10} {m.get('ours no-skip', float('nan')):>9} {m['ours skip']:>7} "
              f"{r.get('official_over_ours_skip', float('nan')):>8} {r.get('noskip_over_skip', float('nan')):>11} "
              f"{r.get('official_ltae_share', ''):>15} {r['ltae_mac_share']:>10} {r.get('skip_bound_from_macs', ''):>9}")
    print(json.dumps({"bench": "masked", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads": args.threads, "patch_size_m": 40,
                      "load_avg_before": [round(v, 2) for v in load], "load_avg_after": [round(v, 2) for v in load_after],
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
