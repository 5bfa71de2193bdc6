"""Deterministic weights filled from parameter names, shared by the golden-data generator and the tests.

`fill_tensor(name, shape)` seeds a generator with the first 8 bytes of sha256(name), so any implementation that
knows the official parameter names and shapes rebuilds exactly the same weights. Scales keep the network
numerically sane: matrices ~ N(0, 1/fan_in), 1-D `*.weight` (norm gains) ~ 1 + N(0, 0.1²), biases and tokens
~ N(0, 0.02²), the L-TAE master queries `Q` ~ N(0, 0.5²), `pad_parameter` = 0.
"""

from __future__ import annotations

import hashlib
import math

import torch

__all__ = ["fill_state_dict", "fill_tensor"]


def fill_tensor(name: str, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """A float32 tensor of `shape` that depends only on `name` and `shape`."""
    shape = tuple(int(s) for s in shape)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & ((1 << 63) - 1)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "pad_parameter":
        out = torch.zeros(shape, dtype=torch.float64)
    elif leaf == "Q":
        out = 0.5 * noise
    elif len(shape) >= 2 and leaf in ("weight", "lookup_table_weight"):
        fan_in = math.prod(shape[1:]) if leaf == "weight" else shape[1]
        out = noise / math.sqrt(fan_in)
    elif leaf == "weight":
        out = 1.0 + 0.1 * noise
    else:  # biases, cls_token, q_learned
        out = 0.02 * noise
    return out.to(torch.float32)


def fill_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """{name: shape} → {name: fill_tensor(name, shape)}."""
    return {name: fill_tensor(name, shape) for name, shape in shapes.items()}
