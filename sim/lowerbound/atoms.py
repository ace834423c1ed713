"""Per-atom polynomials: f(x) = sum_j a_j p(u_j), u = M^T x, p(t) = sum_{odd l <= P} c_l t^l.

These are the degree-P polynomials in x that a robust classifier of the sparse-coding
data needs (issue 13): read each atom coordinate u_j = <m_j, x>, pass u_j = +-1 (an
active atom) and suppress small u_j (an inactive atom plus the attacker's share of the
perturbation), then sum with the label weights. Odd p keeps f odd like the network.

Hand-built shapes (`step_coefficients`): p'(t) proportional to t^2 (1 - t^2)^((P-3)/2),
p(1) = 1, i.e. p(0) = p'(0) = p''(0) = 0 (an inactive coordinate moved by e gives only
O(e^3)) and p', ..., p^((P-3)/2) vanish at t = 1 (an active coordinate moved by e loses
only O(e^((P-1)/2))):
    P = 3: t^3;   P = 5: (5 t^3 - 3 t^5)/2;   P = 7: (35 t^3 - 42 t^5 + 15 t^7)/8.
`monomial_coefficients` gives t^P (the 'oracle' f = sum_j w*_j <m_j, x>^P).

Training: theta = [c (odd powers 1, 3, .., P), a (D weights)]; f is bilinear in (c, a),
loss_grad returns the gradient of the mean logistic loss in both (either can be frozen
by `train` = 'c', 'a' or 'ca'), so fit.adam_fit trains it, clean or PGD-adversarially.

Input gradient: df/dx = M (a * p'(u)). In l2 with an orthogonal M, the attack on u is the
attack on x (|M^T delta|_2 = |delta|_2), and the worst case is a separable problem with
one quadratic constraint: `lagrangian_certificate` gives a sound lower bound on
min_{|delta| <= tau} y f(x + delta) by weak duality (module function's docstring).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fit import check_int, fail

CHUNK = 4096


def _odd_powers(degree):
    return np.arange(1, degree + 1, 2)


def _horner(coef, V, cast):
    """sum_i coef[i] V^i elementwise (Horner's scheme: a multiply and an add per coefficient,
    where powers by ** cost a pow call per element)."""
    acc = np.full_like(V, cast(coef[-1]))
    for ci in coef[-2::-1]:
        acc *= V
        acc += cast(ci)
    return acc


def step_coefficients(degree: int) -> np.ndarray:
    """c for powers 1, 3, .., P of the flat step p(t) = int_0^t s^2 (1 - s^2)^((P-3)/2) ds / norm."""
    check_int("degree", degree, 3)
    if degree % 2 == 0:
        fail("degree", degree, "odd integers >= 3")
    q = (degree - 3) // 2
    # s^2 (1 - s^2)^q = sum_i binom(q, i) (-1)^i s^(2 + 2i); integrate termwise
    from math import comb
    c = np.zeros(len(_odd_powers(degree)))
    for i in range(q + 1):
        power = 3 + 2 * i
        c[(power - 1) // 2] = comb(q, i) * (-1) ** i / power
    return c / c.sum()


def monomial_coefficients(degree: int) -> np.ndarray:
    check_int("degree", degree, 1)
    if degree % 2 == 0:
        fail("degree", degree, "odd integers >= 1")
    c = np.zeros(len(_odd_powers(degree)))
    c[-1] = 1.0
    return c


class AtomPolynomial:
    """f(x) = sum_j a_j p(<m_j, x>), p odd of degree P with coefficients c; theta = [c, a]."""

    def __init__(self, M, a, c, train: str = "ca", dtype=np.float64):
        self.M = np.ascontiguousarray(M, np.float64)
        self.dtype = np.dtype(dtype)
        self._Mc = self.M.astype(self.dtype)
        a = np.asarray(a, np.float64).ravel()
        c = np.asarray(c, np.float64).ravel()
        if a.shape != (self.M.shape[1],):
            fail("a", a.shape, f"one weight per atom ({self.M.shape[1]})")
        if train not in ("c", "a", "ca"):
            fail("train", train, "'c', 'a' or 'ca'")
        self.nc = len(c)
        self.degree = 2 * self.nc - 1
        self.powers = _odd_powers(self.degree)
        self.train = train
        self.theta = np.concatenate([c, a])

    @property
    def c(self):
        return self.theta[:self.nc]

    @property
    def a(self):
        return self.theta[self.nc:]

    def p(self, U):
        """p(U) elementwise, by Horner's scheme in U^2 (c_1 U + c_3 U^3 + ... = U (c_1 + U^2 (c_3 + ...)))."""
        return U * _horner(self.c, U * U, U.dtype.type)

    def dp(self, U):
        """p'(U) elementwise: sum_l l c_l U^(l-1), by Horner's scheme in U^2."""
        return _horner(self.c * self.powers, U * U, U.dtype.type)

    def _U(self, X):
        return np.asarray(X, self.dtype) @ self._Mc

    def forward(self, X):
        X = np.asarray(X)
        a = self.a.astype(self.dtype)
        out = [np.zeros(0)]
        for i in range(0, len(X), CHUNK):
            out.append((self.p(self._U(X[i:i + CHUNK])) @ a).astype(np.float64))
        return np.concatenate(out)

    def output_gradient(self, X):
        U = self._U(X)
        a = self.a.astype(self.dtype)
        return ((self.dp(U) * a) @ self._Mc.T).astype(np.float64), (self.p(U) @ a).astype(np.float64)

    def loss_grad(self, X, y):
        from .fit import logistic

        U = self._U(X)
        a = self.a.astype(self.dtype)
        pows = [U ** l for l in self.powers]
        P = sum(U.dtype.type(ci) * Ul for ci, Ul in zip(self.c, pows))
        f = (P @ a).astype(np.float64)
        loss, dl = logistic(y * f)
        g = (dl * y / len(y)).astype(self.dtype)
        gc = (np.array([g @ (Ul @ a) for Ul in pows], np.float64) if "c" in self.train else np.zeros(self.nc))
        ga = (P.T @ g).astype(np.float64) if "a" in self.train else np.zeros(len(self.a))
        return float(loss.mean()), np.concatenate([gc, ga]), f


