"""bench/gpu.py: its argument handling, and one tiny pass on CPU of the model and training sections."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).resolve().parents[2] / "bench" / "gpu.py")
assert _spec is not None and _spec.loader is not None
gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu)


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "tpu"], "--device must be cuda or cpu"),
    (["--device", "cpu", "--px", "30"], "multiples of 4"),
    (["--device", "cpu", "--official", "/nonexistent-checkout"], "no hubconf.py there"),
])  # fmt: skip
def test_bad_arguments_exit_2_with_the_reason(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is visible")
def test_cuda_without_a_gpu_says_so(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu.parse_args([])
    assert exit_info.value.code == 2 and "no CUDA device is visible" in capsys.readouterr().err


def test_quick_cpu_pass_measures_ours_and_uses_sdpa(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["quick"] is True
    variants = {r["variant"]: r for r in result["model"]}
    assert set(variants) == {"ours fp32", "ours bf16"}  # no official checkout given
    assert all(r["fwd_bwd_s"] > 0 and "error" not in r for r in variants.values())
    assert variants["ours bf16"]["cosine_to_fp32"] >= 0.99  # bf16 on CPU, 16 px
    assert any("scaled_dot_product" in op for op in result["attention_ops"]["tiny"])
    assert result["train"][0]["samples_per_s"] > 0
    assert "skipped" in result["ray_train"]
    assert "ours bf16" in capsys.readouterr().out
