"""The quadratic bound of the symmetric ReLU network's margin: the linear dual's slopes plus a
certified bound on the curvature (l2: the trust-region problem in W^T W's eigenbasis; l_inf:
a box SDP), and its per-sample refinement (see sim.certify.bounds for the whole method)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from sim.model.linalg import matmul as mm  # products that do not depend on the thread count

from .bounds import _dual_norm, _kappa, _round_factor


def trs_np(Ut, lam, tau, iters=60):
    """min_{|delta| <= tau} <u, delta> - delta^T A delta for A = V diag(lam) V^T >= 0 per sample,
    in A's eigenbasis (Ut = u V) (reference): by the S-lemma it equals
    max_{mu > lam_max} -1/4 sum_j ut_j^2 / (mu - lam_j) - mu tau^2, and every mu > lam_max gives
    a lower bound. mu by bisection on the derivative, kept >= lam_max + 1e-7 (1 + lam_max) so
    that rounding stays tiny. Returns (value, minimiser in the eigenbasis, mu)."""
    lmax = lam[:, -1]
    nu = np.linalg.norm(Ut, axis=1)
    floor = lmax + 1e-7 * (1 + lmax)
    lo = floor.copy()
    hi = floor + nu / (2 * max(tau, 1e-300)) + 1e-300
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        der = 0.25 * np.sum(Ut * Ut / (mid[:, None] - lam) ** 2, 1) - tau * tau
        up = der > 0
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    mu = hi
    den = mu[:, None] - lam
    return -0.25 * np.sum(Ut * Ut / den, 1) - mu * tau * tau, -Ut / (2 * den), mu


@njit(cache=True, parallel=True)
def _trs_nb(Ut, s, gb, tau, iters, val, Dt, mu_out):
    n, d = Ut.shape
    for q in prange(n):
        g = gb[q]
        lmax = g * s[d - 1]
        floor = lmax + 1e-7 * (1 + lmax)
        nu = 0.0
        for j in range(d):
            nu += Ut[q, j] * Ut[q, j]
        nu = math.sqrt(nu)
        lo = floor
        hi = floor + nu / (2 * max(tau, 1e-300)) + 1e-300
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            der = 0.0
            for j in range(d):
                e = mid - g * s[j]
                der += Ut[q, j] * Ut[q, j] / (e * e)
            if 0.25 * der - tau * tau > 0:
                lo = mid
            else:
                hi = mid
        mu = hi
        acc = 0.0
        for j in range(d):
            e = mu - g * s[j]
            acc += Ut[q, j] * Ut[q, j] / e
            Dt[q, j] = -Ut[q, j] / (2 * e)
        val[q] = -0.25 * acc - mu * tau * tau
        mu_out[q] = mu


def _trs(Ut, s, gb, tau, iters=60):
    n, d = Ut.shape
    val, mu = np.empty(n), np.empty(n)
    Dt = np.empty((n, d))
    _trs_nb(np.ascontiguousarray(Ut), s, gb, float(tau), iters, val, Dt, mu)
    return val, Dt, mu


# ------------------------------------------------------------------ the quadratic bound

@dataclass
class _QuadPre:
    """Per-network data of the quadratic bound (computed once per certify call)."""

    V: np.ndarray | None  # eigenvectors of W^T W (l2)
    s: np.ndarray | None  # its eigenvalues (ascending), shifted up by a rounding allowance
    Q: float  # certified bound: max_{delta in unit ball} |W delta|^2 (l2: s_max; l_inf: box SDP)


def box_quadratic_bound(A: np.ndarray, iters: int = 500, seed: int = 0) -> float:
    """A certified upper bound on max_{|d|_inf <= 1} d^T A d (A symmetric PSD).

    The max-cut SDP relaxation max tr(A X), diag X = 1, X >= 0 has the dual
    min sum_j y_j s.t. diag(y) >= A, and for ANY y, A <= diag(y) + lambda_max(A - diag y) I, so
    the maximum is at most sum_j max(y_j + lambda_max(A - diag y), 0) (eigenvalue with a
    rounding allowance): sound whatever y is. y comes from the low-rank (Burer--Monteiro)
    primal X = V V^T with unit rows, rank ~ sqrt(2 d), improved by the monotone 'mixing'
    iteration V <- rownormalise(A V); y_j = (A X)_jj is then nearly dual optimal.
    """
    d = A.shape[0]
    if d == 0:
        return 0.0
    slack = 1e-9 * max(float(np.trace(A)), 0.0) + 1e-300
    best = d * max(float(np.linalg.eigvalsh(A)[-1]) + slack, 0.0)  # |d|_2^2 lambda_max <= d lambda_max
    k = int(np.ceil(np.sqrt(2 * d))) + 1
    V = np.random.default_rng(seed).standard_normal((d, k))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    for _ in range(iters):
        G = mm(A, V)
        nG = np.linalg.norm(G, axis=1, keepdims=True)
        if np.any(nG == 0):
            break
        V = G / nG
    yv = np.sum(V * mm(A, V), 1)
    lam = float(np.linalg.eigvalsh(A - np.diag(yv))[-1]) + slack
    return min(best, float(np.sum(np.maximum(yv + lam, 0.0))))


def _quad_pre(W, norm) -> _QuadPre:
    G = mm(W.T, W)
    tr = float(np.trace(G))
    if norm == "l2":
        s, V = np.linalg.eigh(G)
        s = np.maximum(s, 0.0) + 1e-9 * tr + 1e-300  # W^T W <= V diag(s) V^T (rounding allowance)
        return _QuadPre(np.ascontiguousarray(V), s, float(s[-1]))
    return _QuadPre(None, None, box_quadratic_bound(G))


def _quadratic(blk, W, b, absW, tau, norm, pre: _QuadPre, A0, best0, steps, lr):
    """Projected Adam ascent on the quadratic bound over (a in [0,1], gamma_i >= 0,
    gamma_bar >= 0), from a = A0, gamma = 0; every iterate evaluated soundly; best per sample."""
    n, m = A0.shape
    r = blk.r
    rs = np.maximum(r, 1e-300)
    rbar = float(np.median(rs)) if m else 1.0
    r2 = r * r
    rf = _round_factor(W)
    A = A0.copy()
    TH = np.zeros_like(A)  # gamma_i = TH / r_i
    TB = np.zeros(n)  # gamma_bar = TB / rbar
    best = best0.copy()
    bestA, bestG = A0.copy(), np.zeros_like(A0)
    pen = np.zeros(n)  # the quadratic penalty at the best iterate (what a refinement can win)
    mom = {}

    def adam(key, x, g, t, step):
        m1, m2 = mom.get(key, (0.0, 0.0))
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        mom[key] = (m1, m2)
        return x + step * (m1 / (1 - 0.9 ** t)) / (np.sqrt(m2 / (1 - 0.999 ** t)) + 1e-12)

    for t in range(1, steps + 1):
        Gm = TH / rs
        gb = TB / rbar
        kap, vs = _kappa(blk.C, blk.V, b, A, Gm)
        U = mm(A, W)
        if norm == "l2":
            lin, Dt, mu = _trs(mm(U, pre.V), pre.s, gb, tau)
            g_u = mm(mm(Dt, pre.V.T), W.T)  # the minimiser delta, mapped to d/da = W delta
            g_gb = -np.sum(Dt * Dt * pre.s[None, :], 1)
            lin_mag = np.abs(lin) + np.linalg.norm(U, axis=1) * tau + mu * tau * tau
        else:
            lin = -tau * np.sum(np.abs(U), 1) - gb * pre.Q * tau * tau
            g_u = -tau * mm(np.sign(U), W.T)
            g_gb = np.full(n, -pre.Q * tau * tau)
            lin_mag = -lin
        over = Gm > gb[:, None]
        resid = np.sum(np.where(over, (Gm - gb[:, None]) * r2, 0.0), 1)
        val = kap.sum(1) + lin - resid
        # rounding: the allowance of the linear bound, each new term's magnitude, and 1e-8
        # relative on the trust-region value (eigenbasis, bisection) -- all generous
        mag = np.sum(Gm * r2, 1) + lin_mag + resid + tau * _dual_norm(mm(np.abs(A), absW), norm)
        sound = val - blk.slack - rf * (1.0 + mag) - 1e-8 * lin_mag
        take = sound > best
        best = np.where(take, sound, best)
        bestA[take], bestG[take] = A[take], Gm[take]
        pen = np.where(take, -tau * _dual_norm(U, norm) - lin + resid, pen)
        gA = -vs + g_u
        gG = vs * vs - np.where(over, r2, 0.0)
        gGb = g_gb + np.sum(np.where(over, r2, 0.0), 1)
        step = lr * 0.5 * (1 + np.cos(np.pi * (t - 1) / steps)) + 1e-3 * lr
        A = np.clip(adam("a", A, gA, t, step), 0.0, 1.0)
        TH = np.maximum(adam("t", TH, gG / rs, t, step), 0.0)
        TB = np.maximum(adam("b", TB, gGb / rbar, t, step), 0.0)
    return best, bestA, bestG, pen


def _refine(blk, W, b, absW, tau, norm, A, Gm, sdp_iters=200):
    """The quadratic bound at given (a, gamma) with the per-sample matrix
    A_s = sum_i gamma_i w_i w_i^T instead of its cheap upper bound gamma_bar W^T W + ...:
    l2, the exact trust-region value in the eigenbasis of A_s; l_inf, the box SDP bound of
    A_s (box_quadratic_bound). Never below the surrogate (the SDP is subadditive). One
    eigendecomposition / SDP per sample: used on the few samples still uncertified."""
    n = A.shape[0]
    kap, _ = _kappa(blk.C, blk.V, b, A, Gm)
    out = np.empty(n)
    rf = _round_factor(W)
    r2 = blk.r * blk.r
    for j in range(n):
        As = mm(W.T * Gm[j], W)
        u = A[j] @ W
        tr = float(np.trace(As))
        if norm == "l2":
            lam, Vs = np.linalg.eigh(As)
            lam = np.maximum(lam, 0.0) + 1e-9 * tr + 1e-300
            val, _, mu = trs_np((u @ Vs)[None, :], lam[None, :], tau)
            lin, lin_mag = float(val[0]), abs(float(val[0])) + np.linalg.norm(u) * tau + float(mu[0]) * tau * tau
        else:
            lin = -tau * float(np.sum(np.abs(u))) - tau * tau * box_quadratic_bound(As, iters=sdp_iters)
            lin_mag = -lin
        mag = float(np.sum(Gm[j] * r2)) + lin_mag + tau * _dual_norm((np.abs(A[j]) @ absW)[None, :], norm)[0]
        out[j] = kap[j].sum() + lin - blk.slack[j] - rf * (1.0 + mag) - 1e-8 * lin_mag
    return out
