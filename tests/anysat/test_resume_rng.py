"""After a resume, DDP ranks draw their own masks: rank 0 continues exactly, the others never replay rank 0's."""

from __future__ import annotations

from pathlib import Path

import torch

from anysat import AnySat, AnySatConfig
from anysat.jepa import Jepa, JepaConfig
from anysat.jepa.masks import sample_masks
from anysat.train import OptimConfig, Trainer, load_checkpoint, save_checkpoint


def _trainer(rank: int) -> Trainer:
    """A rank's trainer as the pretraining job builds it: the same weights, mask seed = JEPA seed + rank."""
    torch.manual_seed(0)
    model = AnySat(AnySatConfig(size="tiny", modalities=("s2",)))
    return Trainer(Jepa(model, JepaConfig(predictor_depth=1, predictor_heads=4, seed=7 + rank)),
                   OptimConfig(total_steps=4, warmup_steps=1))  # fmt: skip


def _draws(t: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    masks = sample_masks(6, 4, t.jepa.config.masks, generator=t.jepa.generator)
    return torch.cat([masks.context.flatten(), masks.targets.flatten()]), torch.rand(8)


def test_ranks_draw_different_masks_after_a_resume(tmp_path: Path) -> None:
    saved = _trainer(0)
    for _ in range(3):
        sample_masks(6, 4, saved.jepa.config.masks, generator=saved.jepa.generator)  # rank 0 advanced its streams
    saved.state.step = 3
    save_checkpoint(saved, tmp_path / "ckpt")
    expected = _draws(saved)  # what rank 0 draws next, uninterrupted
    draws = []
    for r in range(3):  # each DDP rank in its own process: build, restore, draw (torch's stream is per process)
        t = _trainer(r)
        load_checkpoint(t, tmp_path / "ckpt", rank=r)
        draws.append(_draws(t))
    assert all(torch.equal(a, b) for a, b in zip(draws[0], expected, strict=True))  # rank 0: exact continuation
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(draws[i][0], draws[j][0]), f"ranks {i} and {j} draw the same masks"
            assert not torch.equal(draws[i][1], draws[j][1]), f"ranks {i} and {j} share the torch stream"
    again = _trainer(1)
    load_checkpoint(again, tmp_path / "ckpt", rank=1)
    assert torch.equal(_draws(again)[0], draws[1][0])  # a rank's streams are reproducible (seed, rank, step)
