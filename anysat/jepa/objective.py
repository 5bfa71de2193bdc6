"""The JEPA objective as one module: student, EMA target, predictor, masks and losses; independent of trainers.

`Jepa.forward(batch)` takes the model's input dict plus `patch_size` (metres) and returns the loss and its parts;
`update_target(momentum)` moves the EMA target. A trainer only calls these two and an optimiser.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from anysat.jepa.ema import ema_update
from anysat.jepa.loss import mil_nce, prediction_loss, prediction_nce
from anysat.jepa.masks import MaskConfig, sample_masks
from anysat.jepa.predictor import Predictor
from anysat.jepa.subtiles import ContrastHead, quadrants, subtile_nce
from anysat.model import AnySat
from anysat.pos_embed import sincos_2d

__all__ = ["Jepa", "JepaConfig", "JepaOutput", "drop_dates", "normalise_targets", "variance_covariance"]


@dataclass(frozen=True)
class JepaConfig:
    """JEPA recipe (defaults follow the official AnySat pretraining where the reference gives them).

    Attributes:
        masks: Context/target block sampling.
        modality_mask_ratio: Share of the non-kept modality tokens replaced by the mask token (student only).
        date_drop_ratio: Share of each time series' valid dates hidden from the student.
        predictor_depth: Predictor blocks.
        predictor_heads: Predictor attention heads.
        nce_weight: Weight of the MIL-NCE term.
        nce_temperature: MIL-NCE temperature.
        target_norm: How target tokens are normalised. `"layer"` (official): LayerNorm of each fused target
            token. `"batch"` (default): LayerNorm, then each dimension standardised over the batch's samples and
            patches, so the targets are the tokens' input-dependent variation; a constant predictor then scores
            ~0.4 instead of ~0.02, and an encoder whose output does not depend on its input cannot lower the
            loss (see docs/TRAINING.md, "Collapse").
        target_layer: Which target-encoder tokens are predicted. `"fused"` (official): the fused patch tokens
            after the cross-attention fusion, whose learned, input-independent queries and missing residual make
            every patch's token nearly the tile average. `"patch"` (default): each patch's own token from the
            shared spatial encoder (position encoding removed), averaged over modalities: the content of the
            hidden patch itself, so the context must say something about it.
        var_weight: Weight of a variance hinge (VICReg-style: mean of relu(1 − std)) on the student's
            per-modality patch tokens, std across the batch's samples at each patch; 0 = off (official; default 1).
        cov_weight: Weight of the VICReg covariance term (squared off-diagonal covariances / D) on the same
            tokens; 0 = off (official; default 0.04).
        pred_loss: `"smooth_l1"` (official): regression of the normalised target tokens. `"nce"`: contrastive
            prediction (`prediction_nce`), each prediction against every target token of the batch.
        pred_temperature: Temperature of the `"nce"` prediction loss.
        tile_nce_weight: Weight of the sub-tile contrast (`anysat.jepa.subtiles`): the 2x2 quadrants of each
            (date-dropped) tile are encoded by the student as tiles of their own, and InfoNCE pulls the quadrants
            of one tile together and pushes those of other tiles apart. 0 = off (official and default: in two
            27-minute runs on the land-cover scene it did not lift the probe, docs/TRAINING.md, "Collapse").
        tile_nce_temperature: Its temperature.
        seed: Seed of the mask generator (advanced once per step, so masks are reproducible).
    """

    masks: MaskConfig = field(default_factory=MaskConfig)
    modality_mask_ratio: float = 0.5
    date_drop_ratio: float = 0.5
    predictor_depth: int = 4
    predictor_heads: int = 16
    nce_weight: float = 1.0
    nce_temperature: float = 0.1
    target_norm: str = "batch"
    target_layer: str = "patch"
    var_weight: float = 1.0
    cov_weight: float = 0.04
    pred_loss: str = "smooth_l1"
    pred_temperature: float = 0.1
    tile_nce_weight: float = 0.0
    tile_nce_temperature: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_norm not in ("layer", "batch"):
            raise ValueError(f"target_norm must be 'layer' or 'batch', got {self.target_norm!r}")
        if self.target_layer not in ("fused", "patch"):
            raise ValueError(f"target_layer must be 'fused' or 'patch', got {self.target_layer!r}")
        if self.pred_loss not in ("smooth_l1", "nce"):
            raise ValueError(f"pred_loss must be 'smooth_l1' or 'nce', got {self.pred_loss!r}")
        if self.tile_nce_weight < 0 or self.tile_nce_temperature <= 0:
            raise ValueError("tile_nce_weight must be >= 0 and tile_nce_temperature > 0")
        if self.var_weight < 0 or self.cov_weight < 0:
            raise ValueError(f"var_weight and cov_weight must be >= 0, got {self.var_weight}, {self.cov_weight}")


@dataclass(frozen=True)
class JepaOutput:
    """Loss of one step and its parts (tensors; `loss` carries the gradient)."""

    loss: torch.Tensor
    loss_pred: torch.Tensor
    loss_nce: torch.Tensor
    loss_tile: torch.Tensor


def drop_dates(x: Mapping[str, torch.Tensor], keys: list[str], ratio: float,
               gen: torch.Generator) -> dict[str, torch.Tensor]:  # fmt: skip
    """Hide `ratio` of each sample's valid dates per time series through `<key>_mask` (≥ 1 date kept)."""
    out = dict(x)
    for key in keys:
        b, t = x[key].shape[:2]
        mask = x.get(f"{key}_mask", torch.ones(b, t, dtype=torch.bool, device=x[key].device)).bool()
        scores = torch.rand(b, t, generator=gen).to(mask.device).masked_fill(~mask, 2.0)
        n_valid = mask.sum(1)
        n_keep = torch.clamp((n_valid.float() * (1 - ratio)).ceil().long(), min=1)
        rank = scores.argsort(1).argsort(1)
        out[f"{key}_mask"] = mask & (rank < n_keep[:, None])
    return out


