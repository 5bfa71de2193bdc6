"""`--resume` starts from the latest complete checkpoint: an upload cut short by a killed run is skipped."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from anysat import AnySat, AnySatConfig
from anysat.jepa import Jepa, JepaConfig
from anysat.train import OptimConfig, Trainer, save_checkpoint
from modelops.run_storage import existing_checkpoint, newer_checkpoint, remove_stale_checkpoint
from modelops.pretrain_config import PretrainConfig
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_resume_skips_partial_checkpoint_copies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml",
                      [f"run.storage={tmp_path}", "run.name=r"])  # fmt: skip
    torch.manual_seed(0)
    trainer = Trainer(Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2",))),
                           JepaConfig(predictor_depth=1, predictor_heads=4)), OptimConfig(total_steps=8, warmup_steps=1))  # fmt: skip
    run = tmp_path / "r"
    good = save_checkpoint(trainer, run / "checkpoint_000004")
    assert existing_checkpoint(cfg) == str(good)
    # what a killed upload leaves: a file cut short, then a copy that never got its state.json
    short = run / "checkpoint_000006"
    shutil.copytree(good, short)
    blob = (short / "target.safetensors").read_bytes()
    (short / "target.safetensors").write_bytes(blob[: len(blob) // 2])
    shutil.copytree(good, run / "checkpoint_000008")
    (run / "checkpoint_000008" / "state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="pretrain"):
        assert existing_checkpoint(cfg) == str(good)
    assert "checkpoint_000006 is incomplete (target.safetensors missing or cut short)" in caplog.text
    assert "checkpoint_000008 is incomplete (state.json" in caplog.text
    # a checkpoint written before file sizes were recorded counts as complete when its state parses
    state = json.loads((short / "state.json").read_text())
    del state["files"]
    (short / "state.json").write_text(json.dumps(state))
    assert existing_checkpoint(cfg) == str(short)
    (short / "state.json").write_text(json.dumps(state)[:50])  # a truncated state.json
    assert existing_checkpoint(cfg) == str(good)


def test_a_resumed_ray_run_restores_the_newer_of_rays_checkpoint_and_the_one_resume_found() -> None:
    """Ray Train's reloaded snapshot names the killed driver's last *registered* checkpoint; a complete one it had
    not registered yet is newer and wins (else its steps are redone); within a run Ray's newer one wins."""
    run = "bucket/runs/r"
    assert newer_checkpoint(f"{run}/checkpoint_000004", f"{run}/checkpoint_000006") == f"{run}/checkpoint_000006"
    assert newer_checkpoint(f"{run}/checkpoint_000010", f"{run}/checkpoint_000006") == f"{run}/checkpoint_000010"
    assert newer_checkpoint(f"{run}/checkpoint_000006", f"{run}/checkpoint_000006/") == f"{run}/checkpoint_000006"
    assert newer_checkpoint(None, f"{run}/checkpoint_000006") == f"{run}/checkpoint_000006"
    assert newer_checkpoint(f"{run}/checkpoint_000004", None) == f"{run}/checkpoint_000004"
    assert newer_checkpoint(None, None) is None


def test_a_restarted_run_removes_a_killed_attempts_folder_before_writing_it_again(tmp_path: Path) -> None:
    cfg = load_config(PretrainConfig, ROOT / "configs" / "pretrain-demo.yaml",
                      [f"run.storage={tmp_path}", "run.name=r"])  # fmt: skip
    left = tmp_path / "r" / "checkpoint_000006"  # what a killed attempt wrote of step 6 (never registered)
    left.mkdir(parents=True)
    (left / "optimizer.pt").write_bytes(b"from the killed attempt")
    kept = tmp_path / "r" / "checkpoint_000004"
    kept.mkdir()
    assert remove_stale_checkpoint(cfg, 6) is True and not left.exists() and kept.is_dir()
    assert remove_stale_checkpoint(cfg, 8) is False  # nothing there: nothing to remove
