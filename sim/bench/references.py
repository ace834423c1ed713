"""What the engine is timed against: (a) NumPy written straight, (b) PyTorch with autograd
(torch imported inside the functions only: sim never loads torch unless a benchmark runs),
(c) the matrix products an operation cannot avoid, by BLAS alone."""
from __future__ import annotations

import numpy as np

from .config import LR, TAU


# ---------------------------------------------------------------------------------------------
# (a) NumPy references: the maths written straight, as a user would


def _np_bias(W, beta):
    return (beta * np.linalg.norm(W, axis=1)).astype(W.dtype)


def _relu(z):
    return np.maximum(z, 0)


def _drelu(z):
    return (z > 0).astype(z.dtype)


def _np_forward(W, X, beta):
    """U, the two shifted pre-activations and f, as SPEC section 2 writes them."""
    b = _np_bias(W, beta)
    U = X @ W.T
    zp, zm = U - b, -U - b
    return zp, zm, (_relu(zp) - _relu(zm)).sum(axis=1)


def _np_loss_grad(W, X, y, beta):
    from scipy.special import expit

    zp, zm, f = _np_forward(W, X, beta)
    yf = y * f
    loss = np.logaddexp(0, -yf).mean()
    dldf = -y * expit(-yf)  # d/df log(1 + exp(-y f))
    G = (_drelu(zp) + _drelu(zm)) * (dldf / len(X))[:, None]  # dl/du = dl/df (act'(u - b) + act'(-u - b))
    return loss, G.T @ X, f


def np_step(W, X, y, beta):
    loss, gW, _ = _np_loss_grad(W, X, y, beta)
    return W - LR * gW


def _np_output_grad(W, X, beta):
    zp, zm, f = _np_forward(W, X, beta)
    return (_drelu(zp) + _drelu(zm)) @ W, f


def _np_l2_unit(g):
    n = np.linalg.norm(g, axis=1, keepdims=True)
    return np.where(n > 0, g / np.where(n > 0, n, 1), 0)


def np_fgm_step(W, X, y, beta):
    J, _ = _np_output_grad(W, X, beta)
    Xa = X + TAU * _np_l2_unit(-y[:, None] * J)
    return np_step(W, Xa, y, beta)


def np_pgd(W, X, y, beta, steps=20):
    alpha0 = 2.5 / steps * TAU
    delta = np.zeros_like(X)
    best = np.full(len(X), np.inf, dtype=X.dtype)
    for t in range(steps):
        alpha = alpha0 * (0.5 if t >= steps // 2 else 1.0) * (0.5 if t >= (3 * steps) // 4 else 1.0)
        J, f = _np_output_grad(W, X + delta, beta)
        best = np.minimum(best, y * f)
        delta = delta + alpha * _np_l2_unit(-y[:, None] * J)
        n = np.linalg.norm(delta, axis=1, keepdims=True)
        delta = delta * np.minimum(1, TAU / np.maximum(n, 1e-30))
    _, _, f = _np_forward(W, X + delta, beta)
    return np.minimum(best, y * f)


# ---------------------------------------------------------------------------------------------
# (b) PyTorch references with autograd


def _torch_f(W, X, beta):
    import torch

    b = beta * W.detach().norm(dim=1)
    U = X @ W.T
    return (torch.relu(U - b) - torch.relu(-U - b)).sum(dim=1)


def torch_step(W, X, y, beta):
    import torch

    W = W.detach().requires_grad_(True)
    loss = torch.nn.functional.softplus(-y * _torch_f(W, X, beta)).mean()
    loss.backward()
    with torch.no_grad():
        return W - LR * W.grad


def _torch_unit(g):
    import torch

    n = g.norm(dim=1, keepdim=True)
    return torch.where(n > 0, g / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(g))


def torch_fgm_step(W, X, y, beta):
    import torch

    Xr = X.detach().requires_grad_(True)
    f = _torch_f(W, Xr, beta)
    (J,) = torch.autograd.grad(f.sum(), Xr)
    Xa = (X + TAU * _torch_unit(-y[:, None] * J)).detach()
    return torch_step(W, Xa, y, beta)


def torch_pgd(W, X, y, beta, steps=20):
    import torch

    alpha0 = 2.5 / steps * TAU
    delta = torch.zeros_like(X)
    best = torch.full((len(X),), float("inf"), dtype=X.dtype)
    for t in range(steps):
        alpha = alpha0 * (0.5 if t >= steps // 2 else 1.0) * (0.5 if t >= (3 * steps) // 4 else 1.0)
        xr = (X + delta).requires_grad_(True)
        f = _torch_f(W, xr, beta)
        (J,) = torch.autograd.grad(f.sum(), xr)
        with torch.no_grad():
            best = torch.minimum(best, y * f)
            delta = delta + alpha * _torch_unit(-y[:, None] * J)
            n = delta.norm(dim=1, keepdim=True)
            delta = delta * torch.clamp(TAU / torch.clamp(n, min=1e-30), max=1.0)
    with torch.no_grad():
        return torch.minimum(best, y * _torch_f(W, X + delta, beta))


# ---------------------------------------------------------------------------------------------
# (c) the products an operation cannot avoid, by the same BLAS alone


def blas_step(W, X):
    U = X @ W.T
    return U.T @ X


def blas_fgm(W, X):
    U = X @ W.T
    J = U @ W  # G' W (dense: the BLAS does not skip zeros)
    Ua = X @ W.T  # X' W^T
    del J
    return Ua.T @ X  # G^T X'


def blas_pgd(W, X, steps=20):
    for _ in range(steps):
        U = X @ W.T
        U @ W
    return X @ W.T
