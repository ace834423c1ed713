r"""Certified robustness of the symmetric two-layer ReLU network: sound lower bounds on
the worst-case margin min_{|delta| <= tau} y f(x + delta), in l2 and l_inf balls.

Attacks give upper bounds on robust accuracy; the bounds here give lower bounds, so a
robust accuracy is reported as the interval [certified, attacked] (SPEC section 3).

The problem
-----------
f(x) = sum_i act(<w_i, x> - b_i) - act(-<w_i, x> - b_i). With act = ReLU and b_i >= 0
each neuron is the shrinkage (soft threshold) of its projection u_i = <w_i, x>:

    g_i(u) = sign(u) max(|u| - b_i, 0) = relu(u - b_i) + min(0, u + b_i),

monotone, 1-Lipschitz, with slopes 1, 0, 1 on (-inf, -b_i], [-b_i, b_i], [b_i, inf):
a convex kink at +b_i and a concave kink at -b_i. f is odd and the balls are symmetric,
so with c_i = y <w_i, x> and v = W delta

    min_{|delta| <= tau} y f(x + delta) = min_{|delta| <= tau} sum_i g_i(c_i + <w_i, delta>).   (P)

Each projection moves by at most r_i = tau |w_i|_* (|.|_* the dual norm: l2 for l2,
l1 for l_inf), and this is attained, so v_i in [-r_i, r_i] exactly, one at a time.

Bounds (each sound for every sample; the names are the `method` values)
-----------------------------------------------------------------------
interval   g_i is increasing, so (P) >= sum_i g_i(c_i - r_i). It treats the m projections
           as independent, i.e. lets each neuron take its own worst perturbation.

Lagrangian dual ('linear', 'dual'). Write (P) as min sum_i g_i(c_i + v_i) over
v_i in [-r_i, r_i], |delta| <= tau, v = W delta, and dualise the coupling v = W delta
with multipliers a in R^m. Weak duality gives, for EVERY a,

    (P) >= D(a) = sum_i beta_i(a_i) - tau |W^T a|_*,
    beta_i(a) = min_{|v| <= r_i} g_i(c_i + v) - a v,

since min_{|delta| <= tau} <W^T a, delta> = -tau |W^T a|_* (dual norm). The function
g_i(c_i + v) - a v is piecewise linear in v, so beta_i(a) is the minimum over at most
four breakpoints v in {-r_i, -b_i - c_i, b_i - c_i, r_i} (those inside [-r_i, r_i]):
D(a) is computed exactly (up to float rounding, for which a slack is subtracted), and
is a sound lower bound whatever a is; an optimiser only has to find a good a, never to
converge. a_i is the slope of a linear lower bound a_i v + beta_i(a_i) on neuron i over
its interval (a linear relaxation), and the exact minimum of the resulting linear
function over the ball is the dual-norm term. The coupling through the Gram matrix
enters through |W^T a|_2^2 = a^T W W^T a: aligned rows add up, nearly orthogonal rows
add in quadrature instead of linearly as in 'interval'. Facts used:
- D(0) = the interval bound.
- Only a in [0, 1]^m matters: for a_i < 0, beta_i(a_i) = beta_i(0) + a_i r_i while the
  norm term gains at most |a_i| tau |w_i|_* = |a_i| r_i, so clipping a_i to 0 does not
  lower D (symmetrically above 1, since g_i has slopes in [0, 1]).
- max_a D(a) equals (strong duality) min over the ball of sum_i conv g_i(c_i + <w_i, delta>),
  conv g_i the convex envelope of g_i on [c_i - r_i, c_i + r_i]: the tightest bound that
  relaxes each neuron alone (for l_inf the LP with the per-neuron convex hulls). It is
  exact when no interval contains a concave kink -b_i (then (P) is convex), e.g. the
  orthonormal-row case of the tests (water-filling, closed form). It is weak when many
  neurons sit in their dead zone with intervals straddling both kinks: the envelope
  there is below g by up to (r - b) b / (r + b) per neuron even at delta = 0, and those
  losses add up over hundreds of neurons (clean and adversarially trained networks of
  `verify` alike). The quadratic bound below is made for that case.

quadratic  For any a_i and gamma_i >= 0, on |v| <= r_i
               g_i(c_i + v) >= kappa_i + a_i v - gamma_i v^2,
               kappa_i(a_i, gamma_i) = min_{|v| <= r_i} g_i(c_i + v) - a_i v + gamma_i v^2,
           computed exactly (on each linear piece of g_i a convex quadratic: minimum at a
           breakpoint or at the clipped vertex). A dead-zone neuron now loses only
           gamma_i v_i^2 (e.g. gamma = 1 / (4 (b + c)) makes the bound exact at v = 0).
           Summing, (P) >= sum_i kappa_i + min_{delta in B} <u, delta> - delta^T A delta
           with u = W^T a, A = sum_i gamma_i w_i w_i^T: the quadratic losses of many neurons
           add up through the top of the spectrum of A, not neuron by neuron -- with
           nearly orthogonal rows (a purified network) that is the whole gain. To bound
           the coupled term for all samples cheaply: for any gamma_bar >= 0,
           A <= gamma_bar W^T W + sum_i (gamma_i - gamma_bar)^+ w_i w_i^T and
           max_{delta in B} <w_i, delta>^2 = r_i^2, so the term is at least
           T(u, gamma_bar) - sum_i (gamma_i - gamma_bar)^+ r_i^2, where
           l2:    T = min_{|delta| <= tau} <u, delta> - gamma_bar delta^T W^T W delta, a
                  trust-region problem, solved exactly in the eigenbasis of W^T W (once per
                  network): T = max_{mu > gamma_bar s_max} -1/4 sum_j ut_j^2 / (mu - gamma_bar s_j)
                  - mu tau^2 (S-lemma; every such mu gives a valid bound);
           l_inf: T = -tau |u|_1 - gamma_bar tau^2 Q with Q >= max_{|d|_inf <= 1} d^T W^T W d,
                  certified by the dual of the max-cut SDP relaxation (box_quadratic_bound,
                  once per network; much smaller than d lambda_max).
           The bound is concave in (a, gamma, gamma_bar) and maximised by projected Adam
           steps started from the 'dual' solution (gamma = 0 gives back D(a), so
           'quadratic' >= 'dual'); every iterate is evaluated soundly. Samples still
           uncertified whose quadratic penalty exceeds their deficit are re-evaluated with
           their own A_s = sum_i gamma_i w_i w_i^T (exact trust region in its eigenbasis for
           l2, its own box SDP bound for l_inf; never worse, one eigendecomposition or SDP
           per such sample).

linear     D(a) at the slopes of the convex envelope of each neuron at the centre v_i = 0
           (tight at the unperturbed point, as in CROWN) and at the chord slopes; the
           better of the two per sample. One pass.
dual       max_a D(a) by accelerated proximal ascent (FISTA): the beta_i are concave
           piecewise linear with an exact prox, the norm term is smooth for l2 and
           Huber-smoothed for l_inf; started from 'linear', best value kept.
best       per sample the maximum of all of the above.

Cost control: the optimised bounds ('dual', 'quadratic') run only where they can change
the certificate: samples with a positive clean margin, inside `focus` if given (e.g. the
points no attack breaks), not yet certified by a cheaper bound (tight=True: every sample
with a positive clean margin, for the tightest lower values). Elsewhere a method reports
the best cheaper bound (still sound). Per-element work runs in Numba kernels (parallel
over samples, so the result does not depend on the thread count), each with a NumPy
reference (beta_np, kappa_np, prox_np, trs_np) that the tests compare with.

Only ReLU with b_i >= 0 is supported (the shrinkage structure); other activations or a
negative bias raise a ValueError. Computations are in float64 (float32 weights convert
exactly); the bound certifies the real-arithmetic network with those weights, and every
bound subtracts a generous allowance for float rounding. The exact verifier (MILP for
l_inf, outer approximation + MILP for l2) is in sim.exact.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from sim.model.linalg import matmul as mm  # products that do not depend on the thread count

from sim.common.norms import NORMS, check_norm  # noqa: F401 - NORMS re-exported
from sim.common.validation import ConfigError

METHODS = ("interval", "linear", "dual", "quadratic", "best")
_EPS = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- checks

def check_args(norm: str, tau: float, method: str | None = None) -> None:
    check_norm(norm)
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)) \
            or not (np.isfinite(tau) and tau >= 0):
        raise ConfigError(f"tau={tau!r} is invalid: allowed values in [0, inf)")
    if method is not None and method not in METHODS:
        raise ConfigError(f"method={method!r} is invalid: allowed " + ", ".join(repr(m) for m in METHODS))


def shrinkage_params(net) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) in float64 for a ReLU TwoLayerNet with b >= 0; ValueError otherwise."""
    act = getattr(net.model, "activation", "relu")
    if act != "relu":
        raise ValueError(f"activation={act!r} is not supported by the certificates: only 'relu' "
                         "(each neuron a shrinkage of its projection)")
    W = np.asarray(net.W, dtype=np.float64)
    b = np.asarray(net.bias(), dtype=np.float64)
    if b.shape != (W.shape[0],):
        raise ValueError(f"bias shape {b.shape} does not match width {W.shape[0]}")
    if not np.all(np.isfinite(W)) or not np.all(np.isfinite(b)):
        raise ValueError("network weights or biases are not finite")
    if np.any(b < 0):
        raise ValueError(f"bias b_i={float(b.min())!r} is invalid for the certificates: allowed b_i >= 0 "
                         "(with b_i < 0 a neuron is no longer a shrinkage)")
    return W, b


