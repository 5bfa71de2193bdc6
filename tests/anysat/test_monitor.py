"""The collapse monitor: silent on a healthy encoder, loud (and stopping when asked) on a collapsed one.

Batches are built from the real BigEarthNet S2 + S1 pairs in the loader contract (as in test_train.py).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from anysat import AnySat, AnySatConfig
from anysat.jepa import Jepa, JepaConfig
from anysat.train import CollapseError, Monitor, MonitorConfig, OptimConfig, Trainer, fit

_spec = importlib.util.spec_from_file_location("_train_helpers", Path(__file__).with_name("test_train.py"))
_helpers = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_helpers)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return _helpers._samples()


def _trainer(steps: int) -> Trainer:
    torch.manual_seed(0)
    model = AnySat(AnySatConfig(size="tiny", modalities=("s2", "s1-asc")))
    return Trainer(Jepa(model, JepaConfig(predictor_depth=1, predictor_heads=4)),
                   OptimConfig(total_steps=steps, warmup_steps=1, lr=1e-4))  # fmt: skip


def _collapse(module: torch.nn.Module) -> None:
    """Plant a collapse: the encoder's output becomes one vector for every input and position."""
    module.register_forward_hook(lambda m, args, out: out.mean(dim=(0, 1), keepdim=True).expand_as(out).clone())


def test_the_guard_is_silent_on_a_healthy_encoder_and_reports_every_eval(data, caplog) -> None:  # noqa: ANN001
    trainer = _trainer(4)
    monitor = Monitor(MonitorConfig(eval_every=2, collapse_action="stop"), _helpers.contract_batch([0, 1, 2], data),
                      extra=lambda t: {"probe": float(t.state.step)})  # fmt: skip
    reports = []
    with caplog.at_level(logging.WARNING):
        fit(trainer, _helpers._epochs(data), report=reports.append, monitor=monitor)
    assert not [r for r in caplog.records if "COLLAPSE" in r.getMessage()]
    assert [h["step"] for h in monitor.history] == [0, 2, 4]
    first = monitor.history[0]
    assert first["rank_student"] > 5 and first["rank_target"] == pytest.approx(first["rank_student"], rel=1e-4)
    assert reports[0].monitor["rank_student_start"] == first["rank_student"]  # step 0 rides on step 1's report
    assert not reports[2].monitor and reports[1].monitor["probe"] == 2.0 and "rank_target" in reports[3].monitor
    assert "rank_student" in reports[3].line() and "rank_student" in reports[3].metrics()
    assert all(h["rank_ratio"] >= 0.5 for h in monitor.history)


def test_the_guard_warns_then_stops_on_a_collapsed_encoder(data, caplog) -> None:  # noqa: ANN001
    batch = _helpers.contract_batch([0, 1, 2], data)
    trainer = _trainer(4)
    warn = Monitor(MonitorConfig(eval_every=1), batch)
    healthy = warn.measure(trainer)
    _collapse(trainer.jepa.student)  # every output is now the same vector: rank 1, std 0
    with caplog.at_level(logging.WARNING):
        collapsed = warn.measure(trainer)
    assert collapsed["rank_student"] < 1.5 < healthy["rank_student"] and collapsed["std_student"] < 1e-6
    assert any("REPRESENTATION COLLAPSE" in r.getMessage() for r in caplog.records)

    trainer = _trainer(4)
    epochs = _helpers._epochs(data)

    def batches_for(epoch: int, skip: int):  # noqa: ANN202
        for i, b in enumerate(epochs(epoch, skip)):
            if i == 1:
                _collapse(trainer.jepa.student)  # the encoder collapses during the run
            yield b

    stop = Monitor(MonitorConfig(eval_every=1, collapse_action="stop"), batch)
    with pytest.raises(CollapseError, match="effective rank"):
        fit(trainer, batches_for, monitor=stop)
    assert trainer.state.step == 2  # stopped at the first measurement after the collapse
    with pytest.raises(ValueError, match="collapse_action"):
        MonitorConfig(collapse_action="explode")  # type: ignore[arg-type]
