"""The AnySat encoder: projectors → shared spatial encoder → metre-based position encoding → backbone → fusion.

`forward` is built from two stages that the JEPA objective also uses:
`embed_modalities` (per-modality patch tokens with position encoding, [B, M, N, D]) and `fuse` (backbone over
CLS + the kept modality tokens, then cross-attention fusion into one token per kept patch, [B, 1+K, D]).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from anysat.attention import Block, FusionBlock, RPEBlock
from anysat.config import AnySatConfig
from anysat.irpe import bucket_ids
from anysat.modalities import Modality, check_inputs
from anysat.pos_embed import sincos_2d
from anysat.projectors import TemporalProjector, VHRProjector

__all__ = ["AnySat", "ModalityTokens", "SpatialEncoder"]

Output = Literal["tile", "patch", "dense", "all"]


@dataclass(frozen=True)
class ModalityTokens:
    """Per-modality patch tokens, the input of `AnySat.fuse`.

    Attributes:
        tokens: [B, M, N, D] spatial-encoder CLS output of each patch, position encoding added.
        keys: The M modality keys, in order.
        grid: n, patches per tile side (N = n²).
        scale: Patch size in 10 m units.
        tile_tokens: [B, T_tok, D] tokens that describe the whole tile (modis), or None.
        subpatches: [B, N, S, D] sub-patch tokens of one modality (for `dense`), or None.
    """

    tokens: torch.Tensor
    keys: tuple[str, ...]
    grid: int
    scale: int
    tile_tokens: torch.Tensor | None = None
    subpatches: torch.Tensor | None = None


class SpatialEncoder(nn.Module):
    """One transformer shared by all modalities: CLS + sub-patch tokens of a patch → patch token (iRPE)."""

    def __init__(self, dim: int, depth: int, num_heads: int, *, mlp_ratio: float, rpe_first_head: bool) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([RPEBlock(dim, num_heads, mlp_ratio=mlp_ratio, rpe_first_head=rpe_first_head)
                                     for _ in range(depth)])  # fmt: skip
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, *, step_m: float, checkpoint: bool = False) -> torch.Tensor:
        """x [B·P, S, D] (S = g² in raster order) → [B·P, 1+S, D] (CLS first), normalised."""
        n, s, d = x.shape
        g = int(round(s**0.5))
        pos = sincos_2d(d, g, step_m, prefix_tokens=1, device=x.device).to(x.dtype)
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1) + pos
        buckets = bucket_ids(g, prefix=1, device=x.device)
        for blk in self.blocks:
            x = _checkpoint(blk, x, buckets, use_reentrant=False) if checkpoint and torch.is_grad_enabled() \
                else blk(x, buckets)  # fmt: skip
        return self.norm(x)


class AnySat(nn.Module):
    """AnySat encoder for any resolution, scale and modality.

    Args:
        config: Size, modalities and efficiency switches.
    """

    def __init__(self, config: AnySatConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AnySatConfig()
        d, depth, heads = config.embed_dim, config.depth, config.num_heads
        self.embed_dim = d
        self.projectors = nn.ModuleDict()
        for mod in config.modalities:
            if mod.temporal:
                self.projectors[mod.key] = TemporalProjector(mod, d, chunk_pixels=config.ltae_chunk_pixels,
                                                             skip_masked=config.ltae_skip_masked)  # fmt: skip
            else:
                self.projectors[mod.key] = VHRProjector(mod, d, official_order=config.official_aerial_order)
        self.spatial_encoder = SpatialEncoder(d, depth, heads, mlp_ratio=config.mlp_ratio,
                                              rpe_first_head=config.official_irpe)  # fmt: skip
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList([Block(d, heads, mlp_ratio=config.mlp_ratio) for _ in range(depth)])
        self.fusion = FusionBlock(d, heads, mlp_ratio=config.mlp_ratio, rpe_first_head=config.official_irpe)
        for part in (self.spatial_encoder, self.blocks, self.fusion):  # projectors keep their own init
            part.apply(self._init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- stage 1 ---------------------------------------------------------------------------------------------
    def embed_modalities(self, x: Mapping[str, torch.Tensor], *, patch_size: int,
                         keep_subpatches: str | None = None) -> ModalityTokens:  # fmt: skip
        """Project every modality and encode each patch with the shared spatial encoder.

        Args:
            x: `{key: tensor}` plus `<key>_dates` [B, T] for time series, and optionally `<key>_mask` [B, T]
                (True = real date) and `<key>_valid` [B, T, H, W] (True = usable pixel-date).
            patch_size: Patch size in metres (multiple of 10).
            keep_subpatches: Modality whose sub-patch tokens to return (for `dense`), or None.
        """
        table = self.config.table
        keys = check_inputs(x, table, patch_size=patch_size)
        scale = patch_size // 10
        tokens, tile_tokens, subs, grid = [], [], None, 0
        ckpt = self.config.grad_checkpointing
        for key in keys:
            mod: Modality = table[key]
            proj = self.projectors[key]
            if mod.temporal:
                valid = _valid_mask(x, key)
                feats = proj(x[key], x[f"{key}_dates"], patch_size=patch_size, valid=valid, checkpoint=ckpt)
            else:
                feats = proj(x[key], patch_size=patch_size)
            b = x[key].shape[0]
            step = mod.res_m if mod.temporal else mod.subpatch_m
            encoded = self.spatial_encoder(feats, step_m=step, checkpoint=ckpt)  # [B·P, 1+S, D]
            if mod.tile_token:
                tile_tokens.append(encoded[:, 0][:, None])  # [B, 1, D]
                continue
            n_patches = encoded.shape[0] // b
            grid = int(round(n_patches**0.5))
            if key == keep_subpatches:
                subs = encoded[:, 1:].reshape(b, n_patches, -1, self.embed_dim)
            tokens.append(encoded[:, 0].reshape(b, n_patches, self.embed_dim))
        if not tokens:
            raise ValueError("at least one modality with a patch grid is needed (a tile-token modality alone is not)")
        pos = sincos_2d(self.embed_dim, grid, float(scale), device=tokens[0].device).to(tokens[0].dtype)
        stacked = torch.stack(tokens, dim=1) + pos  # [B, M, N, D]
        kept = tuple(k for k in keys if not table[k].tile_token)
        return ModalityTokens(stacked, kept, grid, scale, torch.cat(tile_tokens, dim=1) if tile_tokens else None, subs)

    # -- stage 2 ---------------------------------------------------------------------------------------------
    def fuse(self, tokens: torch.Tensor, *, grid: int, scale: int, keep: torch.Tensor | None = None,
             tile_tokens: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Backbone over CLS + kept modality tokens, then cross-attention fusion.

        Args:
            tokens: [B, M, N, D] from `embed_modalities` (position encoding included).
            grid: n (N = n²).
            scale: Patch size in 10 m units.
            keep: [B, K] patch indices to keep (JEPA context); None keeps all N.
            tile_tokens: [B, T_tok, D] whole-tile tokens (modis) or None.

        Returns:
            [B, 1+K, D]: the CLS token, then one fused token per kept patch (in `keep` order).
        """
        b, m, n, d = tokens.shape
        if keep is not None:
            idx = keep[:, None, :, None].expand(b, m, keep.shape[1], d)
            tokens = torch.gather(tokens, 2, idx)  # [B, M, K, D]
        k = tokens.shape[2]
        n_tile = 0 if tile_tokens is None else tile_tokens.shape[1]
        full_pos = sincos_2d(d, grid, float(scale), prefix_tokens=1, device=tokens.device).to(tokens.dtype)
        cls = (self.cls_token + full_pos[:1]).expand(b, -1, -1)
        parts = [cls] + ([tile_tokens] if tile_tokens is not None else []) + [tokens.reshape(b, m * k, d)]
        x = torch.cat(parts, dim=1)  # [B, 1 + n_tile + M·K, D]
        for blk in self.blocks:
            x = _checkpoint(blk, x, use_reentrant=False) if self.config.grad_checkpointing and torch.is_grad_enabled() \
                else blk(x)  # fmt: skip
        # queries: CLS, tile slots, kept patches; their positions and iRPE buckets on the patch grid
        prefix = 1 + n_tile
        full_buckets = bucket_ids(grid, prefix=prefix, device=x.device)  # [prefix+N, prefix+N]
        patch_pos = full_pos[1:]
        if keep is None:
            sel = torch.arange(n, device=x.device)[None].expand(b, -1)
        else:
            sel = keep
        rows = torch.cat([torch.arange(prefix, device=x.device)[None].expand(b, -1), sel + prefix], dim=1)  # [B, Q]
        q_buckets = full_buckets[rows[:, :, None], rows[:, None, :]]  # [B, Q, prefix+K]
        key_buckets = torch.cat([q_buckets[..., :prefix], q_buckets[..., prefix:].repeat(1, 1, m)], dim=-1)
        query_pos = torch.cat([torch.zeros(b, prefix, d, device=x.device, dtype=x.dtype), patch_pos[sel]], dim=1)
        residual = None
        if self.config.fusion_residual:  # each query keeps its own token: CLS, tile slots, its patch (mean over M)
            own = x[:, prefix:].reshape(b, m, k, d).mean(1)
            residual = torch.cat([x[:, :prefix], own], dim=1)
        out = self.fusion(x, query_pos, key_buckets, residual)  # [B, Q, D]
        return torch.cat([out[:, :1], out[:, prefix:]], dim=1)

    # -- inference -------------------------------------------------------------------------------------------
    def forward(self, x: Mapping[str, torch.Tensor], patch_size: int, output: Output = "patch",
                output_modality: str = "") -> torch.Tensor:  # fmt: skip
        """Encode a batch; outputs are channels-last as in the official model.

        Returns:
            `tile` [B, D]; `patch` [B, n, n, D]; `all` [B, 1+n², D]; `dense` [B, n·s, n·s, 2D] where s is the
            number of sub-patches per patch side of `output_modality` (default: the first modality) and the
            channels are patch token ‖ sub-patch token.
        """
        if output not in ("tile", "patch", "dense", "all"):
            raise ValueError(f"output must be 'tile', 'patch', 'dense' or 'all', got {output!r}")
        keep_subs = None
        if output == "dense":
            keep_subs = output_modality or next(k for k in x if not k.endswith(("_dates", "_mask", "_valid")))
        emb = self.embed_modalities(x, patch_size=patch_size, keep_subpatches=keep_subs)
        fused = self.fuse(emb.tokens, grid=emb.grid, scale=emb.scale, tile_tokens=emb.tile_tokens)  # [B, 1+N, D]
        b, n = fused.shape[0], emb.grid
        if output == "tile":
            return fused[:, 0]
        if output == "all":
            return fused
        if output == "patch":
            return fused[:, 1:].reshape(b, n, n, self.embed_dim)
        subs = emb.subpatches
        if subs is None:
            raise ValueError(f"dense output needs a modality with a patch grid; got {keep_subs!r}")
        s = int(round(subs.shape[2] ** 0.5))
        dense = torch.cat([fused[:, 1:, None, :].expand(-1, -1, subs.shape[2], -1), subs], dim=-1)  # [B, N, S, 2D]
        dense = dense.view(b, n, n, s, s, 2 * self.embed_dim).permute(0, 1, 3, 2, 4, 5)
        return dense.reshape(b, n * s, n * s, 2 * self.embed_dim)

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `model.safetensors` and `config.json` into `directory` (created)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "anysat-stac"})
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path, *, map_location: str = "cpu") -> AnySat:
        """Rebuild a model saved by `save` (safetensors only: no pickled code is ever loaded)."""
        from safetensors.torch import load_file

        src = Path(directory)
        config = AnySatConfig.from_dict(json.loads((src / "config.json").read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(src / "model.safetensors"), device=map_location), strict=True)
        return model


def _valid_mask(x: Mapping[str, torch.Tensor], key: str) -> torch.Tensor | None:
    """Combine `<key>_mask` [B, T] and `<key>_valid` [B, T, H, W] into one [B, T, H, W] bool mask, or None."""
    dates, pixels = x.get(f"{key}_mask"), x.get(f"{key}_valid")
    if dates is None and pixels is None:
        return None
    b, t, _, h, w = x[key].shape
    valid = torch.ones(b, t, h, w, dtype=torch.bool, device=x[key].device)
    if dates is not None:
        if tuple(dates.shape) != (b, t):
            raise ValueError(f"{key}_mask must be [B, T] = {[b, t]}, got {list(dates.shape)}")
        valid &= dates.bool()[:, :, None, None]
    if pixels is not None:
        if tuple(pixels.shape) != (b, t, h, w):
            raise ValueError(f"{key}_valid must be [B, T, H, W] = {[b, t, h, w]}, got {list(pixels.shape)}")
        valid &= pixels.bool()
    return valid