def _data(X, y, d):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if X.ndim != 2 or X.shape[1] != d:
        raise ValueError(f"X of shape {X.shape} is invalid: expected (n, {d})")
    if y.shape != (X.shape[0],) or not np.all(np.abs(y) == 1):
        raise ValueError("y is invalid: expected one label in {-1, +1} per row of X")
    return X, y


def dual_norm_rows(W: np.ndarray, norm: str) -> np.ndarray:
    """|w_i|_* per row: l2 norm for the l2 ball, l1 norm for the l_inf ball."""
    return np.linalg.norm(W, axis=1) if norm == "l2" else np.sum(np.abs(W), axis=1)


def _dual_norm(Z: np.ndarray, norm: str) -> np.ndarray:
    return np.linalg.norm(Z, axis=1) if norm == "l2" else np.sum(np.abs(Z), axis=1)


def shrink(u, b):
    """g(u) = sign(u) max(|u| - b, 0), elementwise (b broadcast)."""
    return np.sign(u) * np.maximum(np.abs(u) - b, 0.0)


def margins(net_or_Wb, X, y) -> np.ndarray:
    """y f(x) in float64 from (W, b) of the shrinkage network (reference, no kernels)."""
    W, b = net_or_Wb if isinstance(net_or_Wb, tuple) else shrinkage_params(net_or_Wb)
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    return np.asarray(y, dtype=np.float64) * shrink(X @ W.T, b[None, :]).sum(1)


