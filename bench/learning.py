"""Benchmark: does JEPA pretraining learn? Probes of raw pixels, random init and the pretrained encoder, side by side.

On the real labelled Landsat 7 ETM+ scene of `../shared/data/landsat7-nc-landcover` (6 bands at 28.5 m, a land-cover
class per pixel; see its README), in one run:

1. bands read with rasterio, each file's own declared nodata masked (-99999 for the float32 bands, -32768 for
   band 7, which is int16), each band standardised with its mean and std over valid
   pixels; the model sees the scene as the official `l7` modality, one date (T = 1);
2. labelled tiles: non-overlapping `--tile` x `--tile` px windows with >= 95 % valid pixels whose majority class
   covers >= 60 %; classes with fewer than `--min-class-tiles` tiles left out (agriculture has 1 tile: a class
   that a split may hold only in its test blocks); split train/test by spatial blocks of `--block` x `--block`
   tiles (`modelops.evaluation.grid_block_split`, seeded hash, 30 % of the blocks held out), `--splits` times
   (split seeds 0..N-1): every score is the mean over the splits, because one split's test blocks hold only
   3-6 water and 7-27 shrubland or herbaceous tiles, so a single split moves by several points with one tile;
3. pretraining of the tiny encoder with `anysat.jepa.Jepa` + `anysat.train.Trainer` (project defaults;
   `--tile-nce-weight` turns on the sub-tile contrast between the quadrants of each window) on UNLABELLED
   `--pretrain-tile` x `--pretrain-tile` px windows (default 8; 16 makes a quadrant one probed tile) anywhere in
   the scene with >= 95 % valid pixels (labels never read), for
   `--minutes` of wall time (the step count is fixed after 10 steps from the measured step time, so the cosine
   schedule and the EMA schedule end with the budget);
4. probes on the same split, each chosen on the training blocks only: raw pixels (per-band mean and std of the
   tile; logistic regression and a random forest), the same architecture at random init (same seed), and the
   pretrained student; tile embedding = mean of the fused patch tokens (`output="patch"`); linear probe
   (class-balanced logistic regression, C by grouped CV) and cosine kNN; effective rank (RankMe, uncentred) of
   each embedding matrix;
5. a reference row, `supervised`: the same architecture trained with the training blocks' labels
   (`--supervised-steps`), scored on the same test blocks — how much room there is above random init.

Acceptance (issue 10): pretrained linear-probe balanced accuracy (mean over the splits) >= random init + 5
points, and the pretrained rank >= 0.5 x the random-init rank. Prints a table and one final JSON line.

    python bench/learning.py [--data ../shared/data/landsat7-nc-landcover] [--minutes 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anysat import AnySat, AnySatConfig  # noqa: E402
from anysat.jepa import Jepa, JepaConfig  # noqa: E402
from anysat.metrics import effective_rank  # noqa: E402
from anysat.train import OptimConfig, Trainer  # noqa: E402
from modelops.evaluation import block_ids, forest_probe, grid_block_split, knn_probe, linear_probe  # noqa: E402

BANDS = ("10", "20", "30", "40", "50", "70")  # ETM+ 1, 2, 3, 4, 5, 7
LABEL_NODATA = -99999.0
CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water", 7: "sediment"}


def load_scene(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised bands [6, H, W] (0 where invalid), valid mask [H, W], class raster [H, W] (0 = none)."""
    arr, ok = [], []
    for b in BANDS:
        with rasterio.open(folder / f"lsat7_2000_{b}.tif") as src:
            band = src.read(1)
            ok.append(band != src.nodata if src.nodata is not None else np.ones(band.shape, bool))
            arr.append(band.astype(np.float32))
    x = np.stack(arr)
    valid = np.stack(ok).all(0) & np.isfinite(x).all(0)
    for i in range(len(x)):
        band = x[i]
        band[valid] = (band[valid] - band[valid].mean()) / band[valid].std()
        band[~valid] = 0.0
    with rasterio.open(folder / "strata.tif") as src:
        labels = src.read(1)
    labels = np.where((labels > 0) & (labels != LABEL_NODATA), labels, 0).astype(np.int64)
    return x, valid, labels


