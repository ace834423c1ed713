"""Numba kernels of the symmetric two-layer network and its logistic loss.

Network: f(x) = sum_i g(u_i, b_i),  u = W x,  g(u, b) = act(u - b) - act(-u - b).
Loss: mean over samples of log(1 + exp(-y f(x))).

Derivatives of one neuron:
    dg/du = act'(u - b) + act'(-u - b),     dg/db = act'(-u - b) - act'(u - b).

Subgradient at the ReLU kink: act'(0) = 0 (the convention of torch.relu's backward),
so a neuron with |u| == b exactly contributes no gradient. The smoothed ReLU is C^1
and has no kink.

Activations: code 0 = ReLU; code 1 = smoothed ReLU of degree q and width rho:
    act(z) = 0 (z <= 0),  z^q / (q rho^(q-1)) (0 < z <= rho),  z - (1 - 1/q) rho (z > rho).

Layout of the work, so that results are bit-identical whatever the number of threads:
- the two matrix products (U = X W^T and grad_W = G^T X, or grad_x = G W) go through
  BLAS; each entry of a product is reduced by one thread in a fixed order;
- the nonlinear stage runs in parallel over samples (prange), each sample written by
  exactly one iteration, with no reduction across iterations;
- the only reduction over samples inside a kernel (the bias gradient) is kept per
  fixed chunk of rows, whose count does not depend on the thread count, and the chunk
  sums are added in order; the loss is summed by NumPy outside.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

RELU, SMOOTH_RELU = 0, 1
CHUNK = 128  # rows per parallel chunk (fixed, so reductions do not depend on threads)


@njit(cache=True, inline="always")
def _act(z, act, q, rho):
    if z <= 0.0:
        return 0.0
    if act == RELU:
        return z
    if z <= rho:
        return z ** q / (q * rho ** (q - 1))
    return z - (1.0 - 1.0 / q) * rho


@njit(cache=True, inline="always")
def _dact(z, act, q, rho):
    if z <= 0.0:
        return 0.0
    if act == RELU:
        return 1.0
    if z <= rho:
        return (z / rho) ** (q - 1)
    return 1.0


@njit(cache=True, inline="always")
def _softplus(t):
    """log(1 + exp(t)) without overflow."""
    if t > 0:
        return t + math.log1p(math.exp(-t))
    return math.log1p(math.exp(t))


@njit(cache=True, inline="always")
def _sigmoid(t):
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


@njit(cache=True, parallel=True)
def outputs_from_preacts(U, b, act, q, rho):
    """f_n = sum_i g(U[n, i], b_i): the network output from the pre-activations."""
    n, m = U.shape
    f = np.empty(n, dtype=np.float64)
    for r in prange(n):
        s = 0.0
        for i in range(m):
            u = U[r, i]
            s += _act(u - b[i], act, q, rho) - _act(-u - b[i], act, q, rho)
        f[r] = s
    return f


@njit(cache=True, parallel=True)
def backward_stage(U, y, b, act, q, rho, scale, want_bias):
    """The nonlinear stage of the backward pass, in place.

    On entry U holds the pre-activations (n x m). On exit U holds
    G[n, i] = scale * dl_n/df_n * dg/du(U[n, i], b_i), where l_n is the logistic loss
    of sample n. Returns (f, loss_n, dl_n/df_n, grad_b) as float64 arrays, with
    grad_b[i] = scale * sum_n dl_n/df_n * dg/db(U[n, i], b_i) when want_bias (else 0).
    Use scale = 1/n for the gradient of the mean loss, scale = 1 for per-sample
    input gradients.

    Parallel over fixed chunks of CHUNK rows; the bias sums are kept per chunk and
    added in chunk order, so nothing depends on the number of threads.
    """
    n, m = U.shape
    f = np.empty(n, dtype=np.float64)
    loss = np.empty(n, dtype=np.float64)
    dldf = np.empty(n, dtype=np.float64)
    n_chunks = (n + CHUNK - 1) // CHUNK
    part = np.zeros((n_chunks if want_bias else 1, m), dtype=np.float64)
    for c in prange(n_chunks):
        for r in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            s = 0.0
            for i in range(m):
                u = U[r, i]
                s += _act(u - b[i], act, q, rho) - _act(-u - b[i], act, q, rho)
            f[r] = s
            yf = y[r] * s
            loss[r] = _softplus(-yf)
            g = -y[r] * _sigmoid(-yf)
            dldf[r] = g
            gs = g * scale
            for i in range(m):
                u = U[r, i]
                dp = _dact(u - b[i], act, q, rho)
                dm = _dact(-u - b[i], act, q, rho)
                if want_bias:
                    part[c, i] += g * (dm - dp)
                U[r, i] = gs * (dp + dm)
    grad_b = np.zeros(m, dtype=np.float64)
    if want_bias:
        for c in range(n_chunks):
            for i in range(m):
                grad_b[i] += part[c, i]
        for i in range(m):
            grad_b[i] *= scale
    return f, loss, dldf, grad_b


@njit(cache=True, parallel=True)
def output_grad_stage(U, b, act, q, rho):
    """In place: U (pre-activations) becomes dg/du(U[n, i], b_i); returns f (float64).

    Then df/dx = U @ W: the input gradient of the output itself, which attacks follow
    (its direction equals that of the logistic loss gradient, without the underflow of
    sigmoid(-y f) on confidently classified points).
    """
    n, m = U.shape
    f = np.empty(n, dtype=np.float64)
    for r in prange(n):
        s = 0.0
        for i in range(m):
            u = U[r, i]
            s += _act(u - b[i], act, q, rho) - _act(-u - b[i], act, q, rho)
            U[r, i] = _dact(u - b[i], act, q, rho) + _dact(-u - b[i], act, q, rho)
        f[r] = s
    return f


def set_threads(n: int) -> None:
    """Set Numba's thread count (BLAS threads are set by the environment / threadpoolctl)."""
    numba.set_num_threads(n)
