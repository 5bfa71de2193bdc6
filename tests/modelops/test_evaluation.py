"""Spatial-block splits and probes on real labelled Landsat 7 tiles and on controlled features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from modelops.evaluation import block_ids, block_split, forest_probe, grid_block_split, knn_probe, linear_probe

LANDCOVER = Path(__file__).resolve().parents[3] / "shared" / "data" / "landsat7-nc-landcover"


def test_block_split_keeps_blocks_whole_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 10_000, 2000), rng.uniform(0, 5_000, 2000)
    test = block_split(x, y, 1000.0, 0.3, seed=7)
    assert np.array_equal(test, block_split(x, y, 1000.0, 0.3, seed=7))
    assert not np.array_equal(test, block_split(x, y, 1000.0, 0.3, seed=8))
    ids = block_ids(x, y, 1000.0)
    assert len(np.unique(ids)) == 50
    for b in np.unique(ids):  # every block is entirely train or entirely test
        assert len(np.unique(test[ids == b])) == 1
    n_test_blocks = len(np.unique(ids[test]))
    assert n_test_blocks == 15  # ceil(0.3 * 50)
    assert 0.2 < test.mean() < 0.4


def test_grid_block_split_and_errors() -> None:
    rows, cols = np.divmod(np.arange(100), 10)
    test = grid_block_split(rows, cols, 5, 0.25, seed=0)  # 4 blocks of 5x5 tiles, one held out
    assert test.sum() == 25
    r, c = rows[test], cols[test]
    assert r.max() - r.min() == 4 and c.max() - c.min() == 4
    with pytest.raises(ValueError, match="one block"):
        block_split(np.zeros(3), np.zeros(3), 10.0)
    with pytest.raises(ValueError, match="test_fraction"):
        block_split(np.arange(3.0), np.arange(3.0), 1.0, test_fraction=1.0)


def test_probes_separate_informative_from_random_features() -> None:
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 3, n)
    groups = np.arange(n) // 20
    informative = np.eye(3)[y] * 2.0 + rng.normal(0, 0.5, (n, 3))
    noise = rng.normal(0, 1, (n, 8))
    tr, te = groups < 22, groups >= 22
    good = linear_probe(np.hstack([informative, noise])[tr], y[tr], np.hstack([informative, noise])[te], y[te],
                        groups[tr])  # fmt: skip
    bad = linear_probe(noise[tr], y[tr], noise[te], y[te], groups[tr])
    assert good.balanced_accuracy > 0.9 and bad.balanced_accuracy < 0.5
    assert good.params["C"] in (0.01, 0.1, 1.0) and good.params["cv_balanced_accuracy"]
    assert good.confusion.sum() == te.sum() and good.confusion.shape == (3, 3)
    assert set(good.per_class_f1) == {0, 1, 2} and min(good.per_class_f1.values()) > 0.8
    knn = knn_probe(informative[tr], y[tr], informative[te], y[te], groups[tr])
    assert knn.balanced_accuracy > 0.9 and knn.params["k"] in (1, 3, 5, 10, 20)
    assert forest_probe(noise[tr], y[tr], noise[te], y[te]).balanced_accuracy < 0.5


@pytest.mark.skipif(not LANDCOVER.is_dir(), reason="the shared Landsat 7 land-cover folder is not beside the repository")
def test_a_linear_probe_on_real_landsat_pixels_beats_chance() -> None:
    bands = []
    for name in ("10", "20", "30", "40", "50", "70"):
        with rasterio.open(LANDCOVER / f"lsat7_2000_{name}.tif") as src:
            bands.append(src.read(1))
    with rasterio.open(LANDCOVER / "strata.tif") as src:
        labels = src.read(1)
    img = np.stack(bands)
    valid = (img != -99999).all(0) & (labels > 0)
    rows, cols = np.nonzero(valid)
    pick = np.random.default_rng(0).choice(len(rows), 6000, replace=False)
    rows, cols = rows[pick], cols[pick]
    x, y = img[:, rows, cols].T, labels[rows, cols]
    test = block_split(cols * 28.5, rows * 28.5, 1500.0, 0.3, seed=0)
    groups = block_ids(cols * 28.5, rows * 28.5, 1500.0)
    res = linear_probe(x[~test], y[~test], x[test], y[test], groups[~test])
    chance = 1 / len(np.unique(y[test]))
    assert res.balanced_accuracy > chance + 0.15, res.to_dict()