def normalise_targets(tokens: torch.Tensor, mode: str, eps: float = 1e-5) -> torch.Tensor:
    """Target tokens [B, N, D] → normalised targets: `layer` (per token) or `batch` (then per dim over B·N)."""
    out = F.layer_norm(tokens.float(), (tokens.shape[-1],))
    if mode == "batch":
        flat = out.reshape(-1, out.shape[-1])
        out = (out - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + eps)
    return out.to(tokens.dtype)


def variance_covariance(tokens: torch.Tensor, target_std: float = 1.0,
                        eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """VICReg-style terms on per-modality patch tokens [B, M, N, D], measured ACROSS SAMPLES at each position.

    Statistics are taken over the batch at a fixed (modality, patch) so that the position encoding, which is the
    same for every sample, can neither satisfy the variance term nor hide a collapsed encoder.

    Returns:
        (variance, covariance): mean over (modality, patch, dim) of relu(target_std − std over B), and the
        sum of squared off-diagonal covariances / D, per modality over the centred B·N rows, averaged over M.
    """
    x = tokens.float()
    b, m, n, d = x.shape
    if b < 2:
        zero = x.new_zeros(())
        return zero, zero
    centred = x - x.mean(0, keepdim=True)
    std = torch.sqrt(centred.pow(2).sum(0) / (b - 1) + eps)  # [M, N, D]
    variance = F.relu(target_std - std).mean()
    rows = centred.permute(1, 0, 2, 3).reshape(m, b * n, d)
    cov = rows.transpose(1, 2) @ rows / (b * n - 1)  # [M, D, D]
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    return variance, (off.pow(2).sum((1, 2)) / d).mean()


class Jepa(nn.Module):
    """Student encoder + EMA target + predictor, trained by predicting target-block tokens from context.

    Batch contract: the encoder's input dict (`s2`, `s2_dates`, optional `s2_mask`/`s2_valid`, `aerial`, …)
    plus `patch_size` (int, metres); every sample of a batch shares one set of modalities and one patch size.
    """

    def __init__(self, encoder: AnySat, config: JepaConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or JepaConfig()
        self.student = encoder
        self.target = copy.deepcopy(encoder)
        for p in self.target.parameters():
            p.requires_grad_(False)
        d = encoder.embed_dim
        self.predictor = Predictor(d, depth=config.predictor_depth, num_heads=config.predictor_heads)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, d))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.contrast_head = ContrastHead(d) if config.tile_nce_weight > 0 else None
        self.generator = torch.Generator().manual_seed(config.seed)

    def _mask_modalities(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per patch keep one random modality; replace `modality_mask_ratio` of the others by the mask token."""
        b, m, n, _ = tokens.shape
        if m < 2:
            return tokens
        keep = torch.randint(0, m, (b, 1, n), generator=self.generator).to(tokens.device)
        drop = torch.rand(b, m, n, generator=self.generator).to(tokens.device) < self.config.modality_mask_ratio
        is_kept = torch.arange(m, device=tokens.device)[None, :, None] == keep
        replace = (drop & ~is_kept)[..., None]
        return torch.where(replace, self.mask_token.to(tokens.dtype), tokens)

    def forward(self, batch: Mapping[str, object]) -> JepaOutput:
        """One JEPA step's loss (see the batch contract in the class docstring)."""
        patch_size = int(batch["patch_size"])  # type: ignore[call-overload]
        x = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        table = self.student.config.table
        series = [k for k in x if k in table and table[k].temporal]
        with torch.no_grad():
            self.target.eval()
            full = self.target.embed_modalities(x, patch_size=patch_size)
            if self.config.target_layer == "patch":
                pos = sincos_2d(full.tokens.shape[-1], full.grid, float(full.scale), device=full.tokens.device)
                raw = (full.tokens - pos.to(full.tokens.dtype)).mean(1)  # [B, N, D]
            else:
                raw = self.target.fuse(full.tokens, grid=full.grid, scale=full.scale,
                                       tile_tokens=full.tile_tokens)[:, 1:]  # fmt: skip
            target_tokens = normalise_targets(raw, self.config.target_norm)  # [B, N, D]
        x_student = drop_dates(x, series, self.config.date_drop_ratio, self.generator)
        emb = self.student.embed_modalities(x_student, patch_size=patch_size)
        b = emb.tokens.shape[0]
        masks = sample_masks(emb.grid, b, self.config.masks, generator=self.generator)
        ctx_idx = masks.context.to(emb.tokens.device)
        tgt_idx = masks.targets.reshape(b, -1).to(emb.tokens.device)  # [B, n_targets·Kt]
        tokens = self._mask_modalities(emb.tokens)
        fused = self.student.fuse(tokens, grid=emb.grid, scale=emb.scale, keep=ctx_idx, tile_tokens=emb.tile_tokens)
        pred = self.predictor(fused[:, 1:], ctx_idx, tgt_idx, grid=emb.grid, scale=emb.scale)
        want = torch.gather(target_tokens, 1, tgt_idx[..., None].expand(-1, -1, target_tokens.shape[-1]))
        if self.config.pred_loss == "nce":
            loss_pred = prediction_nce(pred, want, temperature=self.config.pred_temperature)
        else:
            loss_pred = prediction_loss(pred, want)
        loss_nce = mil_nce(emb.tokens, temperature=self.config.nce_temperature)
        loss = loss_pred + self.config.nce_weight * loss_nce
        if self.config.var_weight > 0 or self.config.cov_weight > 0:
            var, cov = variance_covariance(emb.tokens)
            loss = loss + self.config.var_weight * var + self.config.cov_weight * cov
        loss_tile = loss.new_zeros(())
        if self.contrast_head is not None:
            grid_keys = [k for k in x if k in table and not table[k].tile_token]
            quads = quadrants(x_student, grid_keys, emb.grid)
            z = self.student(quads, patch_size=patch_size, output="patch").mean((1, 2))  # [4B, D]
            loss_tile = subtile_nce(self.contrast_head(z), b, temperature=self.config.tile_nce_temperature)
            loss = loss + self.config.tile_nce_weight * loss_tile
        return JepaOutput(loss, loss_pred.detach(), loss_nce.detach(), loss_tile.detach())

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """Move the target encoder towards the student: t ← m·t + (1 − m)·s."""
        ema_update(self.target, self.student, momentum)
