"""The pretraining job's collapse verdict on a multi-rank run: rank 0 measures, every DDP rank stops with it.

Two real processes in a gloo group train the tiny encoder with DDP on the BigEarthNet S2 + S1 pairs (the
batches of tests/anysat/test_train.py). Rank 0 alone holds the monitor and its fixed batch; its student is made
to collapse after the first step. Without the shared verdict rank 1 would go on into the next all-reduce and
wait there for a rank that has left; with it both raise `CollapseError` at the same measurement.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from anysat.train import CollapseError, Monitor, MonitorConfig, OptimConfig, fit, wrap_ddp
from modelops.monitoring import SharedVerdict, plant_collapse, tracked_metrics

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_train_helpers", ROOT / "tests" / "anysat" / "test_train.py")
_helpers = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_helpers)  # type: ignore[union-attr]


def _rank(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    trainer = _helpers._trainer(OptimConfig(total_steps=6, warmup_steps=1, lr=1e-4), seed=0)
    trainer.forward = wrap_ddp(trainer.jepa)
    data = _helpers._samples()
    config = MonitorConfig(eval_every=2, collapse_action="stop")
    monitor = Monitor(config, _helpers.contract_batch([0, 1, 2], data)) if rank == 0 else None
    verdict = SharedVerdict(monitor, config, torch.device("cpu"), started=False)
    mine = [[0, 1], [2]] if rank == 0 else [[3, 4], [5]]

    def batches_for(epoch: int, skip: int):  # noqa: ANN202
        for i, idx in enumerate(mine[skip:]):
            if rank == 0 and epoch == 0 and i == 1:
                plant_collapse(trainer.jepa.student)  # after step 1: rank 0's student outputs one vector
            yield _helpers.contract_batch(idx, data)

    error = ""
    try:
        fit(trainer, batches_for, monitor=verdict)  # type: ignore[arg-type]
    except CollapseError as err:
        error = str(err)
    (out / f"rank{rank}.json").write_text(json.dumps({"step": trainer.state.step, "error": error}))
    dist.destroy_process_group()


def test_rank_0s_collapse_verdict_stops_every_rank_at_the_same_step(tmp_path: Path, gloo_ranks) -> None:
    gloo_ranks(__file__, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["step"] for r in ranks] == [2, 2]  # both stopped at the first measurement after the collapse
    assert "REPRESENTATION COLLAPSE at step 2" in ranks[0]["error"]
    assert "collapse guard stopped the run" in ranks[1]["error"]


def test_the_first_measurement_is_logged_at_step_0() -> None:
    split = tracked_metrics({"loss": 1.0, "rank_student_start": 9.0, "rank_student": 8.0}, 2)
    assert split == {2: {"loss": 1.0, "rank_student": 8.0}, 0: {"rank_student": 9.0}}


if __name__ == "__main__":  # a DDP rank, started by the test above
    _rank(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