# -------------------------------------------------- per-element kernels and references

def beta_np(G, V, A):
    """beta_i(a_i) = min_k G_k - a V_k over the breakpoints, and the minimising V (reference)."""
    vals = G - A[..., None] * V
    k = np.argmin(vals, axis=2)
    return np.take_along_axis(vals, k[..., None], 2)[..., 0], np.take_along_axis(V, k[..., None], 2)[..., 0]


@njit(cache=True, parallel=True)
def _beta_nb(G, V, A, beta, vk):
    n, m = A.shape
    for s in prange(n):
        for i in range(m):
            a = A[s, i]
            best = G[s, i, 0] - a * V[s, i, 0]
            bv = V[s, i, 0]
            for k in range(1, 4):
                val = G[s, i, k] - a * V[s, i, k]
                if val < best:
                    best = val
                    bv = V[s, i, k]
            beta[s, i] = best
            vk[s, i] = bv


def _beta(G, V, A):
    beta = np.empty(A.shape)
    vk = np.empty(A.shape)
    _beta_nb(G, V, np.ascontiguousarray(A), beta, vk)
    return beta, vk


_PIECE_SLOPES = np.array([1.0, 0.0, 1.0])


def kappa_np(C, V, b, A, Gm):
    """kappa_i(a, gamma) = min_{|v| <= r_i} g_i(c_i + v) - a v + gamma v^2 and its argmin v
    (reference): on each linear piece [V_k, V_k+1] of g_i (slopes 1, 0, 1) a convex quadratic,
    so the minimum is at a breakpoint or at the clipped vertex (a - slope) / (2 gamma)."""
    cands = [V[..., k] for k in range(4)]
    pos = Gm > 0
    g2 = 2 * np.where(pos, Gm, 1.0)
    for k in range(3):
        vert = np.where(pos, (A - _PIECE_SLOPES[k]) / g2, V[..., k])
        cands.append(np.clip(vert, V[..., k], V[..., k + 1]))
    Cd = np.stack(cands, -1)
    phi = shrink(C[..., None] + Cd, b[None, :, None]) - A[..., None] * Cd + Gm[..., None] * Cd * Cd
    k = np.argmin(phi, -1)
    return np.take_along_axis(phi, k[..., None], -1)[..., 0], np.take_along_axis(Cd, k[..., None], -1)[..., 0]


