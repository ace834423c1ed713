"""Batch augmentation on whatever device holds the data (airbench style): random crop with
padding and horizontal flip, vectorised over the batch, no per-image Python loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sim.common.validation import ConfigError  # bad parameters: one error type with sim

from cifar.config import PAD_MODES


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x_u8.float().div_(255.0)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int, mode: str = "zeros", generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by ``pad`` pixels and cut a random window of the original size from each image."""
    if pad == 0:
        return x
    if mode not in PAD_MODES:
        raise ConfigError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")
    n, c, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else "reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[ni, ci, rows, cols]


def augment(
    x_u8: torch.Tensor,
    pad: int = 4,
    flip: bool = True,
    pad_mode: str = "zeros",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 batch (n, 3, H, W) -> augmented float batch in [0, 1]."""
    if pad < 0:
        raise ConfigError(f"pad must be >= 0, got {pad}")
    x = to_float(x_u8)
    x = random_crop(x, pad, pad_mode, generator)
    return random_flip(x, generator) if flip else x
