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
reference in tests/naive.py (trs_np, also used by the per-sample refinement, in
sim.certify.quadratic) that the tests compare with.

Only ReLU with b_i >= 0 is supported (the shrinkage structure); other activations or a
negative bias raise a ValueError. Computations are in float64 (float32 weights convert
exactly); the bound certifies the real-arithmetic network with those weights, and every
bound subtracts a generous allowance for float rounding. The exact verifier (MILP for
l_inf, outer approximation + MILP for l2) is in sim.certify.exact.

Modules: bounds (this one: checks, the shrinkage structure, the per-element kernels, the
interval and linear/dual bounds), quadratic (the quadratic bound and its refinement),
certificate (certify, certify_radii: the best bound per sample), exact (the MILP
verifier), diagnosis (certified against attacked, decided by the exact verifier).
"""
from __future__ import annotations

from dataclasses import dataclass

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