@njit(cache=True, parallel=True)
def _kappa_nb(C, V, b, A, Gm, kap, vs):
    n, m = A.shape
    for s in prange(n):
        for i in range(m):
            c = C[s, i]
            a = A[s, i]
            g = Gm[s, i]
            bi = b[i]
            best = np.inf
            bv = 0.0
            for k in range(7):
                if k < 4:
                    v = V[s, i, k]
                else:
                    kk = k - 4
                    if g > 0:
                        slope = 0.0 if kk == 1 else 1.0
                        v = min(max((a - slope) / (2 * g), V[s, i, kk]), V[s, i, kk + 1])
                    else:
                        v = V[s, i, kk]
                u = c + v
                au = abs(u) - bi
                gv = 0.0
                if au > 0:
                    gv = au if u > 0 else -au
                phi = gv - a * v + g * v * v
                if phi < best:
                    best = phi
                    bv = v
            kap[s, i] = best
            vs[s, i] = bv


def _kappa(C, V, b, A, Gm):
    kap = np.empty(A.shape)
    vs = np.empty(A.shape)
    _kappa_nb(C, V, b, np.ascontiguousarray(A), np.ascontiguousarray(Gm), kap, vs)
    return kap, vs


def prox_np(Z, T, V, G, lo, hi):
    """argmax_{a in [0,1]} beta(a) - (a - z)^2 / (2 t) elementwise (reference): beta is the
    minimum of the lines G_k - a V_k, line k being the minimum on [lo_k, hi_k]; the best of
    the per-piece maximisers, clipped to [0, 1] (1-D strong concavity)."""
    ok = (lo <= hi) & (lo < np.inf) & (hi > -np.inf)
    cand = np.where(ok, np.clip(Z[..., None] - T[:, None, None] * V, lo, hi), 0.0)
    obj = np.where(ok, G - cand * V - (cand - Z[..., None]) ** 2 / (2 * T[:, None, None]), -np.inf)
    k = np.argmax(obj, axis=2)
    return np.clip(np.take_along_axis(cand, k[..., None], axis=2)[..., 0], 0.0, 1.0)


@njit(cache=True, parallel=True)
def _prox_nb(Z, T, V, G, lo, hi, out):
    n, m = Z.shape
    for s in prange(n):
        t = T[s]
        for i in range(m):
            z = Z[s, i]
            best = -np.inf
            ba = 0.0
            for k in range(4):
                l, h = lo[s, i, k], hi[s, i, k]
                if not (l <= h and l < np.inf and h > -np.inf):
                    continue
                c = min(max(z - t * V[s, i, k], l), h)
                obj = G[s, i, k] - c * V[s, i, k] - (c - z) ** 2 / (2 * t)
                if obj > best:
                    best = obj
                    ba = c
            out[s, i] = min(max(ba, 0.0), 1.0)


def _prox(Z, T, V, G, lo, hi):
    out = np.empty(Z.shape)
    _prox_nb(np.ascontiguousarray(Z), T, V, G, lo, hi, out)
    return out


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


# -------------------------------------------------------------------- the linear dual

@dataclass
class _Block:
    """Per-sample, per-neuron data of (P) for a block of samples."""

    C: np.ndarray  # c_i = y <w_i, x>          (n x m)
    r: np.ndarray  # r_i = tau |w_i|_*          (m,)
    V: np.ndarray  # breakpoints v              (n x m x 4), sorted, clipped into [-r_i, r_i]
    G: np.ndarray  # g_i(c_i + v) at them       (n x m x 4)
    slack: np.ndarray  # rounding allowance per sample (n,)

    def rows(self, idx) -> "_Block":
        return _Block(self.C[idx], self.r, self.V[idx], self.G[idx], self.slack[idx])


def _round_factor(W) -> float:
    return 8.0 * (W.shape[1] + W.shape[0] + 16) * _EPS


