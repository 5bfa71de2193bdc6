"""Evaluate an encoder on a labelled store: probes of its frozen embeddings against raw pixels and random init.

`evaluate(EvalConfig(model=..., store=...))`:

1. loads the encoder (`models:/<name>@<alias>`, `…/<version>` or a directory) and the same architecture at
   random init from a fixed seed (`modelops.embeddings.random_twin`);
2. embeds every chip of the store with both (`modelops.embeddings.embed_store`) and computes the raw-pixel
   features (per-band mean and std of the valid pixels);
3. keeps the labelled chips: label coverage >= `min_label_coverage`, valid pixels >= `min_valid`, majority
   class share >= `min_purity`; the target is the majority class (`pipeline.store.labels`);
4. splits them by spatial blocks of `block_chips` x `block_chips` chips (`modelops.evaluation.block_split`,
   hash-chosen blocks, seed `seed`, `test_fraction` of the blocks held out; never a random split of
   neighbouring chips), and fits on the training blocks only, with hyper-parameters chosen by grouped
   cross-validation over those blocks: a class-balanced logistic regression (`linear_probe`) and a cosine kNN
   (`knn_probe`), for each of raw pixels, random init and the encoder; effective rank (RankMe) of each
   embedding matrix;
5. logs one MLflow run (tags `model_uri`, `model_name`, `model_version`, `source_run`, `store`,
   `store_manifest`, `commit`; every score as a metric; the confusion matrix PNG and the report JSON) and, for
   a registered model, writes the scores as `eval.*` tags on the model version (what `promote` gates on).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from anysat.metrics import effective_rank
from modelops.embeddings import ModelRef, StoreEmbeddings, embed_store, load_encoder, random_twin
from modelops.evaluation import ProbeResult, block_ids, block_split, knn_probe, linear_probe
from modelops.evaluation.probe import DEFAULT_CS
from pipeline.errors import PipelineError
from pipeline.store.labels import read_labels
from pipeline.store.shards import StoreLayout, manifest_versions, open_shard, read_index

__all__ = ["EVAL_METRIC", "EvalConfig", "EvalReport", "ProbeSplit", "evaluate", "format_table", "probe_split"]

EVAL_METRIC = "eval.balanced_accuracy"  # the model-version tag promotion compares (encoder, linear probe)
FEATURES = {"raw": "raw pixels", "random": "random init", "model": "pretrained"}


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation (see the module docstring for what each threshold selects)."""

    model: str
    store: str
    patch_size: int = 0  # model metres; 0 = 4x4 patches per chip (modelops.embeddings.auto_patch_size)
    batch_size: int = 64
    min_label_coverage: float = 0.95
    min_valid: float = 0.95
    min_purity: float = 0.6
    block_chips: int = 4
    test_fraction: float = 0.3
    seed: int = 0
    cs: tuple[float, ...] = DEFAULT_CS
    cv_folds: int = 3
    tracking_uri: str = ""
    experiment: str = "anysat-evaluate"
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("min_label_coverage", "min_valid", "min_purity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.cs or min(self.cs) <= 0 or self.cv_folds < 2:
            raise ValueError(f"cs must be positive regularisation strengths and cv_folds >= 2, got {self.cs}, "
                             f"{self.cv_folds}")  # fmt: skip
        if self.block_chips < 1 or self.batch_size < 1 or self.patch_size < 0:
            raise ValueError("block_chips and batch_size must be positive, patch_size >= 0 (0 = automatic)")


@dataclass
class EvalReport:
    """Scores of one evaluation: `probes[features][probe]`, ranks by features, the data it used, MLflow ids."""

    model: ModelRef
    store: str
    store_manifest: str
    commit: str
    n_chips: int
    n_train: int
    n_test: int
    classes: dict[int, str]
    probes: dict[str, dict[str, ProbeResult]]
    ranks: dict[str, float]
    patch_size: int = 0
    run_id: str = ""

    @property
    def score(self) -> float:
        """The encoder's linear-probe balanced accuracy (the promotion metric)."""
        return self.probes["model"]["linear"].balanced_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "store": self.store, "store_manifest": self.store_manifest,
                "commit": self.commit, "n_chips": self.n_chips, "n_train": self.n_train, "n_test": self.n_test,
                "classes": {str(k): v for k, v in self.classes.items()}, "ranks": self.ranks, "run_id": self.run_id,
                "patch_size": self.patch_size,
                "probes": {f: {p: r.to_dict() for p, r in d.items()} for f, d in self.probes.items()}}  # fmt: skip


