"""Load official AnySat checkpoints into our model: key renaming, strict key and shape checks.

The released checkpoint is a dict with `state_dict` (keys like `projector_s2.patch_embed.inconv.0.weight`,
`spatial_encoder.predictor_blocks.0.attn.qkv.weight`, `blocks.6.attn.wk.weight`); Lightning fine-tuning
checkpoints prefix them with `target_encoder.` or `model.encoder.`. Weights are read with
`torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from anysat.config import SIZES, AnySatConfig
from anysat.modalities import OFFICIAL_MODALITIES, Modality
from anysat.model import AnySat

__all__ = ["convert_official_state_dict", "load_official"]

_PREFIXES = ("target_encoder.", "model.encoder.", "encoder.", "model.")


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state) and all(
            k.startswith(prefix) for k in state if k.startswith(("target_encoder.", "model.", "encoder."))
        ):
            picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if "cls_token" in picked:
                return picked
    return dict(state)


def convert_official_state_dict(state: Mapping[str, torch.Tensor], *, depth: int) -> dict[str, torch.Tensor]:
    """Rename official keys to ours (prefixes only; tensors are shared, not copied)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in _strip_prefix(state).items():
        new = re.sub(r"^projector_([^.]+)\.", r"projectors.\1.", key)
        new = new.replace("spatial_encoder.predictor_blocks.", "spatial_encoder.blocks.")
        new = new.replace("spatial_encoder.predictor_norm.", "spatial_encoder.norm.")
        new = re.sub(rf"^blocks\.{depth}\.", "fusion.", new)
        out[new] = value
    return out


def _read(path_or_state: str | Path | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(path_or_state, (str, Path)):
        raw = torch.load(str(path_or_state), map_location="cpu", weights_only=True)
    else:
        raw = dict(path_or_state)
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = dict(raw["state_dict"])
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def load_official(path_or_state_dict: str | Path | Mapping[str, Any], *, size: str | None = None,
                  modalities: Sequence[str | Modality] | None = None,
                  official_aerial_order: bool = True, official_irpe: bool = True) -> AnySat:  # fmt: skip
    """Build our model from an official checkpoint (file or state dict), checking every key and shape.

    Args:
        path_or_state_dict: `.pth`/`.ckpt` file or an already loaded dict (with or without `state_dict`).
        size: `tiny`/`small`/`base`; None infers it from the width of `cls_token`.
        modalities: The modalities to keep (official keys or `Modality`); None keeps every projector present.
            Projectors of other modalities in the checkpoint are ignored.
        official_aerial_order: Reproduce the official cell-major VHR sub-patch order (defect 3), so that the
            official weights see what they were trained on.
        official_irpe: Reproduce the official iRPE bias (computed from the first head's queries only).

    Raises:
        ValueError: The checkpoint does not match the model: the message lists missing, unexpected and
            mismatched keys.
    """
    state = _strip_prefix(_read(path_or_state_dict))
    if "cls_token" not in state:
        raise ValueError(f"not an AnySat encoder checkpoint: no 'cls_token' among {sorted(state)[:8]}…")
    width = int(state["cls_token"].shape[-1])
    if size is None:
        sizes = [name for name, (d, _, _) in SIZES.items() if d == width]
        if not sizes:
            raise ValueError(f"cls_token width {width} matches no size {SIZES}")
        size = sizes[0]
    depth = SIZES[size][1]
    if modalities is None:
        present = sorted({k.split(".")[0][len("projector_"):] for k in state if k.startswith("projector_")})
        unknown = [m for m in present if m not in OFFICIAL_MODALITIES]
        if unknown:
            raise ValueError(f"checkpoint has projectors {unknown} that are not official keys; pass modalities=")
        modalities = [m for m in OFFICIAL_MODALITIES if m in present]
    config = AnySatConfig(size=size, modalities=tuple(modalities),  # type: ignore[arg-type]
                          official_aerial_order=official_aerial_order, official_irpe=official_irpe,
                          fusion_residual=False)  # fmt: skip
    model = AnySat(config)
    wanted = model.state_dict()
    converted = convert_official_state_dict(state, depth=depth)
    keep = set(config.table)
    converted = {k: v for k, v in converted.items()
                 if not k.startswith("projectors.") or k.split(".")[1] in keep}  # fmt: skip
    missing = sorted(set(wanted) - set(converted))
    unexpected = sorted(set(converted) - set(wanted))
    mismatched = sorted(f"{k}: checkpoint {list(converted[k].shape)} vs model {list(wanted[k].shape)}"
                        for k in set(wanted) & set(converted) if wanted[k].shape != converted[k].shape)  # fmt: skip
    if missing or unexpected or mismatched:
        raise ValueError(
            f"official checkpoint does not match AnySat(size={size!r}, modalities={sorted(keep)}): "
            f"{len(missing)} missing {missing[:10]}, {len(unexpected)} unexpected {unexpected[:10]}, "
            f"{len(mismatched)} with another shape {mismatched[:10]}; check size= and the modalities' band counts"
        )
    model.load_state_dict(converted, strict=True)
    return model