def _block(W, b, X, y, tau, norm):
    C = y[:, None] * mm(X, W.T)
    r = tau * dual_norm_rows(W, norm)
    lo = -r[None, :]
    V = np.empty(C.shape + (4,))
    V[..., 0] = lo
    V[..., 1] = np.clip(-b[None, :] - C, lo, r[None, :])
    V[..., 2] = np.clip(b[None, :] - C, lo, r[None, :])
    V[..., 3] = r[None, :]
    G = shrink(C[..., None] + V, b[None, :, None])
    # float rounding: c_i carries <= d eps sum_j |x_j w_ij| error (g is 1-Lipschitz) and a
    # sum of m terms <= m eps times the sum of magnitudes; a generous common allowance:
    scale = mm(np.abs(X), np.abs(W).T).sum(1) + np.abs(C).sum(1) + np.sum(r + b)
    return _Block(C, r, V, G, _round_factor(W) * (1.0 + scale))


def _sound_dual(blk: _Block, A, W, absW, tau, norm, want_grad=False):
    """D(a) minus the rounding allowance (a sound bound for every a) and a supergradient."""
    beta, vk = _beta(blk.G, blk.V, A)
    Z = mm(A, W)
    D = beta.sum(1) - tau * _dual_norm(Z, norm)
    D = D - blk.slack - _round_factor(W) * tau * _dual_norm(mm(np.abs(A), absW), norm)
    if not want_grad:
        return D, None
    if norm == "l2":
        nz = np.linalg.norm(Z, axis=1, keepdims=True)
        S = np.where(nz > 0, Z / np.where(nz > 0, nz, 1.0), 0.0)
    else:
        S = np.sign(Z)
    return D, -vk - tau * mm(S, W.T)


def _linear_slopes(blk: _Block) -> list[np.ndarray]:
    """Slopes of the convex envelope at v = 0 (tangent at the centre) and the chord slopes."""
    V, G, r = blk.V, blk.G, blk.r
    best_val = np.full(blk.C.shape, np.inf)
    best_slope = np.zeros(blk.C.shape)
    for j in range(3):
        for k in range(j + 1, 4):
            vj, vk, gj, gk = V[..., j], V[..., k], G[..., j], G[..., k]
            ok = (vj <= 0) & (vk > 0)
            slope = (gk - gj) / np.where(ok, vk - vj, 1.0)
            val = gj - slope * vj  # the chord through j and k at v = 0
            take = ok & (val < best_val)
            best_val = np.where(take, val, best_val)
            best_slope = np.where(take, slope, best_slope)
    chord = (G[..., 3] - G[..., 0]) / np.where(r > 0, 2 * r, 1.0)[None, :]
    return [np.clip(best_slope, 0.0, 1.0), np.clip(chord, 0.0, 1.0)]


def _pieces(blk: _Block):
    """For each line k of beta(a) = min_k G_k - a V_k, the interval [lo_k, hi_k] of a on which
    it is the minimum (lo > hi: never). Lines with smaller V win for small a."""
    V, G = blk.V, blk.G
    lo = np.full(V.shape, -np.inf)
    hi = np.full(V.shape, np.inf)
    for k in range(4):
        for j in range(4):
            if j == k:
                continue
            dv = V[..., k] - V[..., j]
            dg = G[..., k] - G[..., j]
            with np.errstate(over="ignore"):  # dv ~ denormal for tau ~ 1e-320: tie = +-inf is right
                tie = dg / np.where(dv != 0, dv, 1.0)
            lo[..., k] = np.where(dv > 0, np.maximum(lo[..., k], tie), lo[..., k])
            hi[..., k] = np.where(dv < 0, np.minimum(hi[..., k], tie), hi[..., k])
            # equal V: the line with the larger G (or the later index on a tie) never wins
            dead = (dv == 0) & ((dg > 0) | ((dg == 0) & (k > j)))
            lo[..., k] = np.where(dead, np.inf, lo[..., k])
    return lo, hi


def _smooth_norm(Z, norm, mu):
    """h(u) = |u|_2 (l2) or the Huber smoothing of |u|_1 (l_inf, width mu per sample); value, grad."""
    if norm == "l2":
        nz = np.linalg.norm(Z, axis=1)
        S = np.where(nz[:, None] > 0, Z / np.where(nz > 0, nz, 1.0)[:, None], 0.0)
        return nz, S
    az = np.abs(Z)
    mu = mu[:, None]
    return np.where(az <= mu, Z * Z / (2 * mu), az - mu / 2).sum(1), np.clip(Z / mu, -1.0, 1.0)


