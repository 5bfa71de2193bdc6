"""The command line's wiring: the installed script, the generated config reference, progress lines."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import tomllib
from pathlib import Path

import pytest

from modelops.cli import config_docs
from modelops.cli.main import COMMANDS, main
from modelops.pretrain_config import PretrainConfig
from pipeline.config_reference import reference, rows, undocumented
from pipeline.ingest.config import IngestConfig
from pipeline.progress import Progress

ROOT = Path(__file__).resolve().parents[3]


def test_the_installed_command_is_the_dispatcher_over_every_job() -> None:
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["anysat-stac"]
    module, _, func = script.partition(":")
    assert getattr(importlib.import_module(module), func) is main
    assert set(COMMANDS) == {"ingest", "pretrain", "evaluate", "embed", "promote", "inspect", "stack",
                             "submit"}
    for name in ("ingest", "pretrain", "inspect", "stack", "submit"):
        assert callable(importlib.import_module(f"modelops.cli.{name}").main)


def test_unknown_commands_and_no_command_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2 and "unknown command 'train'" in capsys.readouterr().err
    assert main([]) == 2 and main(["--help"]) == 0


def test_docs_config_md_is_current_and_every_key_is_described() -> None:
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config_docs.render(), \
        "docs/CONFIG.md is out of date: python -m modelops.cli.config_docs"  # fmt: skip
    assert undocumented(IngestConfig) == [] and undocumented(PretrainConfig) == []
    keys = {r.key for r in rows(IngestConfig)} | {r.key for r in rows(PretrainConfig)}
    assert {"chips_per_shard", "sensors[].max_cloud_cover", "grid.chip_size_m", "run.workers", "optim.lr",
            "model.modalities[].subpatch_px", "data.datasets[].url", "jepa.masks.n_targets"} <= keys


def test_the_reference_reports_an_undescribed_key() -> None:
    @dataclasses.dataclass(frozen=True)
    class Planted:
        """A planted config.

        Attributes:
            size: Described.
        """

        size: int = 3
        colour: str | None = None

    assert undocumented(Planted) == ["colour"]
    assert "| `size` | integer | `3` | Described. |" in reference(Planted)
    assert "| `colour` | string or null | `null` |  |" in reference(Planted)


def test_progress_lines_count_and_estimate(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = Progress("step", 10, done=4, log=logging.getLogger("t"), clock=lambda: now[0])
    now[0] += 6.0
    with caplog.at_level(logging.INFO):
        line = progress.update(6, detail="loss 0.5")  # 2 steps in 6 s, 4 left
    assert line == "step 6/10 (60%) loss 0.5 elapsed 0:06 ETA 0:12" and caplog.messages == [line]
    now[0] += 3600
    assert progress.update().endswith("elapsed 1:00:06 ETA 1:00:06") and progress.done == 7  # 3 in 3606 s, 3 left


def test_progress_logs_every_tenth_and_not_more_often_than_asked(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    tenths = Progress("shard", 25, log=logging.getLogger("t"), every=0.1, clock=lambda: now[0])
    with caplog.at_level(logging.INFO):
        for _ in range(25):
            now[0] += 10.0
            tenths.update()
    # a stride of 3 shards (a tenth of 25, rounded up) and the last one; each update still returns its line
    assert [int(m.split()[1].split("/")[0]) for m in caplog.messages] == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    caplog.clear()
    now[0] = 0.0
    spaced = Progress("embed step", 20, log=logging.getLogger("t"), every=0.1, min_interval_s=5.0,
                      clock=lambda: now[0])  # fmt: skip
    with caplog.at_level(logging.INFO):
        for _ in range(20):  # 1 s a step: a tenth is due every 2 steps, a line at most every 5 s
            now[0] += 1.0
            spaced.update()
    assert [m.split()[2] for m in caplog.messages] == ["5/20", "10/20", "15/20", "20/20"]
