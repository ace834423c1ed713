"""Low-rank adversarial fine-tuning: every conv/linear weight becomes W = W_clean + U V^T.

Implemented with torch.nn.utils.parametrize, so the layers stay ordinary Conv2d/Linear
modules.  A conv weight (out, in, kh, kw) is treated as the matrix (out, in*kh*kw), the
same "neuron = output channel" view the purification measures use.  U starts at zero
(so the model equals the clean one exactly at initialisation) and V at a random
orthonormal-ish frame (entries N(0, 1/fan_in)), as in LoRA; W_clean is frozen.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from cifar.models import unwrap, weight_layers
from sim.common.validation import ConfigError  # bad parameters: one error type with sim


class LowRankDelta(nn.Module):
    """Parametrisation W -> W + (U V^T).reshape(W.shape) with U (out, r), V (fan_in, r)."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        out, fan = weight.shape[0], math.prod(weight.shape[1:])
        self.rank = min(rank, out, fan)
        v = torch.randn(fan, self.rank, generator=generator) / math.sqrt(fan)
        self.U = nn.Parameter(torch.zeros(out, self.rank, device=weight.device, dtype=weight.dtype))
        self.V = nn.Parameter(v.to(device=weight.device, dtype=weight.dtype))

    def delta(self) -> torch.Tensor:
        """The update U V^T as an (out, fan_in) matrix."""
        return self.U @ self.V.T

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().reshape(weight.shape).to(weight.dtype)


def add_lowrank(model: nn.Module, rank: int, seed: int = 0, train_vectors: bool = True) -> list[nn.Parameter]:
    """Freeze every conv/linear weight and add a rank-``rank`` update to each (in place).

    Returns the trainable parameters: all U, V and, with ``train_vectors``, the vector
    parameters (BatchNorm affine, linear bias), which are O(width) and are not weights of
    a neuron.  Everything else has requires_grad=False.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    net = unwrap(model)
    if is_lowrank(net):
        raise ValueError("model already has low-rank parametrisations")
    for p in net.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    trainable: list[nn.Parameter] = []
    for _, m in weight_layers(net):
        parametrize.register_parametrization(m, "weight", LowRankDelta(m.weight.detach(), rank, gen))
        m.parametrizations.weight.original.requires_grad_(False)
        lr = m.parametrizations.weight[0]
        trainable += [lr.U, lr.V]
        if train_vectors and m.bias is not None:
            m.bias.requires_grad_(True)
            trainable.append(m.bias)
    if train_vectors:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                for p in (m.weight, m.bias):
                    p.requires_grad_(True)
                    trainable.append(p)
    return trainable


def is_lowrank(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for _, m in weight_layers(unwrap(model)))


def lowrank_modules(model: nn.Module) -> dict[str, LowRankDelta]:
    return {
        name: m.parametrizations.weight[0]
        for name, m in weight_layers(unwrap(model))
        if parametrize.is_parametrized(m, "weight")
    }


def delta_stats(model: nn.Module) -> dict[str, dict]:
    """Per layer: allotted rank, numerical rank of U V^T, and |U V^T| / |W_clean| (Frobenius).

    Computed from the factors, on their device: with V = Q R (thin QR), U V^T = (U R^T) Q^T
    has the singular values of the small (out, r) matrix U R^T, so no (out, fan_in) SVD is
    needed. The rank threshold is matrix_rank's default for the full (out, fan_in) matrix."""
    out = {}
    with torch.no_grad():
        for name, m in weight_layers(unwrap(model)):
            if not parametrize.is_parametrized(m, "weight"):
                continue
            lr = m.parametrizations.weight[0]
            u, v = lr.U.float(), lr.V.float()
            small = u @ torch.linalg.qr(v).R.T
            w0 = m.parametrizations.weight.original.float()
            rtol = torch.finfo(torch.float32).eps * max(u.shape[0], v.shape[0])
            out[name] = {
                "rank": lr.rank,
                "numerical_rank": int(torch.linalg.matrix_rank(small, rtol=rtol).item()) if small.abs().max() > 0 else 0,
                "relative_update": float(small.norm() / w0.norm().clamp_min(1e-12)),
            }
    return out


def merge_lowrank(model: nn.Module) -> nn.Module:
    """Fold W_clean + U V^T into plain weights (in place) and drop the parametrisations."""
    for _, m in weight_layers(unwrap(model)):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_trainable(params) -> int:
    return int(sum(p.numel() for p in params))