def lagrangian_certificate(model: AtomPolynomial, X, y, tau: float, *, box=None, radius2=None, grid: int = 65,
                           iters: int = 20, block: int = 32) -> np.ndarray:
    """A sound lower bound on min y f(x + delta) over the threat set, per point.

    The attacker moves u = M^T x by e = M^T delta. Any e it can reach lies in
    E = {e : |e|_2^2 <= radius2, |e_j| <= box_j}: with an orthogonal M and the l2 ball,
    radius2 = tau^2 and box_j = tau (the default); for the l_inf ball, radius2 = d tau^2
    and box_j = tau |m_j|_1 (a relaxation, sound but looser). For every lam >= 0, weak
    duality gives

        min_{e in E} sum_j y a_j p(u_j + e_j)
            >= B(lam) = sum_j min_{|e_j| <= box_j} [y a_j p(u_j + e_j) + lam e_j^2] - lam radius2.

    Each 1-D minimum of phi(e) = y a_j p(u_j + e) + lam e^2 is bounded below soundly on a
    grid of `grid` points e_k, spacing h: on a cell, phi is at least its linear
    interpolation minus K h^2/8, K >= |phi''| on [-box_j, box_j]
    (K = |a_j| sum_l |c_l| l (l-1) (|u_j| + box_j)^(l-2) + 2 lam), so
    min phi >= min_k phi(e_k) - K h^2/8. B is concave in lam; it is maximised per point by
    golden-section search on log lam in [1e-4, 1e4] (`iters` steps), and lam = 0 is tried
    too. Any lam gives a valid bound, so the search only decides how tight it is.
    Returns the bound per point (> 0: certified robust).
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    D = model.M.shape[1]
    box = np.full(D, float(tau)) if box is None else np.asarray(box, np.float64)
    radius2 = float(tau) ** 2 if radius2 is None else float(radius2)
    s = np.linspace(-1.0, 1.0, grid)
    h2 = ((2.0 / (grid - 1)) * box) ** 2 / 8  # h^2 / 8 per atom
    absc = np.abs(model.c)
    out = np.empty(len(y))
    E = s[None, None, :] * box[None, :, None]  # (1, D, G)
    E2 = np.ascontiguousarray((E ** 2)[0])  # (D, G)
    for i in range(0, len(y), block):
        U = X[i:i + block] @ model.M  # (b, D)
        ya = y[i:i + block, None] * model.a[None, :]
        V = ya[:, :, None] * model.p(U[:, :, None] + E)  # (b, D, G)
        R = np.abs(U) + box[None, :]
        K = np.abs(ya) * sum(cl * l * (l - 1) * R ** (l - 2) for cl, l in zip(absc, model.powers) if l >= 2)
        fixed = -(h2[None, :] * K).sum(axis=1)  # (b,)
        lam_corr = 2 * h2.sum()  # the lam part of K h^2 / 8, summed over atoms

        def bound(lam):  # lam: (b,)
            return dual_bounds(V, E2, lam, fixed, radius2 + lam_corr)

        lo, hi = np.full(len(U), np.log(1e-4)), np.full(len(U), np.log(1e4))
        g = (np.sqrt(5) - 1) / 2
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        f1, f2 = bound(np.exp(x1)), bound(np.exp(x2))
        best = np.maximum(np.maximum(f1, f2), bound(np.zeros(len(U))))
        for _ in range(iters):
            left = f1 > f2  # the maximum lies in [lo, x2]
            hi = np.where(left, x2, hi)
            lo = np.where(left, lo, x1)
            x1n = np.where(left, hi - g * (hi - lo), x2)
            x2n = np.where(left, x1, lo + g * (hi - lo))
            fnew = bound(np.exp(np.where(left, x1n, x2n)))
            f1, f2 = np.where(left, fnew, f2), np.where(left, f1, fnew)
            x1, x2 = x1n, x2n
            best = np.maximum(best, fnew)
        out[i:i + block] = best
    return out


@njit(cache=True, parallel=True)
def dual_bounds(V, E2, lam, fixed, rad):
    """B(lam) of lagrangian_certificate per point i: sum_j min_k (V[i, j, k] + lam_i E2[j, k])
    + fixed_i - lam_i rad, fused (no (b, D, G) temporaries; the hot loop of the certificate).
    One point per thread, its sum over j in order: the same bits for any thread count.
    NumPy reference: tests/naive.py dual_bounds."""
    b, D, G = V.shape
    out = np.empty(b)
    for i in prange(b):
        li = lam[i]
        acc = 0.0
        for j in range(D):
            m = V[i, j, 0] + li * E2[j, 0]
            for k in range(1, G):
                v = V[i, j, k] + li * E2[j, k]
                if v < m:
                    m = v
            acc += m
        out[i] = acc + fixed[i] - li * rad
    return out


def threat_box(M, tau: float, norm: str, geometry=None):
    """(box, radius2) of lagrangian_certificate for the ball of radius tau in x (any M).

    e = M^T delta: |e_j| <= tau |m_j|_* and |e|_2 <= |M|_2 |delta|_2, with |delta|_2 <= tau
    (l2) or <= tau sqrt(d) (l_inf). For an orthogonal M in l2 this is box_j = tau,
    radius2 = tau^2, the exact image of the ball's bounding set.
    geometry: threat_geometry(M, norm), computed once for many radii (its spectral norm is an
    O(d^3) SVD: seconds at d = 2048); the same numbers as without it.
    """
    col, smax, d = threat_geometry(M, norm) if geometry is None else geometry
    if norm == "l2":
        return tau * col, (smax * tau) ** 2
    return tau * col, (smax * tau) ** 2 * d


def threat_geometry(M, norm: str):
    """(column norms of M dual to the threat's norm, the spectral norm of M, d): what threat_box
    needs of M, independent of the radius."""
    M = np.asarray(M, np.float64)
    col = np.linalg.norm(M, axis=0) if norm == "l2" else np.abs(M).sum(axis=0)
    return col, float(np.linalg.norm(M, 2)), M.shape[0]
