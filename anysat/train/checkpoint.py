"""Training checkpoints: one directory with the whole JEPA state, the optimiser, schedule, data position and RNG.

Layout (no pickled code anywhere; weights are safetensors, small state JSON):

    student/model.safetensors, student/config.json   the encoder, loadable alone with `anysat.load`
    target.safetensors                               the EMA target encoder
    jepa.safetensors                                 predictor, modality-mask token and sub-tile contrast head
    optimizer.pt                                     AdamW state (`torch.load(weights_only=True)`)
    rng.safetensors                                  rank 0's mask-generator and torch CPU RNG states
    state.json                                       step, data position, samples, schedule, configs, loss history,
                                                     and every other file's size (`files`), written last

`save_checkpoint` writes into a sibling temporary directory and renames it into place, so a crash never leaves a
half-written checkpoint under the final name. A copy of it (Ray Train uploading to the run storage, file by
file, in a process that can be killed) has no such rename: `missing_files` compares a copy with the sizes its
`state.json` lists, so a resume can tell a complete checkpoint from a partial upload.

Random streams after a resume: rank 0 (the rank that writes checkpoints) restores its saved generator states,
so a one-process run continues exactly; every other rank derives its own streams from (its mask seed, its rank,
the step), so DDP ranks never share rank 0's masks after a restart (each rank's mask seed is the JEPA seed +
rank, as when the run started).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from anysat.model import AnySat
from anysat.train.loop import Trainer, TrainState

__all__ = ["STATE_FILE", "load_checkpoint", "missing_files", "rank_seed", "read_state", "save_checkpoint"]

STATE_FILE = "state.json"


def _tensors(module: torch.nn.Module, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    keep = {k: v for k, v in state.items() if not prefixes or k.startswith(prefixes)}
    return {k: v.detach().contiguous().cpu() for k, v in keep.items()}


def save_checkpoint(trainer: Trainer, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write the trainer's complete state into `directory` (replaced if it exists).

    Args:
        trainer: The trainer to save (its `jepa`, optimiser, scheduler and `state`).
        directory: Checkpoint directory (local).
        extra: Small JSON-ready facts stored in `state.json` under `extra` (e.g. the run config).

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jepa = trainer.jepa
    jepa.student.save(tmp / "student")
    save_file(_tensors(jepa.target), str(tmp / "target.safetensors"))
    save_file(_tensors(jepa, ("predictor.", "mask_token", "contrast_head.")), str(tmp / "jepa.safetensors"))
    torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
    save_file({"mask_generator": jepa.generator.get_state(), "torch": torch.get_rng_state()},
              str(tmp / "rng.safetensors"))  # fmt: skip
    scheduler = {k: v for k, v in trainer.scheduler.state_dict().items() if k != "lr_lambdas"}
    files = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
    payload = {"state": asdict(trainer.state), "scheduler": scheduler, "optim": trainer.config.to_dict(),
               "extra": extra or {}, "files": files}  # fmt: skip
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def read_state(directory: str | Path) -> dict[str, Any]:
    """The `state.json` of a checkpoint (step, data position, schedule, configs, history)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a checkpoint written by save_checkpoint")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def missing_files(state_json: bytes, sizes: dict[str, int]) -> list[str]:
    """What a checkpoint copy lacks: `state.json`'s bytes and the copy's {relative path: size} of other files.

    Returns the files missing or of another size than `save_checkpoint` wrote (`["state.json"]` if it does
    not parse); empty for a complete copy. A checkpoint from before `files` was recorded is complete if its
    state parses.
    """
    try:
        listed = json.loads(state_json).get("files", {})
    except (ValueError, AttributeError):
        return [STATE_FILE]
    return sorted(name for name, size in listed.items() if sizes.get(name) != size)


def rank_seed(seed: int, rank: int, step: int, stream: str) -> int:
    """A 63-bit seed for one random stream of one rank at one step (independent across ranks, steps and streams)."""
    digest = hashlib.sha256(json.dumps([seed, rank, step, stream]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_checkpoint(trainer: Trainer, directory: str | Path, *, rank: int = 0) -> TrainState:
    """Restore a trainer in place from `save_checkpoint`'s directory (same model and optimiser layout).

    `rank` 0 restores the saved random states (an exact continuation); another rank derives its own mask and
    torch streams from its mask seed, rank and the step (`rank_seed`), never rank 0's.

    Raises:
        FileNotFoundError: `directory` is not a checkpoint.
        RuntimeError: The weights do not fit the trainer's model (different config).
    """
    from safetensors.torch import load_file

    src = Path(directory)
    payload = read_state(src)
    jepa, device = trainer.jepa, trainer.device
    student = AnySat.load(src / "student", map_location=str(device))
    if student.config != jepa.student.config:
        raise RuntimeError(f"checkpoint {src} holds a {student.config.size} model with modalities "
                           f"{[m.key for m in student.config.modalities]}; the trainer's model differs "
                           f"({jepa.student.config.size}, {[m.key for m in jepa.student.config.modalities]})")
    jepa.student.load_state_dict(student.state_dict(), strict=True)
    jepa.target.load_state_dict(load_file(str(src / "target.safetensors"), device=str(device)), strict=True)
    missing, unexpected = jepa.load_state_dict(load_file(str(src / "jepa.safetensors"), device=str(device)),
                                               strict=False)  # fmt: skip
    own = [k for k in missing if k.startswith(("predictor.", "mask_token", "contrast_head."))]
    if own or unexpected:
        raise RuntimeError(f"checkpoint {src}: predictor or contrast-head weights do not fit "
                           f"(missing {own}, unexpected {unexpected})")  # fmt: skip
    trainer.optimizer.load_state_dict(torch.load(src / "optimizer.pt", map_location=device, weights_only=True))
    trainer.scheduler.load_state_dict({**payload["scheduler"], "lr_lambdas": [None]})
    trainer.state = TrainState(**payload["state"])
    if rank == 0:
        rng = load_file(str(src / "rng.safetensors"))
        jepa.generator.set_state(rng["mask_generator"])
        torch.set_rng_state(rng["torch"])
    else:
        step = trainer.state.step
        jepa.generator.manual_seed(rank_seed(jepa.config.seed, rank, step, "masks"))
        torch.manual_seed(rank_seed(jepa.config.seed, rank, step, "torch"))
    return trainer.state
