"""`AnySatConfig`: the model's typed configuration (size, modalities, efficiency switches)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from anysat.modalities import OFFICIAL_MODALITIES, Modality, reject_unknown_fields, resolve_modalities

__all__ = ["SIZES", "AnySatConfig"]

# size -> (width D, depth of the spatial encoder and of the backbone, heads)
SIZES: dict[str, tuple[int, int, int]] = {"tiny": (256, 2, 4), "small": (512, 4, 8), "base": (768, 6, 12)}


@dataclass(frozen=True)
class AnySatConfig:
    """Configuration of an AnySat encoder.

    Attributes:
        size: `tiny`, `small` or `base` (sets `embed_dim`, `depth`, `num_heads`).
        modalities: The sensors the model has projectors for (default: the 11 official keys).
        mlp_ratio: Hidden width of the transformer MLPs, as a multiple of `embed_dim`.
        ltae_chunk_pixels: Pixel time series per L-TAE chunk (bounds peak memory).
        ltae_skip_masked: Compute only the valid pixel-dates in the L-TAE (same outputs and gradients as
            computing every pixel-date and masking; False computes them all, for comparison).
        grad_checkpointing: Recompute L-TAE chunks and transformer blocks in the backward pass.
        official_aerial_order: Emit VHR sub-patches in the official cell-major order (for faithful use of
            official weights); False gives raster order, which the position encoding and `dense` assume.
        official_irpe: Reproduce the official iRPE, whose bias comes from the first head's queries for every
            head (for faithful use of official weights); False gives each head its own bias.
    """

    size: Literal["tiny", "small", "base"] = "tiny"
    modalities: tuple[Modality, ...] = field(default_factory=lambda: tuple(OFFICIAL_MODALITIES.values()))
    mlp_ratio: float = 4.0
    ltae_chunk_pixels: int = 512
    ltae_skip_masked: bool = True
    grad_checkpointing: bool = False
    official_aerial_order: bool = False
    official_irpe: bool = False
    fusion_residual: bool = True

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        object.__setattr__(self, "modalities", resolve_modalities(self.modalities))
        if self.ltae_chunk_pixels < 1:
            raise ValueError(f"ltae_chunk_pixels must be >= 1, got {self.ltae_chunk_pixels}")

    @property
    def embed_dim(self) -> int:
        return SIZES[self.size][0]

    @property
    def depth(self) -> int:
        return SIZES[self.size][1]

    @property
    def num_heads(self) -> int:
        return SIZES[self.size][2]

    @property
    def table(self) -> dict[str, Modality]:
        """Modalities by key."""
        return {m.key: m for m in self.modalities}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved beside the weights)."""
        return {"size": self.size, "modalities": [m.to_dict() for m in self.modalities],
                "mlp_ratio": self.mlp_ratio, "ltae_chunk_pixels": self.ltae_chunk_pixels,
                "ltae_skip_masked": self.ltae_skip_masked,
                "grad_checkpointing": self.grad_checkpointing,
                "official_aerial_order": self.official_aerial_order,
                "official_irpe": self.official_irpe, "fusion_residual": self.fusion_residual}  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AnySatConfig:
        """Inverse of `to_dict`; modalities may be official keys or full descriptions."""
        reject_unknown_fields(cls, raw, "AnySatConfig")
        data = dict(raw)
        data.setdefault("fusion_residual", False)  # saved before the switch existed: built without it
        if "modalities" in data:
            data["modalities"] = resolve_modalities(data["modalities"])
        return cls(**data)

    def with_(self, **changes: Any) -> AnySatConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)
