"""Lightweight Temporal Attention Encoder (L-TAE) run per pixel, with date masks and pixel chunks.

Each pixel's time series [T, C] goes through an input MLP (widths C, D/8, D/2, D, 2D, D; Linear + GroupNorm(4)
+ ReLU each), an optional GroupNorm(16) over (channels, dates), a sinusoidal day-of-year encoding (width D/16
repeated over 16 heads), one learned master query per head attending over the dates, an output MLP and a
GroupNorm(16). Parameter names follow the official checkpoint.

Differences from the official code (see docs/MODEL.md): dates marked invalid (padding or cloud, per pixel) take
no part in the attention nor in the input GroupNorm statistics, so they do not influence the output; with every
date valid the computation is the official one. Pixels are processed in chunks so that peak memory grows
linearly with H·W·T; with `checkpoint=True` each chunk is recomputed in the backward pass.

Skipping what is masked (`skip_masked=True`, the default): since an invalid pixel-date does not influence the
output, only the valid pixel-dates are computed. They are packed into one [M, C] tensor (M = valid pixel-dates),
the per-date MLP runs on those rows only, and the per-pixel reductions (input GroupNorm statistics, softmax over
dates, weighted sum) become segment sums over each pixel's rows. A pixel with no valid date attends to nothing:
its output is the output MLP of a zero vector, computed once and shared. Outputs and gradients equal the masked
computation (tested); the cost falls with the share of invalid pixel-dates (cloud, shadow, nodata, padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = ["LTAE"]


class _MasterQueryAttention(nn.Module):
    """One learned query per head over the dates (official name `attention_heads`)."""

    def __init__(self, n_head: int, d_k: int, d_in: int) -> None:
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        self.Q = nn.Parameter(torch.randn(n_head, d_k) * (2.0 / d_k) ** 0.5)
        self.fc1_k = nn.Linear(d_in, n_head * d_k)
        nn.init.normal_(self.fc1_k.weight, mean=0.0, std=(2.0 / d_k) ** 0.5)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """x [N, T, D], valid [N, T] bool or None → [N, D] (heads concatenated)."""
        n, t, d = x.shape
        k = self.fc1_k(x).view(n, t, self.n_head, self.d_k)
        scores = torch.einsum("nthd,hd->nht", k, self.Q.to(k.dtype)) / self.d_k**0.5  # [N, H, T]
        if valid is not None:
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        if valid is not None:  # a pixel with no valid date attends to nothing
            attn = torch.nan_to_num(attn, nan=0.0)
        v = x.view(n, t, self.n_head, d // self.n_head)
        return torch.einsum("nht,nthd->nhd", attn, v).reshape(n, d)

    def forward_packed(self, x: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
        """x [M, D] valid pixel-dates, seg [M] their pixel (sorted, each of the n pixels present) → [n, D].

        The softmax over each pixel's dates is a segment softmax: max, exponentials and sums per pixel.
        """
        m, d = x.shape
        k = self.fc1_k(x).view(m, self.n_head, self.d_k)
        scores = torch.einsum("mhd,hd->mh", k, self.Q.to(k.dtype)) / self.d_k**0.5  # [M, H]
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # softmax in ≥ fp32 (autocast)
        # the per-pixel max only keeps exp() in range; softmax does not depend on it (value and gradient)
        top = scores.new_full((n, self.n_head), float("-inf"))
        top = top.scatter_reduce(0, seg[:, None].expand(m, self.n_head), scores.detach(), "amax")
        e = torch.exp(scores - top.index_select(0, seg))
        total = e.new_zeros(n, self.n_head).index_add(0, seg, e)
        attn = (e / total.index_select(0, seg)).to(x.dtype)
        v = x.view(m, self.n_head, d // self.n_head)
        return x.new_zeros(n, self.n_head, d // self.n_head).index_add(0, seg, attn[..., None] * v).reshape(n, d)


class LTAE(nn.Module):
    """Per-pixel temporal encoder: [B, T, C, H, W] + day of year [B, T] → [B, D, H, W]."""

    def __init__(self, in_channels: int, embed_dim: int, *, n_head: int = 16, d_k: int = 8, period: int = 367,
                 in_norm: bool = False, chunk_pixels: int = 512, skip_masked: bool = True) -> None:  # fmt: skip
        super().__init__()
        d = embed_dim
        widths = [in_channels, d // 8, d // 2, d, 2 * d, d]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.GroupNorm(4, b), nn.ReLU(), nn.Dropout(0.0)]
        self.inconv = nn.Sequential(*layers)
        self.in_norm = nn.GroupNorm(n_head, d) if in_norm else None
        self.attention_heads = _MasterQueryAttention(n_head, d_k, d)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GroupNorm(4, d), nn.ReLU())
        self.out_norm = nn.GroupNorm(n_head, d)
        self.n_head, self.embed_dim, self.chunk_pixels = n_head, d, chunk_pixels
        self.skip_masked = skip_masked
        pe_dim = d // n_head
        denom = torch.pow(float(period), 2 * (torch.arange(pe_dim).float() // 2) / pe_dim)
        self.register_buffer("denom", denom, persistent=False)

    def _date_encoding(self, doy: torch.Tensor) -> torch.Tensor:
        """[N, T] (or [M]) day of year → [N, T, D] (or [M, D]): sin on even, cos on odd channels, per head."""
        table = doy[..., None].float() / self.denom  # [..., D/16]
        enc = torch.empty_like(table)
        enc[..., 0::2] = torch.sin(table[..., 0::2])
        enc[..., 1::2] = torch.cos(table[..., 1::2])
        return enc.repeat(*([1] * (enc.dim() - 1)), self.n_head)

    def _masked_group_norm(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """GroupNorm over (channels of a group, valid dates) of x [N, T, D]."""
        norm = self.in_norm
        assert norm is not None
        if valid is None:
            return F.group_norm(x.transpose(1, 2), norm.num_groups, norm.weight, norm.bias, norm.eps).transpose(1, 2)
        n, t, d = x.shape
        g = norm.num_groups
        xg = x.view(n, t, g, d // g)
        w = valid[:, :, None, None].to(x.dtype)
        count = (w.sum(dim=1, keepdim=True) * (d // g)).clamp(min=1)  # [N, 1, 1, 1]
        mean = (xg * w).sum(dim=(1, 3), keepdim=True) / count
        var = (((xg - mean) ** 2) * w).sum(dim=(1, 3), keepdim=True) / count
        out = ((xg - mean) / torch.sqrt(var + norm.eps)).view(n, t, d)
        return out * norm.weight + norm.bias

    def _packed_group_norm(self, x: torch.Tensor, seg: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """`_masked_group_norm` on packed rows: x [M, D], seg [M] pixel of each row, counts [n] rows per pixel."""
        norm = self.in_norm
        assert norm is not None
        m, d = x.shape
        g = norm.num_groups
        xg = x.view(m, g, d // g)
        count = (counts.to(x.dtype) * (d // g))[:, None]  # [n, 1]
        mean = x.new_zeros(counts.shape[0], g).index_add(0, seg, xg.sum(dim=2)) / count  # [n, G]
        centred = xg - mean.index_select(0, seg)[:, :, None]
        var = x.new_zeros(counts.shape[0], g).index_add(0, seg, (centred**2).sum(dim=2)) / count
        out = (centred / torch.sqrt(var + norm.eps).index_select(0, seg)[:, :, None]).view(m, d)
        return out * norm.weight + norm.bias

    def _tail(self, attended: torch.Tensor) -> torch.Tensor:
        """Output MLP and GroupNorm of the attention output [N, D]."""
        return self.out_norm(self.mlp(attended))

    def _encode_pixels(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """x [N, T, C], doy [N, T], valid [N, T] → [N, D]: every pixel-date computed, invalid ones masked."""
        n, t, c = x.shape
        out = self.inconv(x.reshape(n * t, c)).view(n, t, -1)  # [N, T, D]
        if self.in_norm is not None:
            out = self._masked_group_norm(out, valid)
        out = out + self._date_encoding(doy).to(out.dtype)
        out = self.attention_heads(out, valid)  # [N, D]
        return self._tail(out)

    def _encode_packed(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [N, T, C], doy [N, T], valid [N, T] with ≥ 1 valid date per pixel → [N, D], valid dates only."""
        n, t, c = x.shape
        flat = valid.reshape(-1).nonzero().squeeze(1)  # [M] row-major: pixels in order, dates within
        seg = torch.div(flat, t, rounding_mode="floor")
        out = self.inconv(x.reshape(n * t, c).index_select(0, flat))  # [M, D]
        if self.in_norm is not None:
            out = self._packed_group_norm(out, seg, valid.sum(dim=1))
        out = out + self._date_encoding(doy.reshape(-1).index_select(0, flat)).to(out.dtype)
        return self._tail(self.attention_heads.forward_packed(out, seg, n))

    def _run_chunks(self, fn, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor | None,  # noqa: ANN001
                    checkpoint: bool) -> torch.Tensor:  # fmt: skip
        """Apply fn to pixel chunks and concatenate (chunks only in inference and with checkpointing)."""
        # Chunks bound memory only where activations are not all kept for the backward pass: in inference
        # and with checkpointing. Plain training runs all pixels at once (faster, same memory).
        chunk = self.chunk_pixels if (checkpoint or not torch.is_grad_enabled()) else max(1, x.shape[0])
        chunks = []
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, start + chunk)
            args = (x[sl], doy[sl], None if valid is None else valid[sl])
            if checkpoint and torch.is_grad_enabled():
                chunks.append(_checkpoint(fn, *args, use_reentrant=False))
            else:
                chunks.append(fn(*args))
        return torch.cat(chunks)

    def _forward_skipping(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor,
                          checkpoint: bool) -> torch.Tensor:  # fmt: skip
        """[N, T, C] → [N, D] computing only valid pixel-dates; pixels without any share one output."""
        has = valid.any(dim=1)
        keep = has.nonzero().squeeze(1)
        if keep.numel() == x.shape[0]:
            return self._run_chunks(self._encode_packed, x, doy, valid, checkpoint)
        parts = []
        if keep.numel():
            sel = (x.index_select(0, keep), doy.index_select(0, keep), valid.index_select(0, keep))
            parts.append(self._run_chunks(self._encode_packed, *sel, checkpoint))
        # what the masked computation gives a pixel that attends to nothing: the tail of a zero vector
        dtype = parts[0].dtype if parts else x.dtype
        parts.append(self._tail(x.new_zeros(1, self.embed_dim, dtype=dtype)).to(dtype))
        order = torch.full((x.shape[0],), keep.numel(), dtype=torch.long, device=x.device)
        order[keep] = torch.arange(keep.numel(), device=x.device)
        return torch.cat(parts).index_select(0, order)

    def forward(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor | None = None, *,
                checkpoint: bool = False) -> torch.Tensor:  # fmt: skip
        """Encode every pixel's time series.

        Args:
            x: [B, T, C, H, W] standardised values.
            doy: [B, T] day of year.
            valid: [B, T, H, W] bool, True where a date is usable at a pixel; None = all valid.
            checkpoint: Recompute each pixel chunk in the backward pass (activation checkpointing).

        Returns:
            [B, D, H, W].
        """
        b, t, c, h, w = x.shape
        pix = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)  # [BHW, T, C]
        dates = doy[:, None, :].expand(b, h * w, t).reshape(b * h * w, t)
        mask = None if valid is None else valid.permute(0, 2, 3, 1).reshape(b * h * w, t).bool()
        if mask is not None and bool(mask.all()):
            mask = None  # nothing masked: the dense computation is the same and cheaper
        if mask is not None and self.skip_masked:
            out = self._forward_skipping(pix, dates, mask, checkpoint)
        else:
            out = self._run_chunks(self._encode_pixels, pix, dates, mask, checkpoint)
        return out.view(b, h, w, self.embed_dim).permute(0, 3, 1, 2)
