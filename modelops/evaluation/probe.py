"""Probes of frozen embeddings: linear (logistic regression), kNN (cosine) and a random forest (raw baselines).

Every probe is fitted on the training chips only: features are standardised with the training mean and std,
and hyper-parameters (the inverse regularisation C of the logistic regression, k of the kNN) are chosen by
grouped cross-validation over the training blocks (`groups`, e.g. `block_ids`), so no fold ever validates on a
block it trained on and the test blocks are never looked at before the final score. The score is balanced
accuracy (the mean per-class recall over the classes present in the test set), because land-cover classes are
very unequal (one class can be two thirds of the chips); per-class F1 and the confusion matrix come with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

__all__ = ["ProbeResult", "forest_probe", "knn_probe", "linear_probe"]

DEFAULT_CS = (0.01, 0.1, 1.0)
DEFAULT_KS = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class ProbeResult:
    """Test-set scores of one probe.

    Attributes:
        name: `linear`, `knn` or `forest`.
        balanced_accuracy: Mean recall over the classes present in the test labels.
        per_class_f1: F1 per class label (classes of train or test).
        confusion: [n_classes, n_classes] counts, rows = true class, columns = predicted, in `classes` order.
        classes: Class labels, sorted.
        params: The chosen hyper-parameter(s) and their cross-validated scores.
        n_train, n_test: Chips on each side.
    """

    name: str
    balanced_accuracy: float
    per_class_f1: dict[Any, float]
    confusion: np.ndarray
    classes: tuple[Any, ...]
    params: dict[str, Any] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (class labels as strings)."""
        return {"name": self.name, "balanced_accuracy": self.balanced_accuracy,
                "per_class_f1": {str(k): v for k, v in self.per_class_f1.items()},
                "confusion": self.confusion.tolist(), "classes": [str(c) for c in self.classes],
                "params": self.params, "n_train": self.n_train, "n_test": self.n_test}  # fmt: skip


def _check(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, test_y: np.ndarray,
           groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    tx, ex = np.asarray(train_X, dtype=np.float64), np.asarray(test_X, dtype=np.float64)
    ty, ey = np.asarray(train_y), np.asarray(test_y)
    if tx.ndim != 2 or ex.ndim != 2 or tx.shape[1] != ex.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {tx.shape} and {ex.shape}")
    if len(tx) != len(ty) or len(ex) != len(ey):
        raise ValueError("features and labels differ in length")
    if groups is not None and len(groups) != len(tx):
        raise ValueError(f"groups must have one entry per training chip ({len(tx)}), got {len(groups)}")
    if len(np.unique(ty)) < 2:
        raise ValueError("the training chips hold fewer than two classes")
    if not (np.isfinite(tx).all() and np.isfinite(ex).all()):
        raise ValueError("features must be finite")
    return tx, ty, ex, ey


def _standardise(tx: np.ndarray, ex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(tx)
    return scaler.transform(tx), scaler.transform(ex)


def _score(pred: np.ndarray, y: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fold can predict a class it does not contain
        return float(balanced_accuracy_score(y, pred))


def _choose(make: Callable[[Any], Any], values: Sequence[Any], x: np.ndarray, y: np.ndarray,
            groups: np.ndarray | None, n_splits: int) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """The value whose model scores the best mean balanced accuracy over grouped folds of the training chips."""
    if groups is None or len(values) == 1:
        return values[0], {}
    folds = min(n_splits, len(np.unique(groups)))
    if folds < 2:
        return values[0], {}
    scores: dict[str, float] = {}
    for v in values:
        fold_scores = []
        for fit_i, val_i in GroupKFold(n_splits=folds).split(x, y, groups):
            if len(np.unique(y[fit_i])) < 2:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = make(v).fit(x[fit_i], y[fit_i])
            fold_scores.append(_score(model.predict(x[val_i]), y[val_i]))
        scores[str(v)] = float(np.mean(fold_scores)) if fold_scores else float("nan")
    best = max(values, key=lambda v: (np.nan_to_num(scores[str(v)], nan=-1.0), -values.index(v)))
    return best, scores


def _result(name: str, model: Any, ex: np.ndarray, ey: np.ndarray, ty: np.ndarray,
            params: dict[str, Any]) -> ProbeResult:  # fmt: skip
    pred = model.predict(ex)
    classes = tuple(np.unique(np.concatenate([ty, ey])).tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = f1_score(ey, pred, labels=list(classes), average=None, zero_division=0)
    return ProbeResult(name, _score(pred, ey), {c: float(s) for c, s in zip(classes, f1, strict=True)},
                       confusion_matrix(ey, pred, labels=list(classes)), classes, params, len(ty), len(ey))  # fmt: skip


def linear_probe(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, test_y: np.ndarray,
                 groups: np.ndarray | None = None, *, Cs: Sequence[float] = DEFAULT_CS, n_splits: int = 3,
                 max_iter: int = 500) -> ProbeResult:  # fmt: skip
    """Class-balanced multinomial logistic regression on standardised features.

    Args:
        train_X, train_y: Training embeddings [N, D] and labels.
        test_X, test_y: Held-out embeddings and labels (used only for the final score).
        groups: Spatial block of every training chip; C is chosen by grouped k-fold over them
            (None: the first of `Cs`).
        Cs: Candidate inverse regularisation strengths.
        n_splits: Folds (fewer when there are fewer blocks).
    """
    tx, ty, ex, ey = _check(train_X, train_y, test_X, test_y, groups)
    tx, ex = _standardise(tx, ex)

    def make(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, class_weight="balanced", max_iter=max_iter)

    c, cv = _choose(make, list(Cs), tx, ty, groups, n_splits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make(c).fit(tx, ty)
    return _result("linear", model, ex, ey, ty, {"C": c, "cv_balanced_accuracy": cv})


def knn_probe(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, test_y: np.ndarray,
              groups: np.ndarray | None = None, *, ks: Sequence[int] = DEFAULT_KS,
              n_splits: int = 5) -> ProbeResult:  # fmt: skip
    """k-nearest neighbours with cosine distance on standardised features, k chosen on the training blocks."""
    tx, ty, ex, ey = _check(train_X, train_y, test_X, test_y, groups)
    tx, ex = _standardise(tx, ex)
    ks = [k for k in ks if k <= len(tx)] or [1]

    def make(k: int) -> KNeighborsClassifier:
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")

    k, cv = _choose(make, ks, tx, ty, groups, n_splits)
    return _result("knn", make(k).fit(tx, ty), ex, ey, ty, {"k": k, "cv_balanced_accuracy": cv})


def forest_probe(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, test_y: np.ndarray,
                 *, n_estimators: int = 300, seed: int = 0) -> ProbeResult:  # fmt: skip
    """Class-balanced random forest (a strong non-linear baseline on raw pixels; no tuning)."""
    tx, ty, ex, ey = _check(train_X, train_y, test_X, test_y, None)
    model = RandomForestClassifier(n_estimators=n_estimators, class_weight="balanced", random_state=seed,
                                   n_jobs=1).fit(tx, ty)  # fmt: skip
    return _result("forest", model, ex, ey, ty, {"n_estimators": n_estimators})