def _fista(blk, W, absW, tau, norm, A0, best0, steps):
    """Accelerated proximal ascent on D(a) = sum_i beta_i(a_i) - tau h(W^T a) over [0, 1]^m.

    The norm term is smooth for l2 (away from 0) and Huber-smoothed for l_inf (width
    shrinking along the run); the beta_i enter through their exact prox. Step sizes per
    sample by backtracking, momentum with adaptive restart. Every iterate is scored with the
    exact (unsmoothed) D, so the result is sound whatever the convergence.
    """
    n = A0.shape[0]
    lo, hi = _pieces(blk)
    A = A0.copy()
    Yp = A0.copy()
    best, bestA = best0.copy(), A0.copy()
    theta = np.ones(n)
    fro2 = float(np.sum(W * W))
    Z0 = mm(A, W)
    if norm == "l2":
        mu0 = mu = np.zeros(n)
        T = np.maximum(np.linalg.norm(Z0, axis=1), 1e-3 * np.sqrt(fro2)) / max(tau * fro2, 1e-300)
    else:
        mu0 = np.maximum(np.abs(Z0).mean(1), 1e-6 * np.sqrt(fro2))
        mu = mu0.copy()
        T = mu / max(tau * fro2, 1e-300)
    T = np.clip(T, 1e-12, 1e6)  # steps in a-space (a in [0, 1]); also guards tau ~ 1e-300
    Fprev = np.full(n, -np.inf)
    stall = np.zeros(n, dtype=int)
    for it in range(steps):
        if norm == "linf":  # shrink the smoothing geometrically to 1e-3 of its start
            mu = mu0 * 10 ** (-3 * it / max(steps - 1, 1))
        hy, Sy = _smooth_norm(mm(Yp, W), norm, mu)
        grad = tau * mm(Sy, W.T)
        Anew = _prox(Yp - T[:, None] * grad, T, blk.V, blk.G, lo, hi)
        hn, _ = _smooth_norm(mm(Anew, W), norm, mu)
        dA = Anew - Yp
        okstep = tau * hn <= tau * hy + np.sum(grad * dA, 1) + np.sum(dA * dA, 1) / (2 * T) + 1e-12 * (1 + tau * hy)
        T = np.clip(np.where(okstep, T * 1.05, T * 0.5), 1e-12, 1e6)
        Fnew = _beta(blk.G, blk.V, Anew)[0].sum(1) - tau * hn  # smoothed objective, for restarts
        restart = okstep & (Fnew < Fprev)
        th_new = 0.5 * (1 + np.sqrt(1 + 4 * theta ** 2))
        mom = np.where(restart, 0.0, (theta - 1) / th_new)
        Ynext = Anew + mom[:, None] * (Anew - A)
        A = np.where(okstep[:, None], Anew, A)
        Yp = np.where(okstep[:, None], Ynext, Yp)  # a rejected step retries from Yp with a smaller T
        theta = np.where(okstep, np.where(restart, 1.0, th_new), theta)
        Fprev = np.where(okstep, Fnew, Fprev)
        D, _ = _sound_dual(blk, A, W, absW, tau, norm)
        take = D > best + 1e-9 * (1 + np.abs(best))
        best = np.where(D > best, D, best)
        bestA[take] = A[take]
        stall = np.where(take, 0, stall + 1)
        if norm == "l2" and it >= 20 and np.all(stall >= 15):  # converged (l_inf: smoothing schedule)
            break
    return best, bestA


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


# ------------------------------------------------------------------------ the driver

def _bounds_block(W, b, absW, X, y, tau, norm, methods, steps, qsteps, lr, pre, focus, tight):
    out = {}
    blk = _block(W, b, X, y, tau, norm)
    cheap = blk.G[..., 0].sum(1) - blk.slack  # interval
    if "interval" in methods:
        out["interval"] = cheap.copy()
    if not ({"linear", "dual", "quadratic"} & set(methods)):
        return out
    best = np.full(len(X), -np.inf)
    bestA = np.zeros(blk.C.shape)
    for A in _linear_slopes(blk):
        D, _ = _sound_dual(blk, A, W, absW, tau, norm)
        take = D > best
        best = np.where(take, D, best)
        bestA[take] = A[take]
    if "linear" in methods:
        out["linear"] = best.copy()
    best = np.maximum(best, cheap)
    # the optimised bounds only where they can still change the certificate
    clean = shrink(blk.C, b[None, :]).sum(1) - blk.slack
    run = focus & (clean > 0) & ((best <= 0) | tight) & (tau > 0)
    if "dual" in methods or "quadratic" in methods:
        idx = np.nonzero(run)[0]
        if len(idx):
            sub = blk.rows(idx)
            d_best, d_A = _fista(sub, W, absW, tau, norm, bestA[idx], best[idx], steps)
            best[idx] = np.maximum(best[idx], d_best)
            bestA[idx] = d_A
    if "dual" in methods:
        out["dual"] = best.copy()
    if "quadratic" in methods:
        idx = np.nonzero(run & ((best <= 0) | tight))[0]
        if len(idx):
            sub = blk.rows(idx)
            q, qA, qG, pen = _quadratic(sub, W, b, absW, tau, norm, pre, bestA[idx], best[idx], qsteps, lr)
            best[idx] = q
            # the per-sample refinement where it can still certify: uncertified, and the
            # quadratic penalty it can shrink exceeds the deficit
            ref = np.nonzero((q <= 0) & (pen > -q))[0]
            if len(ref):
                best[idx[ref]] = np.maximum(q[ref], _refine(sub.rows(ref), W, b, absW, tau, norm, qA[ref], qG[ref]))
        out["quadratic"] = best.copy()
    return out


