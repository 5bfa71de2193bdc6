"""Every file the pipeline writes goes through `pipeline.atomic` (a reader never sees half of a file)."""

from __future__ import annotations

import re
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
# In-place writes: an fsspec/builtin open for writing, pathlib writes, pandas/matplotlib/json writing to a target.
_IN_PLACE = re.compile(r"""\.open\([^)]*["'](w|wb|a|ab|x|xb|w\+|r\+)["']|\bopen\([^)]*["'](w|wb|a|ab)["']"""
                       r"""|\.write_(text|bytes)\(|\.to_(parquet|csv|json)\((?!buffer)|\.savefig\((?!buffer)"""
                       r"""|json\.dump\(|\.pipe_file\(""")  # fmt: skip
_ALLOWED = {"atomic.py"}  # the helper itself


def in_place_writes(root: Path) -> list[str]:
    """`file:line: code` of every write in `root` that does not go through `pipeline.atomic`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name in _ALLOWED:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _IN_PLACE.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(root.parent)}:{n}: {line.strip()}")
    return found


def test_every_pipeline_write_is_atomic() -> None:
    assert in_place_writes(PIPELINE) == []


def test_the_guard_finds_an_in_place_write(tmp_path: Path) -> None:
    planted = tmp_path / "pipeline" / "store"
    planted.mkdir(parents=True)
    (planted / "index.py").write_text('with fs.open(f"{root}/shards.parquet", "wb") as f:\n    frame.to_parquet(f)\n')
    assert len(in_place_writes(tmp_path / "pipeline")) == 2
