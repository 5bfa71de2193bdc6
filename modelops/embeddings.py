"""Embed every chip of a store with an encoder: the model reference, store groups → model keys, the embedding loop.

`load_encoder("models:/<name>@<alias>")` (or `…/<version>`, or a checkpoint / `AnySat.save` directory) gives the
encoder and a `ModelRef` (name, version, training run). `embed_store` reads every current chip of a store once,
in a fixed order (the training loader with no shuffle buffer and no dropped batch, `pipeline.load`, so the
normalisation is the training one) and returns tile embeddings (mean of the fused patch tokens) of one or more
encoders, the raw-pixel features (per-band mean and std of the valid pixels, the probe's baseline), each chip's
valid-pixel share and, when asked, dense patch embeddings. It prints `embed step k/N … ETA` lines while it runs.

Patch sizes are given in the model's metres (`anysat` counts pixels at each modality's nominal GSD, e.g. 30 m for
`l7`). A store at another pixel size (the Landsat 7 scene at 28.5 m) is read with the same patch in pixels: the
loader gets `patch_size * store_res / model_res` metres of the store's ground.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import fsspec
import numpy as np
import torch

from anysat.model import AnySat
from pipeline.errors import StoreError
from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches, resolve_dataset
from pipeline.load.batches import read_stats_json
from pipeline.progress import Progress

__all__ = ["ModelRef", "StoreEmbeddings", "auto_patch_size", "embed_store", "load_encoder", "random_twin", "store_mapping"]

_ALIASES = {"s1": ("s1-asc", "s1-des")}  # store group -> model keys it may feed when the model has no such key


@dataclass(frozen=True)
class ModelRef:
    """Where an encoder came from: registry name and version (empty for a directory), its run, the URI given."""

    uri: str
    name: str = ""
    version: str = ""
    run_id: str = ""


def load_encoder(spec: str, *, tracking_uri: str | None = None) -> tuple[AnySat, ModelRef]:
    """An encoder from `models:/<name>@<alias>`, `models:/<name>/<version>`, a checkpoint or a saved model dir.

    Raises:
        ValueError: `spec` is neither a registry URI nor a directory holding an encoder.
        FileNotFoundError: The directory has no `config.json`/`model.safetensors` (nor `student/`).
    """
    if spec.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        from modelops.registry import from_registry

        name, sep, alias = spec.removeprefix("models:/").partition("@")
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if sep:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.partition("/")
            mv = client.get_model_version(name, number)
        model = from_registry(f"models:/{name}/{mv.version}", tracking_uri=tracking_uri)
        return model.eval(), ModelRef(spec, name, str(mv.version), str(mv.run_id or ""))
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"--model must be a registry URI (models:/<name>@<alias>) or a model directory, got {spec!r}")
    for candidate in (path, path / "student"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return AnySat.load(candidate).eval(), ModelRef(str(path))
    raise FileNotFoundError(f"{path} holds no encoder (config.json + model.safetensors, or a checkpoint's student/)")


def random_twin(model: AnySat, *, seed: int = 0) -> AnySat:
    """The same architecture at random initialisation, from a fixed seed (the evaluation's baseline)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return AnySat(model.config).eval()
    finally:
        torch.random.set_rng_state(state)


def store_mapping(groups: Sequence[str], model_keys: Sequence[str], given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Store group -> model key: `given`, else each group the model knows (and `s1` -> `s1-asc`/`s1-des`).

    Raises:
        StoreError: A group the model cannot take, or a mapping naming a group or key that does not exist.
    """
    if given:
        bad = {g: k for g, k in given.items() if g not in groups or k not in model_keys}
        if bad:
            raise StoreError(f"--map {bad}: store groups are {sorted(groups)}, model keys {sorted(model_keys)}")
        return dict(given)
    out = {}
    for group in groups:
        key = group if group in model_keys else next((k for k in _ALIASES.get(group, ()) if k in model_keys), "")
        if not key:
            raise StoreError(f"the model has no modality for store group {group!r} (model keys: {sorted(model_keys)}); "
                             "pass --map group=key")  # fmt: skip
        out[group] = key
    return out


def _group_res(url: str, group: str, storage_options: Mapping[str, Any] | None) -> float:
    from pipeline.store.shards import StoreLayout, read_index

    first = sorted(str(u) for u in read_index(StoreLayout(url, storage_options=dict(storage_options or {})))["url"])[0]
    fs, root = fsspec.core.url_to_fs(first, **dict(storage_options or {}))
    return float(json.loads(fs.cat_file(f"{root.rstrip('/')}/{group}/zarr.json"))["attributes"]["res_m"])


def auto_patch_size(url: str, keys: Mapping[str, str], model: AnySat,
                    storage_options: Mapping[str, Any] | None = None) -> int:  # fmt: skip
    """The patch size (model metres, a multiple of 10) cutting a chip into 4x4 patches, else the fewest above 4.

    Raises:
        StoreError: No multiple of 10 m divides the chip into 4 to 64 patches per side (pass --patch-size).
    """
    from pipeline.store.shards import StoreLayout, read_index

    group, key = next(iter(keys.items()))
    first = sorted(str(u) for u in read_index(StoreLayout(url, storage_options=dict(storage_options or {})))["url"])[0]
    fs, root = fsspec.core.url_to_fs(first, **dict(storage_options or {}))
    width = json.loads(fs.cat_file(f"{root.rstrip('/')}/{group}/data/zarr.json"))["shape"][-1]
    extent = width * model.config.table[key].res_m
    for n in range(4, 65):
        p = extent / n
        if abs(p - round(p)) < 1e-6 and round(p) % 10 == 0:
            return int(round(p))
    raise StoreError(f"no patch size (multiple of 10 m) cuts the {extent:g} m {key} tiles into 4..64 patches per "
                     "side; pass --patch-size")  # fmt: skip


@dataclass
class StoreEmbeddings:
    """Per chip, in one order: ids, tile embeddings by encoder name, raw features, valid share, dense embeddings."""

    chip_ids: list[str]
    tiles: dict[str, np.ndarray]
    raw: np.ndarray
    valid_fraction: np.ndarray
    dense: dict[str, np.ndarray] = field(default_factory=dict)  # chip id -> [n, n, D] patch tokens (first model)
    patch_size: int = 0
    mapping: dict[str, str] = field(default_factory=dict)


def _raw_features(x: Mapping[str, torch.Tensor], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over valid pixel-dates of each chip, and the valid share of its first date."""
    feats, share = [], None
    for key in keys:
        data, valid = x[key], x[f"{key}_valid"].float()  # [B, T, C, H, W], [B, T, H, W]
        w = valid[:, :, None]
        n = w.sum(dim=(1, 3, 4)).clamp_min(1.0)
        mean = (data * w).sum(dim=(1, 3, 4)) / n
        var = (((data - mean[:, None, :, None, None]) ** 2) * w).sum(dim=(1, 3, 4)) / n
        feats += [mean, var.sqrt()]
        first = valid[:, 0].mean(dim=(1, 2))
        share = first if share is None else torch.minimum(share, first)
    assert share is not None
    return torch.cat(feats, dim=1).numpy(), share.numpy()


def embed_store(url: str, models: Mapping[str, AnySat], *, patch_size: int, batch_size: int = 32,
                mapping: Mapping[str, str] | None = None, dense: bool = False,
                storage_options: Mapping[str, Any] | None = None, progress: TextIO | None = sys.stderr,
                on_batch: Callable[[dict[str, Any]], None] | None = None) -> StoreEmbeddings:  # fmt: skip
    """Embed every current chip of the store at `url` with each of `models` (see the module docstring).

    Args:
        url: Dataset root written by jobs/ingest.py.
        models: Name -> encoder (all share one architecture's modalities; the first one's dense tokens are kept).
        patch_size: Patch size in the model's metres; 0 = `auto_patch_size`.
        batch_size: Chips per forward pass.
        mapping: Store group -> model key (default: `store_mapping`).
        dense: Keep the first model's patch tokens [n, n, D] of every chip.
        progress: Where the step lines go (None: silent).
        on_batch: Called with every batch (e.g. for dense exports that stream).

    Raises:
        StoreError: The store cannot be read, a group has no model key, or the patch does not tile the chips.
    """
    first = next(iter(models.values()))
    table = first.config.table
    groups = sorted(read_stats_json(url, storage_options=storage_options))
    keys = store_mapping(groups, list(table), mapping)
    ratios = {g: _group_res(url, g, storage_options) / table[k].res_m for g, k in keys.items()}
    if max(ratios.values()) - min(ratios.values()) > 1e-6:
        raise StoreError(f"store groups have different pixel sizes relative to the model's: {ratios}; embed one group "
                         "at a time with --map")  # fmt: skip
    if patch_size <= 0:
        patch_size = auto_patch_size(url, keys, first, storage_options)
    store_patch = patch_size * next(iter(ratios.values()))
    source = DatasetSource(url, modalities=keys)
    config = LoaderConfig((source,), batch_size=batch_size, patch_sizes_m=(store_patch,),  # type: ignore[arg-type]
                          shuffle_buffer=0, drop_last=False)  # fmt: skip
    resolved = resolve_dataset(source, config, storage_options=storage_options)
    total = math.ceil(sum(resolved.shard_sizes) / batch_size)
    bar = None if progress is None else Progress("embed step", total, out=progress, every=0.1, min_interval_s=5.0)
    ids: list[str] = []
    tiles: dict[str, list[np.ndarray]] = {n: [] for n in models}
    raw, share, kept = [], [], {}
    for k, batch in enumerate(iter_batches(config, storage_options=storage_options), start=1):
        x = {key: v for key, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.no_grad():
            for j, (name, model) in enumerate(models.items()):
                patches = model(x, patch_size=patch_size, output="patch")  # [B, n, n, D]
                tiles[name].append(patches.mean(dim=(1, 2)).numpy())
                if dense and j == 0:
                    kept.update(zip(batch["chip_id"], patches.numpy(), strict=True))
        r, s = _raw_features(x, list(keys.values()))
        raw.append(r)
        share.append(s)
        ids += list(batch["chip_id"])
        if on_batch is not None:
            on_batch(batch)
        if bar is not None:
            bar.update(k)
    if not ids:
        raise StoreError(f"{url} has no current chip to embed")
    return StoreEmbeddings(ids, {n: np.concatenate(v) for n, v in tiles.items()}, np.concatenate(raw),
                           np.concatenate(share), kept, patch_size, keys)  # fmt: skip