def labelled_tiles(valid: np.ndarray, labels: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping t x t windows (row, col of the corner) with >= 95 % valid pixels and a >= 60 % majority."""
    corners, classes = [], []
    for r in range(0, valid.shape[0] - t + 1, t):
        for c in range(0, valid.shape[1] - t + 1, t):
            v = valid[r : r + t, c : c + t]
            lab = labels[r : r + t, c : c + t][v]
            lab = lab[lab > 0]
            if v.mean() < 0.95 or not len(lab):
                continue
            vals, counts = np.unique(lab, return_counts=True)
            if counts.max() >= 0.6 * t * t:
                corners.append((r, c))
                classes.append(int(vals[counts.argmax()]))
    return np.array(corners), np.array(classes)


def unlabelled_windows(valid: np.ndarray, t: int) -> np.ndarray:
    """Corners of every t x t window (any offset) with >= 95 % valid pixels: the pretraining pool."""
    v = np.pad(valid.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = v[t:, t:] - v[:-t, t:] - v[t:, :-t] + v[:-t, :-t]
    return np.argwhere(sums >= 0.95 * t * t)


def make_batch(x: np.ndarray, valid: np.ndarray, corners: np.ndarray, t: int, patch_m: int) -> dict[str, Any]:
    """Windows in the `Jepa` batch contract: `l7` [B, 1, 6, t, t], one date, pixel validity."""
    xs = np.stack([x[:, r : r + t, c : c + t] for r, c in corners])
    vs = np.stack([valid[r : r + t, c : c + t] for r, c in corners])
    b = len(corners)
    return {"l7": torch.from_numpy(xs)[:, None], "l7_dates": torch.full((b, 1), 150, dtype=torch.long),
            "l7_mask": torch.ones(b, 1, dtype=torch.bool), "l7_valid": torch.from_numpy(vs)[:, None],
            "patch_size": patch_m}  # fmt: skip


@torch.no_grad()
def embed(model: AnySat, x: np.ndarray, valid: np.ndarray, corners: np.ndarray, t: int, patch_m: int) -> np.ndarray:
    """Tile embeddings: mean of the fused patch tokens, [N, D]."""
    model.eval()
    out = []
    for i in range(0, len(corners), 128):
        b = make_batch(x, valid, corners[i : i + 128], t, patch_m)
        inputs = {k: v for k, v in b.items() if isinstance(v, torch.Tensor)}
        out.append(model(inputs, patch_size=patch_m, output="patch").mean((1, 2)))
    return torch.cat(out).numpy()


def raw_features(x: np.ndarray, valid: np.ndarray, corners: np.ndarray, t: int) -> np.ndarray:
    """Per-band mean and std over the valid pixels of each tile, [N, 12]."""
    feats = []
    for r, c in corners:
        v = valid[r : r + t, c : c + t]
        px = x[:, r : r + t, c : c + t][:, v]
        feats.append(np.concatenate([px.mean(1), px.std(1)]))
    return np.array(feats)


def pretrain(jepa: Jepa, x: np.ndarray, valid: np.ndarray, pool: np.ndarray, args: argparse.Namespace) -> dict:
    """Train for `args.minutes`; the step count is fixed after 10 steps. Returns steps, minutes and losses."""
    rng = np.random.default_rng(args.seed)
    provisional = OptimConfig(total_steps=1_000_000, warmup_steps=10)
    trainer = Trainer(jepa, provisional)
    budget, t0, losses = args.minutes * 60.0, time.perf_counter(), []
    while trainer.state.step < trainer.config.total_steps:
        corners = pool[rng.choice(len(pool), args.batch_size, replace=False)]
        report = trainer.step([make_batch(x, valid, corners, args.pretrain_tile, args.patch_m)])
        losses.append(report.loss_pred)
        if trainer.state.step == 10:  # the schedules end where the budget does
            per_step = (time.perf_counter() - t0) / 10
            total = max(11, min(args.max_steps, 10 + int((budget - 10 * per_step) / per_step)))
            trainer.config = dataclasses.replace(provisional, total_steps=total,
                                                 warmup_steps=min(provisional.warmup_steps, total))  # fmt: skip
        if trainer.state.step % 100 == 0:
            print(f"  step {trainer.state.step}/{trainer.config.total_steps} loss_pred {report.loss_pred:.4f} "
                  f"loss_tile {report.loss_tile:.4f} "
                  f"lr {report.lr:.2e} {(time.perf_counter() - t0) / 60:.1f} min", flush=True)  # fmt: skip
    return {"steps": trainer.state.step, "minutes": (time.perf_counter() - t0) / 60,
            "loss_pred_first10": float(np.mean(losses[:10])), "loss_pred_last10": float(np.mean(losses[-10:]))}


def supervised_ceiling(x: np.ndarray, valid: np.ndarray, corners: np.ndarray, y: np.ndarray, test: np.ndarray,
                       args: argparse.Namespace) -> float:
    """The same architecture trained WITH the training blocks' labels (class-balanced cross-entropy on a linear
    head, random 90-degree rotations, cosine lr): what supervision reaches on these test blocks, the reference
    that says how much room a self-supervised encoder has above random init."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    classes = np.unique(y)
    yi = np.searchsorted(classes, y)
    model = AnySat(AnySatConfig(size="tiny", modalities=("l7",)))
    head = torch.nn.Linear(model.embed_dim, len(classes))
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.05)
    train = np.flatnonzero(~test)
    counts = np.bincount(yi[train], minlength=len(classes)).astype(np.float64)
    weight = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(classes), 0.0),
                          dtype=torch.float32)  # fmt: skip
    model.train()
    for step in range(args.supervised_steps):
        for g in opt.param_groups:
            g["lr"] = 3e-4 * 0.5 * (1 + np.cos(np.pi * step / args.supervised_steps))
        idx = rng.choice(train, args.batch_size * 4)
        b = make_batch(x, valid, corners[idx], args.tile, args.patch_m)
        k = int(rng.integers(4))
        inputs = {"l7": torch.rot90(b["l7"], k, (-2, -1)).contiguous(), "l7_dates": b["l7_dates"],
                  "l7_mask": b["l7_mask"], "l7_valid": torch.rot90(b["l7_valid"], k, (-2, -1)).contiguous()}  # fmt: skip
        logits = head(model(inputs, patch_size=args.patch_m, output="patch").mean((1, 2)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(yi[idx]), weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(torch.from_numpy(embed(model, x, valid, corners[test], args.tile, args.patch_m))).argmax(1)
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(yi[test], pred.numpy()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "landsat7-nc-landcover")
    ap.add_argument("--minutes", type=float, default=8.0, help="pretraining wall-time budget (default 8)")
    ap.add_argument("--max-steps", type=int, default=100_000, help="cap on the step count")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tile", type=int, default=8, help="probed tile side in pixels (default 8)")
    ap.add_argument("--pretrain-tile", type=int, default=8, help="pretraining window side in pixels (default 8)")
    ap.add_argument("--tile-nce-weight", type=float, default=JepaConfig().tile_nce_weight,
                    help="weight of the sub-tile contrast (default: JepaConfig's)")
    ap.add_argument("--patch-m", type=int, default=60, help="patch size in metres (default 60: 2x2 px)")
    ap.add_argument("--block", type=int, default=4, help="spatial block side in tiles (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="model init, masks and pretraining windows")
    ap.add_argument("--splits", type=int, default=5,
                    help="spatial splits (seeds 0..N-1); every score is their mean (default 5)")
    ap.add_argument("--min-class-tiles", type=int, default=5,
                    help="classes with fewer labelled tiles are left out of the probes (default 5)")
    ap.add_argument("--supervised-steps", type=int, default=300,
                    help="steps of the supervised reference per split (0 = skip it; default 300)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    x, valid, labels = load_scene(args.data)
    corners, y = labelled_tiles(valid, labels, args.tile)
    classes, n_per_class = np.unique(y, return_counts=True)
    dropped = {CLASSES[int(k)]: int(n) for k, n in zip(classes, n_per_class, strict=True) if n < args.min_class_tiles}
    keep = ~np.isin(y, [k for k, n in zip(classes, n_per_class, strict=True) if n < args.min_class_tiles])
    corners, y = corners[keep], y[keep]
    pool = unlabelled_windows(valid, args.pretrain_tile)
    rows, cols = corners[:, 0] // args.tile, corners[:, 1] // args.tile
    tests = [grid_block_split(rows, cols, args.block, 0.3, seed=s) for s in range(args.splits)]
    groups = block_ids(cols.astype(float), rows.astype(float), float(args.block))
    counts = {CLASSES[int(k)]: int(n) for k, n in zip(*np.unique(y, return_counts=True), strict=True)}
    print(f"{len(y)} labelled tiles ({counts}; left out, fewer than {args.min_class_tiles} tiles: {dropped}), "
          f"{len(pool)} unlabelled windows; {args.splits} spatial splits, test tiles "
          f"{[int(t.sum()) for t in tests]}", flush=True)  # fmt: skip

    torch.manual_seed(args.seed)
    model = AnySat(AnySatConfig(size="tiny", modalities=("l7",)))
    features = {"raw pixels": raw_features(x, valid, corners, args.tile),
                "random init": embed(model, x, valid, corners, args.tile, args.patch_m)}  # fmt: skip
    jepa = Jepa(model, JepaConfig(seed=args.seed, tile_nce_weight=args.tile_nce_weight))
    run = pretrain(jepa, x, valid, pool, args)
    features["pretrained"] = embed(jepa.student, x, valid, corners, args.tile, args.patch_m)

    rows_out: dict[str, dict[str, Any]] = {}
    for name, f in features.items():
        lin = [linear_probe(f[~t], y[~t], f[t], y[t], groups[~t]).balanced_accuracy for t in tests]
        knn = [knn_probe(f[~t], y[~t], f[t], y[t], groups[~t]).balanced_accuracy for t in tests]
        row: dict[str, Any] = {"linear": float(np.mean(lin)), "linear_per_split": [round(v, 4) for v in lin],
                               "knn": float(np.mean(knn)), "rank": effective_rank(torch.from_numpy(f)),
                               "dim": f.shape[1]}  # fmt: skip
        if name == "raw pixels":
            row["forest"] = float(np.mean([forest_probe(f[~t], y[~t], f[t], y[t], seed=args.seed).balanced_accuracy
                                           for t in tests]))  # fmt: skip
        rows_out[name] = row
    if args.supervised_steps > 0:
        sup = [supervised_ceiling(x, valid, corners, y, t, args) for t in tests]
        rows_out["supervised"] = {"linear": float(np.mean(sup)), "linear_per_split": [round(v, 4) for v in sup]}
    print(f"\npretraining: {run['steps']} steps in {run['minutes']:.1f} min, loss_pred "
          f"{run['loss_pred_first10']:.4f} -> {run['loss_pred_last10']:.4f}")  # fmt: skip
    print(f"{'features':<12} {'dim':>4} {'bal.acc (mean)':>15} {'per split':>32} {'kNN':>6} {'forest':>7} {'rank':>7}")
    for name, r in rows_out.items():
        per = " ".join(f"{v:.3f}" for v in r["linear_per_split"])
        forest = f"{r['forest']:.3f}" if "forest" in r else "-"
        knn = f"{r['knn']:.3f}" if "knn" in r else "-"
        rank = f"{r['rank']:.2f}" if "rank" in r else "-"
        dim = r.get("dim", "-")
        print(f"{name:<12} {dim:>4} {r['linear']:>15.3f} {per:>32} {knn:>6} {forest:>7} {rank:>7}")
    if "supervised" in rows_out:
        print("supervised = the same architecture trained on the training blocks' labels (a reference, not a probe)")
    gain = rows_out["pretrained"]["linear"] - rows_out["random init"]["linear"]
    rank_ratio = rows_out["pretrained"]["rank"] / rows_out["random init"]["rank"]
    result = {"bench": "learning", "seed": args.seed, "splits": args.splits, "left_out_classes": dropped,
              "pretrain_tile": args.pretrain_tile, "tile_nce_weight": args.tile_nce_weight, **run,
              "tiles": int(len(y)), "results": rows_out,
              "linear_gain_points": 100 * gain, "rank_ratio": rank_ratio,
              "accepted": bool(gain >= 0.05 and rank_ratio >= 0.5 and run["minutes"] <= 30),
              "total_minutes": (time.perf_counter() - t_start) / 60}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