def format_table(report: EvalReport) -> str:
    """The probe table: one row per features and probe, balanced accuracy and effective rank."""
    lines = [f"{'features':<12} {'probe':<7} {'balanced acc':>12} {'eff. rank':>9}"]
    for key, label in FEATURES.items():
        for probe, result in report.probes[key].items():
            rank = f"{report.ranks[key]:9.1f}" if key in report.ranks else f"{'-':>9}"
            lines.append(f"{label:<12} {probe:<7} {result.balanced_accuracy:12.3f} {rank}")
    lines.append(f"{report.n_train} train / {report.n_test} test chips of {report.n_chips}, spatial blocks; "
                 f"classes: {', '.join(report.classes.values())}")  # fmt: skip
    return "\n".join(lines)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _centres(config: EvalConfig, chip_ids: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """Chip centres in the store's CRS (metres) and the chip width, from the shards' chip tables."""
    layout = StoreLayout(config.store, storage_options=dict(config.storage_options))
    bounds: dict[str, np.ndarray] = {}
    for url in read_index(layout)["url"]:
        table = open_shard(str(url), "chips", storage_options=config.storage_options)
        bounds.update(zip((str(c) for c in table["chip"].values), table["bounds"].values, strict=True))
    b = np.stack([bounds[c] for c in chip_ids])
    return (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, float(b[0, 2] - b[0, 0])


@dataclass(frozen=True)
class ProbeSplit:
    """The labelled chips a probe uses and their spatial-block split (see the module docstring, steps 3-4).

    Attributes:
        keep: Mask over the embedded chips: the labelled chips that pass the selection.
        y: Majority class of every kept chip.
        train, test: Masks over the kept chips (whole spatial blocks).
        groups: Spatial block of every training chip (the probes' cross-validation groups).
    """

    keep: np.ndarray
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    groups: np.ndarray

    def linear(self, features: np.ndarray, config: EvalConfig) -> ProbeResult:
        """The class-balanced linear probe of `features` (one row per kept chip), C chosen on the training blocks."""
        return linear_probe(features[self.train], self.y[self.train], features[self.test], self.y[self.test],
                            self.groups, Cs=config.cs, n_splits=config.cv_folds)  # fmt: skip


def probe_split(config: EvalConfig, emb: StoreEmbeddings, labels: Any) -> ProbeSplit:
    """Select the labelled chips of `emb` (thresholds of `config`) and split them by spatial blocks.

    Raises:
        PipelineError: Too few labelled chips, classes or blocks to probe.
    """
    lab = labels.sel(chip=emb.chip_ids)
    purity = lab["fractions"].values.max(axis=1) if lab.sizes["class"] else np.zeros(len(emb.chip_ids))
    keep = ((lab["coverage"].values >= config.min_label_coverage) & (emb.valid_fraction >= config.min_valid)
            & (purity >= config.min_purity) & (lab["majority"].values > 0))  # fmt: skip
    ids = [c for c, k in zip(emb.chip_ids, keep, strict=True) if k]
    y = lab["majority"].values[keep]
    if len(ids) < 10 or len(np.unique(y)) < 2:
        raise PipelineError(f"{config.store}: {len(ids)} labelled chips of {len(emb.chip_ids)} pass the selection "
                            f"(coverage >= {config.min_label_coverage}, valid >= {config.min_valid}, purity >= "
                            f"{config.min_purity}) with {len(np.unique(y))} classes; a probe needs >= 10 and >= 2")  # fmt: skip
    x_m, y_m, width = _centres(config, ids)
    block_m = config.block_chips * width
    try:
        test = block_split(x_m, y_m, block_m, config.test_fraction, config.seed)
    except ValueError as err:
        raise PipelineError(f"{config.store}: no spatial-block split possible ({err})") from err
    train = ~test
    if len(np.unique(y[train])) < 2:
        raise PipelineError(f"the training blocks hold one class only ({np.unique(y[train]).tolist()}); change seed "
                            "or block_chips")  # fmt: skip
    return ProbeSplit(keep, y, train, test, block_ids(x_m[train], y_m[train], block_m))


def evaluate(config: EvalConfig, *, progress: TextIO | None = sys.stderr) -> EvalReport:
    """Run the evaluation of the module docstring and log it to MLflow when `tracking_uri` is set.

    `progress` receives the embedding's step lines (None: silent); `format_table(report)` is the printed table.

    Raises:
        PipelineError: Too few labelled chips, classes or blocks to probe.
        StoreError: The store has no labels or cannot be read.
    """
    model, ref = load_encoder(config.model, tracking_uri=config.tracking_uri or None)
    labels = read_labels(config.store, storage_options=config.storage_options)
    emb = embed_store(config.store, {"model": model, "random": random_twin(model, seed=config.seed)},
                      patch_size=config.patch_size, batch_size=config.batch_size,
                      storage_options=config.storage_options, progress=progress)  # fmt: skip
    split = probe_split(config, emb, labels)
    keep, train, test = split.keep, split.train, split.test
    features = {"raw": emb.raw[keep], "random": emb.tiles["random"][keep], "model": emb.tiles["model"][keep]}
    probes: dict[str, dict[str, ProbeResult]] = {}
    for name, feats in features.items():
        probes[name] = {"linear": split.linear(feats, config),
                        "knn": knn_probe(feats[train], split.y[train], feats[test], split.y[test], split.groups,
                                         n_splits=config.cv_folds)}  # fmt: skip
    ranks = {n: effective_rank(torch.from_numpy(features[n])) for n in ("random", "model")}
    classes = {int(v): str(n) for v, n in zip(labels["class"].values, labels["class_name"].values, strict=True)}
    manifests = manifest_versions(StoreLayout(config.store, storage_options=dict(config.storage_options)))
    report = EvalReport(ref, config.store, ",".join(manifests), _commit(), len(emb.chip_ids), int(train.sum()),
                        int(test.sum()), classes, probes, ranks, emb.patch_size)  # fmt: skip
    if config.tracking_uri:
        report.run_id = _log(config, report)
    return report


def _confusion_png(result: ProbeResult, classes: Mapping[int, str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [classes.get(int(c), str(c)) for c in result.classes]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.7 * len(names)), dpi=100)
    ax.imshow(result.confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(result.confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _log(config: EvalConfig, report: EvalReport) -> str:
    """One MLflow run with every score, and the `eval.*` tags on the registered model version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_experiment(config.experiment)
    ref = report.model
    tags = {"model_uri": ref.uri, "model_name": ref.name, "model_version": ref.version, "source_run": ref.run_id,
            "store": report.store, "store_manifest": report.store_manifest, "commit": report.commit}  # fmt: skip
    name = f"evaluate-{ref.name}-v{ref.version}" if ref.name else "evaluate"
    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params({k: v for k, v in asdict(config).items() if k not in ("storage_options", "tracking_uri")})
        mlflow.log_params({"n_chips": report.n_chips, "n_train": report.n_train, "n_test": report.n_test,
                           "patch_size_used": report.patch_size})
        metrics = {f"{f}_{p}_balanced_accuracy": r.balanced_accuracy for f, d in report.probes.items()
                   for p, r in d.items()}  # fmt: skip
        metrics |= {f"{f}_effective_rank": v for f, v in report.ranks.items()}
        best = report.probes["model"]["linear"]
        metrics |= {f"model_linear_f1_{report.classes.get(int(c), c)}": v for c, v in best.per_class_f1.items()}
        mlflow.log_metrics(metrics)
        for key in ("model", "random"):
            png = _confusion_png(report.probes[key]["linear"], report.classes,
                                 f"{FEATURES[key]}: linear probe, balanced accuracy "
                                 f"{report.probes[key]['linear'].balanced_accuracy:.3f}")  # fmt: skip
            _log_bytes(png, f"confusion_{key}_linear.png")
        mlflow.log_text(json.dumps(report.to_dict(), indent=2, sort_keys=True), "evaluation.json")
        mlflow.log_text(format_table(report), "probe_table.txt")
        run_id = str(run.info.run_id)
    if ref.name:
        client = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)
        version_tags = {
            EVAL_METRIC: f"{report.score:.6f}",
            "eval.knn_balanced_accuracy": f"{report.probes['model']['knn'].balanced_accuracy:.6f}",
            "eval.random_init_balanced_accuracy": f"{report.probes['random']['linear'].balanced_accuracy:.6f}",
            "eval.raw_pixels_balanced_accuracy": f"{report.probes['raw']['linear'].balanced_accuracy:.6f}",
            "eval.effective_rank": f"{report.ranks['model']:.3f}", "eval.run_id": run_id, "eval.store": report.store,
            "eval.store_manifest": report.store_manifest, "eval.commit": report.commit,
            "eval.n_test": str(report.n_test),
        }  # fmt: skip
        for key, value in version_tags.items():
            client.set_model_version_tag(ref.name, ref.version, key, value)
    return run_id


def _log_bytes(data: bytes, name: str) -> None:
    import mlflow

    with tempfile.TemporaryDirectory(prefix="anysat-eval-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path))
