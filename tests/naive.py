"""Plain NumPy references of every kernel (as in STUMPY's tests/naive.py): slow, obvious,
written straight from the formulas of SPEC section 2, in float64."""
import numpy as np


def act(z, activation="relu", q=3, rho=0.1):
    z = np.asarray(z, dtype=np.float64)
    if activation == "relu":
        return np.maximum(z, 0.0)
    return np.where(z <= 0, 0.0, np.where(z <= rho, z ** q / (q * rho ** (q - 1)), z - (1 - 1 / q) * rho))


def dact(z, activation="relu", q=3, rho=0.1):
    z = np.asarray(z, dtype=np.float64)
    if activation == "relu":
        return (z > 0).astype(np.float64)
    return np.where(z <= 0, 0.0, np.where(z <= rho, (z / rho) ** (q - 1), 1.0))


def outputs(X, W, b, **a):
    U = np.asarray(X, np.float64) @ np.asarray(W, np.float64).T
    return np.sum(act(U - b, **a) - act(-U - b, **a), axis=1)


def losses(X, y, W, b, **a):
    return np.logaddexp(0.0, -y * outputs(X, W, b, **a))


def grads(X, y, W, b, **a):
    """(mean loss, dL/dW, dL/db, per-sample dl_n/dx_n) for the mean logistic loss."""
    X = np.asarray(X, np.float64)
    W = np.asarray(W, np.float64)
    U = X @ W.T
    f = np.sum(act(U - b, **a) - act(-U - b, **a), axis=1)
    dldf = -y / (1.0 + np.exp(y * f))
    du = dact(U - b, **a) + dact(-U - b, **a)
    db = dact(-U - b, **a) - dact(U - b, **a)
    n = len(X)
    gW = (dldf[:, None] * du).T @ X / n
    gb = (dldf[:, None] * db).sum(axis=0) / n
    gx = (dldf[:, None] * du) @ W
    return np.mean(np.logaddexp(0.0, -y * f)), gW, gb, gx


def output_grads(X, W, b, **a):
    """df/dx_n for every sample."""
    U = np.asarray(X, np.float64) @ np.asarray(W, np.float64).T
    return (dact(U - b, **a) + dact(-U - b, **a)) @ np.asarray(W, np.float64)


def row_norms(W):
    """kernels.row_norms: |w_i| in float64."""
    return np.linalg.norm(np.asarray(W, np.float64), axis=1)


def fgm_shift(U, Gp, A, y, tau):
    """kernels.fgm_shift: (U + s Gp A, s) with s = -y tau / sqrt(Gp A Gp^T), 0 where that is 0."""
    U, Gp, A = (np.asarray(a, np.float64) for a in (U, Gp, A))
    P = Gp @ A
    nsq = np.einsum("ij,ij->i", Gp, P)
    s = np.where(nsq > 0, -y * tau / np.sqrt(np.where(nsq > 0, nsq, 1.0)), 0.0)
    return U + s[:, None] * P, s


def pgd_update(Gp, A, P, nsq, y, alpha, tau):
    """kernels.pgd_update on the explicit perturbations: returns the new (P, nsq).

    The step c J with c = -y alpha / |J| (J = Gp W, |J|^2 = Gp A Gp^T), then the projection
    on the ball of radius tau, written through P = W delta and nsq = |delta|^2."""
    Gp, A, P = (np.asarray(a, np.float64) for a in (Gp, A, P))
    Q = Gp @ A
    jn2 = np.einsum("ij,ij->i", Gp, Q)
    c = np.where(jn2 > 0, -y * alpha / np.sqrt(np.where(jn2 > 0, jn2, 1.0)), 0.0)
    ns = np.maximum(nsq + 2 * c * np.einsum("ij,ij->i", Gp, P) + c * c * jn2, 0.0)
    fac = np.minimum(1.0, tau / np.maximum(np.sqrt(ns), 1e-300))
    return fac[:, None] * (P + c[:, None] * Q), fac * fac * ns


# ---------------------------------------------------------------------------------------------
# sim.certify: references of the per-element kernels of the bounds (the shrinkage network)

_PIECE_SLOPES = np.array([1.0, 0.0, 1.0])  # slopes of g_i's linear pieces between its breakpoints


def shrink(u, b):
    """g(u) = sign(u) max(|u| - b, 0), elementwise (b broadcast)."""
    return np.sign(u) * np.maximum(np.abs(u) - b, 0.0)


def beta_np(G, V, A):
    """beta_i(a_i) = min_k G_k - a V_k over the breakpoints, and the minimising V (reference)."""
    vals = G - A[..., None] * V
    k = np.argmin(vals, axis=2)
    return np.take_along_axis(vals, k[..., None], 2)[..., 0], np.take_along_axis(V, k[..., None], 2)[..., 0]


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


def prox_np(Z, T, V, G, lo, hi):
    """argmax_{a in [0,1]} beta(a) - (a - z)^2 / (2 t) elementwise (reference): beta is the
    minimum of the lines G_k - a V_k, line k being the minimum on [lo_k, hi_k]; the best of
    the per-piece maximisers, clipped to [0, 1] (1-D strong concavity)."""
    ok = (lo <= hi) & (lo < np.inf) & (hi > -np.inf)
    cand = np.where(ok, np.clip(Z[..., None] - T[:, None, None] * V, lo, hi), 0.0)
    obj = np.where(ok, G - cand * V - (cand - Z[..., None]) ** 2 / (2 * T[:, None, None]), -np.inf)
    k = np.argmax(obj, axis=2)
    return np.clip(np.take_along_axis(cand, k[..., None], axis=2)[..., 0], 0.0, 1.0)


def dual_bounds(V, E2, lam, fixed, rad):
    """The Lagrangian certificate's dual bound B(lam) per point (sim.lowerbound.atoms.dual_bounds):
    sum_j min_k (V_ijk + lam_i E2_jk) + fixed_i - lam_i rad."""
    V, E2, lam = np.asarray(V, np.float64), np.asarray(E2, np.float64), np.asarray(lam, np.float64)
    return (V + lam[:, None, None] * E2[None]).min(axis=2).sum(axis=1) + fixed - lam * rad
