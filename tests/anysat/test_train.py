"""The torch training runtime: schedule, loop and data position, checkpoints that resume exactly, DDP over gloo.

Batches follow the loader contract (docs/TRAINING.md) and are built in-process from the real BigEarthNet
S2 + S1 pairs, so these tests need neither the store nor Ray.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from anysat import AnySat, AnySatConfig
from anysat.jepa import Jepa, JepaConfig
from anysat.train import OptimConfig, Trainer, fit, load_checkpoint, lr_at, read_state, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples" / "bigearthnet"
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _samples() -> dict[str, torch.Tensor]:
    """The six real S2 + S1 pairs, 20x20 px at 10 m, standardised per band: s2 [6, 10, 20, 20], s1 [6, 2, 20, 20]."""
    s2s, s1s = [], []
    for s2_dir in sorted((SAMPLES / "BigEarthNet-S2-Example").iterdir()):
        suffix = "_".join(s2_dir.name.split("_")[-2:])
        s1_dir = next((SAMPLES / "BigEarthNet-S1-Example").glob(f"*_{suffix}"))
        bands = []
        for b in S2_BANDS:
            a = rasterio.open(next(s2_dir.glob(f"*_{b}.tif"))).read(1).astype(np.float32)
            bands.append(np.kron(a, np.ones((2, 2), np.float32)) if a.shape[0] == 60 else a)
        s2s.append(np.stack(bands)[:, :20, :20])
        s1s.append(np.stack([rasterio.open(next(s1_dir.glob(f"*_{p}.tif"))).read(1) for p in ("VV", "VH")])[:, :20, :20])
    s2, s1 = torch.from_numpy(np.stack(s2s)), torch.from_numpy(np.stack(s1s))
    s2 = (s2 - s2.mean((0, 2, 3), keepdim=True)) / s2.std((0, 2, 3), keepdim=True)
    s1 = (s1 - s1.mean((0, 2, 3), keepdim=True)) / s1.std((0, 2, 3), keepdim=True)
    return {"s2": s2, "s1": s1}


def contract_batch(idx: list[int], data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One batch in the loader contract's format: T = 1 real date, every pixel valid, 40 m patches (a 5x5 grid)."""
    doys = torch.tensor([164, 168, 168, 355, 267, 35])
    out: dict[str, Any] = {"patch_size": 40, "dataset": "bigearthnet", "chip_id": [f"ben-{i}" for i in idx]}
    for key, src in (("s2", "s2"), ("s1-asc", "s1")):
        x = data[src][idx][:, None]  # [B, 1, C, H, W]
        out[key] = x
        out[f"{key}_dates"] = doys[idx][:, None].long()
        out[f"{key}_mask"] = torch.ones(len(idx), 1, dtype=torch.bool)
        out[f"{key}_valid"] = torch.ones(len(idx), 1, x.shape[-2], x.shape[-1], dtype=torch.bool)
    return out