@dataclass
class CertResult:
    """Per-sample sound lower bounds on min_{|delta| <= tau} y f(x + delta)."""

    lower: np.ndarray  # (n,) lower bound on the worst-case margin
    certified: np.ndarray  # (n,) bool: lower > 0, so no perturbation in the ball flips x
    certified_accuracy: float
    method: str
    seconds: float
    norm: str = "l2"
    tau: float = 0.0
    per_method: dict = field(default_factory=dict)  # method -> lower bounds (for 'best')

    def summary(self) -> str:
        return (f"certified {100 * self.certified_accuracy:.1f} % ({self.method}, {self.norm}, "
                f"tau={self.tau:g}, {self.seconds:.2f} s)")


def certify(net, X, y, tau: float, norm: str = "l2", method: str = "best", steps: int = 100,
            qsteps: int = 150, lr: float = 0.05, block: int = 256, focus=None, tight: bool = False) -> CertResult:
    """Sound per-sample lower bounds on the worst-case margin of a ReLU TwoLayerNet.

    method: 'interval' | 'linear' | 'dual' | 'quadratic' | 'best' (module docstring).
    steps: FISTA iterations of 'dual'; qsteps, lr: Adam iterations and step of
    'quadratic'; block: samples per vectorised block. focus: optional bool mask; the
    optimised bounds run only there (e.g. ~RobustReport.broken: a point an attack breaks
    cannot be certified), elsewhere the cheap bounds are reported. tight: run them on every
    sample with a positive clean margin, not only where the certificate can still change
    (the tightest lower values, slower).
    """
    check_args(norm, tau, method)
    W, b = shrinkage_params(net)
    X, y = _data(X, y, W.shape[1])
    focus = np.ones(len(X), bool) if focus is None else np.asarray(focus, dtype=bool)
    if focus.shape != (len(X),):
        raise ValueError(f"focus of shape {focus.shape} is invalid: expected one bool per sample")
    tau = float(tau)
    t0 = time.perf_counter()
    methods = ("interval", "linear", "dual", "quadratic") if method == "best" else (method,)
    pre = _quad_pre(W, norm) if "quadratic" in methods and tau > 0 else None
    absW = np.abs(W)
    parts = {mth: [] for mth in methods}
    for s in range(0, len(X), block):
        sl = slice(s, s + block)
        res = _bounds_block(W, b, absW, X[sl], y[sl], tau, norm, methods, steps, qsteps, lr, pre, focus[sl],
                             tight)
        for mth in methods:
            parts[mth].append(res[mth])
    per = {mth: (np.concatenate(v) if v else np.zeros(0)) for mth, v in parts.items()}
    lower = np.max(np.stack([per[mth] for mth in methods]), axis=0) if len(X) else np.zeros(0)
    cert = lower > 0
    return CertResult(lower, cert, float(np.mean(cert)) if len(X) else float("nan"), method,
                      time.perf_counter() - t0, norm, tau, per if method == "best" else {})


