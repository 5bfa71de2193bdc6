"""Evaluation of frozen embeddings on labelled chips: spatial-block splits and probes (numpy + scikit-learn).

No torch here: callers embed chips with the encoder and pass arrays. `block_split` / `grid_block_split` decide
which chips are held out (whole spatial blocks, never a random split of neighbouring chips), `block_ids` gives
the groups that the probes' cross-validation keeps together, and `linear_probe`, `knn_probe`, `forest_probe`
return a `ProbeResult` (balanced accuracy, per-class F1, confusion matrix, chosen hyper-parameter).
"""

from modelops.evaluation.probe import ProbeResult, forest_probe, knn_probe, linear_probe
from modelops.evaluation.split import block_ids, block_split, grid_block_split

__all__ = ["ProbeResult", "block_ids", "block_split", "forest_probe", "grid_block_split", "knn_probe",
           "linear_probe"]