def _epochs(data: dict[str, torch.Tensor], batch_size: int = 2, seed: int = 0):  # noqa: ANN202
    """`batches_for(epoch, skip)`: the six samples shuffled per (seed, epoch), in batches, `skip` left out."""

    def batches_for(epoch: int, skip: int) -> list[dict[str, Any]]:
        order = torch.randperm(6, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        batches = [contract_batch(order[i : i + batch_size], data) for i in range(0, 6 - batch_size + 1, batch_size)]
        return batches[skip:]

    return batches_for


def _trainer(optim: OptimConfig, *, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    model = AnySat(AnySatConfig(size="tiny", modalities=("s2", "s1-asc")))
    return Trainer(Jepa(model, JepaConfig(predictor_depth=1, predictor_heads=4, seed=seed)), optim)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return _samples()


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    cfg = OptimConfig(total_steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)), "the cosine part must not rise"
    assert lrs[55] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way through the decay
    assert lrs[100] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        OptimConfig(total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="accumulate"):
        OptimConfig(accumulate=0)


def test_fit_tracks_steps_epochs_and_reports_every_step(data: dict[str, torch.Tensor]) -> None:
    optim = OptimConfig(total_steps=4, warmup_steps=1, accumulate=2, lr=1e-3)
    trainer = _trainer(optim)
    reports = []
    saved: list[int] = []
    state = fit(trainer, _epochs(data), report=reports.append, checkpoint=lambda t: saved.append(t.state.step),
                checkpoint_every=3)  # fmt: skip
    # 3 batches per epoch, 2 per step: steps use batches (0,1), (2), (0,1), (2) of epochs 0, 0, 1, 1
    assert [r.step for r in reports] == [1, 2, 3, 4] and [r.epoch for r in reports] == [0, 0, 1, 1]
    assert [r.samples for r in reports] == [4, 2, 4, 2] and state.samples == 12
    assert saved == [3, 4]  # every 3 steps and at the end
    assert state.epoch == 2 and state.batches_in_epoch == 0
    assert all(math.isfinite(r.loss) and r.loss > 0 for r in reports)
    assert reports[0].lr == pytest.approx(1e-3) and reports[-1].lr < reports[1].lr
    assert reports[0].ema_momentum == pytest.approx(0.996) and reports[-1].ema_momentum > reports[0].ema_momentum
    assert 0 <= reports[0].data_wait_share < 1 and reports[0].samples_per_s > 0
    assert [row[0] for row in state.history] == [1, 2, 3, 4]


def test_an_empty_epoch_fails_clearly(data: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="yielded no batch"):
        fit(_trainer(OptimConfig(total_steps=2, warmup_steps=0)), lambda epoch, skip: [])


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(data: dict[str, torch.Tensor],
                                                                   tmp_path: Path) -> None:  # fmt: skip
    optim = OptimConfig(total_steps=4, warmup_steps=1, lr=1e-3)
    full = _trainer(optim)
    fit(full, _epochs(data))
    first = _trainer(optim)
    ckpt = tmp_path / "ckpt"

    def stop_at_2(t: Trainer) -> None:  # a run killed right after its step-2 checkpoint
        if t.state.step == 2:
            save_checkpoint(t, ckpt, extra={"run": "test"})
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, _epochs(data), checkpoint=stop_at_2, checkpoint_every=2)
    meta = read_state(ckpt)
    assert meta["state"]["step"] == 2 and meta["state"]["epoch"] == 0 and meta["state"]["batches_in_epoch"] == 2
    assert meta["extra"] == {"run": "test"} and not list(tmp_path.glob("*.tmp"))
    resumed = _trainer(optim, seed=123)  # different init: everything must come from the checkpoint
    load_checkpoint(resumed, ckpt)
    assert torch.equal(resumed.jepa.target.cls_token, first.jepa.target.cls_token)
    fit(resumed, _epochs(data))
    assert resumed.state.history == full.state.history  # the same four losses, bit for bit (across an epoch end)
    for (name, a), b in zip(full.jepa.state_dict().items(), resumed.jepa.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_model_is_refused(data: dict[str, torch.Tensor], tmp_path: Path) -> None:
    trainer = _trainer(OptimConfig(total_steps=1, warmup_steps=0))
    save_checkpoint(trainer, tmp_path / "c")
    other = Trainer(Jepa(AnySat(AnySatConfig(size="tiny", modalities=("s2",))), JepaConfig(predictor_depth=1)),
                    OptimConfig(total_steps=1, warmup_steps=0))  # fmt: skip
    with pytest.raises(RuntimeError, match="the trainer's model differs"):
        load_checkpoint(other, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(trainer, tmp_path)


# -- two-process DDP over gloo -----------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, out: Path) -> None:
    """One DDP rank: the same seed-0 model (rank 1 starts from other weights, DDP must broadcast rank 0's),
    its own half of the samples, two steps; writes its final weights and losses to `out`."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from anysat.train import wrap_ddp

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    trainer = _trainer(OptimConfig(total_steps=2, warmup_steps=0, lr=1e-3), seed=rank)
    trainer.forward = wrap_ddp(trainer.jepa)
    data = _samples()
    mine = [[0, 1], [2]] if rank == 0 else [[3, 4], [5]]
    fit(trainer, lambda epoch, skip: [contract_batch(i, data) for i in mine][skip:])
    state = {k: v.contiguous() for k, v in trainer.jepa.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.losses").write_text(" ".join(str(h[1]) for h in trainer.state.history))
    dist.destroy_process_group()


def test_two_ddp_workers_on_gloo_hold_identical_parameters_after_steps(tmp_path: Path, gloo_ranks) -> None:
    from safetensors.torch import load_file

    gloo_ranks(__file__, tmp_path)
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs across ranks"
    init = _trainer(OptimConfig(total_steps=2, warmup_steps=0), seed=0).jepa.state_dict()
    assert not torch.equal(a["student.cls_token"], init["student.cls_token"])  # the steps changed the weights
    assert not torch.equal(a["target.cls_token"], init["target.cls_token"])  # and the EMA moved the target
    losses = [(tmp_path / f"rank{r}.losses").read_text() for r in range(2)]
    assert losses[0] != losses[1]  # each rank trained on its own data


if __name__ == "__main__":  # a DDP rank, started by the test above
    _ddp_worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