def certify_radii(net, X, y, taus, norm: str = "l2", method: str = "best", **kw) -> list[CertResult]:
    """Certificates at several radii, made monotone: a lower bound for the ball of radius
    tau2 is also one for every smaller ball, so the bound at tau1 < tau2 is replaced by the
    larger of the two (sound, and it makes every curve nonincreasing in tau even where the
    optimisers are not run to convergence)."""
    taus = [float(t) for t in taus]
    for t in taus:
        check_args(norm, t, method)
    out: list[CertResult | None] = [None] * len(taus)
    running = None
    for j in np.argsort(taus)[::-1]:
        res = certify(net, X, y, taus[j], norm, method, **kw)
        if running is not None:
            res.lower = np.maximum(res.lower, running)
            res.certified = res.lower > 0
            res.certified_accuracy = float(np.mean(res.certified)) if len(res.lower) else float("nan")
        running = res.lower
        out[j] = res
    return out


def certify_gap_diagnosis(net, X, y, tau, norm, attacked_broken_mask, n_exact: int = 20, cert=None,
                          time_limit: float = 30.0, threshold: float = 0.10, seed: int = 0) -> dict:
    """Why certified and attacked robust accuracy differ, checked with the exact verifier.

    attacked_broken_mask: per sample, True where some attack (or the clean point) breaks it,
    e.g. RobustReport.broken. cert: a CertResult for the same (X, y, tau, norm), computed if
    None. When attacked - certified accuracy > threshold (10 points), up to n_exact gap points
    (not certified, not broken by the attacks) are drawn with `seed` and decided exactly
    (sim.exact.exact_check in decide mode, time_limit seconds each): a gap point proved
    robust means the bound is loose there, one with a flipping perturbation found means the
    attack is weak (e.g. gradient masking). Returns a dict with the accuracies, the counts,
    an estimate of the true robust accuracy and a one-line 'verdict'.
    """
    from .exact import exact_check

    check_args(norm, tau)
    broken = np.asarray(attacked_broken_mask, dtype=bool)
    if broken.shape != (len(np.atleast_1d(y)),):
        raise ValueError(f"attacked_broken_mask of shape {broken.shape} is invalid: expected one bool per sample")
    if cert is None:
        cert = certify(net, X, y, tau, norm, focus=~broken)
    # a sound bound and a valid attack never meet; with float32 forward passes a margin within
    # rounding of 0 can, so such points are counted (and should be 0) rather than fatal
    clash = int(np.sum(cert.certified & broken))
    attacked = float(np.mean(~broken))
    gap = attacked - cert.certified_accuracy
    gap_idx = np.nonzero(~cert.certified & ~broken)[0]
    out = {"norm": norm, "tau": float(tau), "certified_accuracy": cert.certified_accuracy,
           "attacked_accuracy": attacked, "gap": gap, "flagged": bool(gap > threshold),
           "n_gap_points": int(len(gap_idx)), "n_checked": 0, "robust": 0, "broken": 0, "undecided": 0,
           "exact_seconds": 0.0, "checked_indices": [], "certified_but_attacked": clash,
           "estimated_robust_accuracy": None}
    if not out["flagged"]:
        out["verdict"] = (f"gap {100 * gap:.1f} points <= {100 * threshold:.0f}: certified "
                          f"{100 * cert.certified_accuracy:.1f} % and attacked {100 * attacked:.1f} % agree")
        return out
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(gap_idx, size=min(n_exact, len(gap_idx)), replace=False))
    chk = exact_check(net, X, y, tau, norm, max_samples=len(pick), time_limit=time_limit, indices=pick)
    cnt = chk.counts()
    out.update(n_checked=len(pick), exact_seconds=chk.seconds, checked_indices=[int(i) for i in pick], **cnt)
    n_dec = cnt["robust"] + cnt["broken"]
    head = (f"gap {100 * gap:.1f} points (certified {100 * cert.certified_accuracy:.1f} %, attacked "
            f"{100 * attacked:.1f} %); exact verifier on {len(pick)} of {len(gap_idx)} gap points: "
            f"{cnt['robust']} robust, {cnt['broken']} breakable, {cnt['undecided']} undecided")
    if n_dec == 0:
        out["verdict"] = head + " -> undecided (the exact verifier timed out; raise time_limit)"
        return out
    share = cnt["robust"] / n_dec
    out["estimated_robust_accuracy"] = cert.certified_accuracy + len(gap_idx) / len(broken) * share
    if share >= 0.5:
        why = "bound loose" + ("" if cnt["broken"] == 0 else " (mostly; the attack also misses some)")
    else:
        why = "attack weak (gradient masking?)" + ("" if cnt["robust"] == 0 else " (mostly; the bound is also loose)")
    out["verdict"] = head + f" -> {why}; estimated robust accuracy {100 * out['estimated_robust_accuracy']:.1f} %"
    return out
