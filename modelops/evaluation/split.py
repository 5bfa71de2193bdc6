"""Deterministic spatial-block train/test splits.

Neighbouring chips are correlated (same field, same forest, overlapping context), so a random split of chips
leaks the test set into the training set and flatters every probe. Here the plane is cut into square blocks,
every chip belongs to the block holding its centre, and whole blocks go to the test set.

Which blocks: each block's integer coordinates and the seed are hashed (BLAKE2b, so the choice is the same on
every machine, Python version and run); blocks are sorted by hash and the first ones are taken until at least
`test_fraction` of the blocks is held out. The same seed and block size always give the same split; another
seed gives another one. Chips of one block are never split between train and test.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["block_ids", "block_split", "grid_block_split"]


def _block_coords(x_m: np.ndarray, y_m: np.ndarray, block_m: float) -> np.ndarray:
    x = np.asarray(x_m, dtype=np.float64)
    y = np.asarray(y_m, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x_m and y_m must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    if not block_m > 0:
        raise ValueError(f"block_m must be > 0, got {block_m}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("chip centres must be finite")
    return np.stack([np.floor(x / block_m), np.floor(y / block_m)], axis=1).astype(np.int64)


def block_ids(x_m: np.ndarray, y_m: np.ndarray, block_m: float) -> np.ndarray:
    """One integer id per chip: the block of `block_m` metres (or grid units) that holds its centre.

    Use it as `groups` for grouped cross-validation, so that a fold never splits a block.
    """
    coords = _block_coords(x_m, y_m, block_m)
    _, ids = np.unique(coords, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def _block_hash(bx: int, by: int, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{bx}:{by}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def block_split(x_m: np.ndarray, y_m: np.ndarray, block_m: float, test_fraction: float = 0.3,
                seed: int = 0) -> np.ndarray:  # fmt: skip
    """Boolean mask, True = test chip, holding out whole `block_m` x `block_m` blocks of chip centres.

    Args:
        x_m, y_m: Chip centres in a projected CRS (metres), 1-D, one per chip.
        block_m: Block side, in the units of the centres.
        test_fraction: Share of the occupied blocks held out (rounded up to whole blocks, at least one).
        seed: Chooses the blocks (through a stable hash, see module doc).

    Raises:
        ValueError: Shapes differ, a centre is not finite, `block_m` ≤ 0, `test_fraction` not in (0, 1), or
            fewer than two blocks are occupied (no split is possible).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    coords = _block_coords(x_m, y_m, block_m)
    blocks, inverse = np.unique(coords, axis=0, return_inverse=True)
    if len(blocks) < 2:
        raise ValueError(f"all chips fall in one block of {block_m}; use a smaller block size")
    order = sorted(range(len(blocks)), key=lambda i: _block_hash(int(blocks[i, 0]), int(blocks[i, 1]), seed))
    n_test = min(len(blocks) - 1, max(1, int(np.ceil(test_fraction * len(blocks)))))
    is_test_block = np.zeros(len(blocks), dtype=bool)
    is_test_block[order[:n_test]] = True
    return is_test_block[inverse.reshape(-1)]


def grid_block_split(rows: np.ndarray, cols: np.ndarray, k: int, test_fraction: float = 0.3,
                     seed: int = 0) -> np.ndarray:  # fmt: skip
    """`block_split` on a tile grid: blocks of `k` x `k` tiles of integer (row, col) tile indices."""
    if k < 1:
        raise ValueError(f"k must be >= 1 tile, got {k}")
    return block_split(np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64), float(k),
                       test_fraction, seed)  # fmt: skip
