"""Polynomial models of degree p: kernel machines with a polynomial kernel on landmarks.

Why a kernel on landmarks (Nystrom) and not explicit features: at d = 256 the monomials
of degree <= 2 number ~33 k and of degree <= 3 ~2.8 M; a dense degree-3 tensor costs
d^3 = 1.7e7 flops per input, 60 k training inputs x a few hundred steps is out of reach,
and the full kernel machine needs an N x N Gram (60 k x 60 k = 29 GB at 10 N). The model
here is

    f(x) = sum_{j=1..r} a_j kappa(<l_j, x> / s),   kappa(t) = (offset + t)^p   ('full')
                                                    or its odd part             ('odd'),

l_j = r training inputs (landmarks), s = mean |x|^2 of the training set. Every such f is
exactly a polynomial of degree <= p in x (nothing is approximated in the model that is
attacked); what the landmarks restrict is which polynomials training can reach, namely
the span of r kernel sections, the Nystrom subspace of the kernel machine (exact when
r = N). Cost per input: 2 r d flops for f and as much again for df/dx, the order of the
network's 2 m d (r = 1024 landmarks vs m = 512 neurons at d = 256).

Training is convex: theta are the coordinates in the whitened Nystrom basis
(a = P theta, P = K_LL^{-1/2} on the eigenvalues above a relative cutoff), so
|theta|^2 = a^T K_LL a is the RKHS norm of f and the ridge penalty of fit.adam_fit is
kernel ridge-logistic regression restricted to the landmark span.

Parity: the data distribution is symmetric under (x, y) -> (-x, -y), and the network is
odd. For any f, robust accuracy(f) <= (1 + robust accuracy(f_odd)) / 2 (see
sim.lowerbound.table); constants reach 1/2 without using x at all. With parity 'odd'
the kernel keeps the odd powers of (offset + t)^p only, so f(-x) = -f(x); note that the
odd part of a degree-2 polynomial is linear, so 'odd' poly2 is a (kernel-trained) linear
model.

The input gradient is explicit: df/dx = sum_j a_j kappa'(<l_j, x>/s) l_j / s.
"""
from __future__ import annotations

from math import comb

import numpy as np

from .fit import check_int, check_parity, check_pos, logistic

CHUNK = 4096


def kappa_coefficients(degree: int, parity: str = "full", offset: float = 1.0) -> np.ndarray:
    """Coefficients (increasing powers) of (offset + t)^degree, or of its odd part."""
    check_int("degree", degree, 1)
    check_parity(parity)
    check_pos("offset", offset)
    coef = np.array([comb(degree, j) * offset ** (degree - j) for j in range(degree + 1)], np.float64)
    if parity == "odd":
        coef[0::2] = 0.0
    return coef


class PolynomialModel:
    """f(x) = kappa(X L^T / s) @ a with a = P theta (see the module docstring)."""

    def __init__(self, landmarks: np.ndarray, degree: int, parity: str = "odd", scale: float | None = None,
                 offset: float = 1.0, cutoff: float = 1e-10, dtype=np.float64):
        self.coef = kappa_coefficients(degree, parity, offset)
        self.dcoef = np.polynomial.polynomial.polyder(self.coef)
        self.degree, self.parity = degree, parity
        L = np.ascontiguousarray(landmarks, np.float64)
        if L.ndim != 2 or len(L) < 1:
            raise ValueError(f"landmarks: a non-empty 2-D array is required, got shape {L.shape}")
        self.scale = float(scale) if scale is not None else float(np.mean(np.sum(L * L, axis=1)))
        check_pos("scale", self.scale)
        self.L = L
        lam, U = np.linalg.eigh(self._kappa(L @ L.T / self.scale))
        keep = lam > cutoff * max(lam.max(), 1e-300)
        self.P = U[:, keep] / np.sqrt(lam[keep])[None, :]
        self.theta = np.zeros(self.P.shape[1])
        self.dtype = np.dtype(dtype)
        self._Lc = L.astype(self.dtype)
        # kappa linear (e.g. the odd part of degree 2): f(x) = <x, L^T a> c1 / s, computed as such
        self.is_linear = not np.any(self.coef[2:])

    def _kappa(self, T):
        return np.polynomial.polynomial.polyval(T, self.coef.astype(T.dtype))

    @property
    def a(self) -> np.ndarray:
        return self.P @ self.theta

    def _T(self, X):
        return (np.asarray(X, self.dtype) @ self._Lc.T) / self.dtype.type(self.scale)

    def _linear_w(self, a):
        return (self.L.T @ a) * (self.coef[1] / self.scale)

    def _forward(self, X, a):
        if self.is_linear:
            return np.asarray(X, np.float64) @ self._linear_w(a) + self.coef[0] * a.sum()
        return (self._kappa(self._T(X)) @ a.astype(self.dtype)).astype(np.float64)

    def forward(self, X):
        X = np.asarray(X, np.float64)
        a = self.a
        return np.concatenate([self._forward(X[i:i + CHUNK], a) for i in range(0, len(X), CHUNK)]
                              + [np.zeros(0)])

    def output_gradient(self, X):
        X = np.asarray(X, np.float64)
        a = self.a
        if self.is_linear:
            w = self._linear_w(a)
            return np.broadcast_to(w, X.shape).copy(), X @ w + self.coef[0] * a.sum()
        T = self._T(X)
        ac = a.astype(self.dtype)
        f = self._kappa(T) @ ac
        G = np.polynomial.polynomial.polyval(T, self.dcoef.astype(self.dtype)) * ac[None, :]
        return (G @ self._Lc).astype(np.float64) / self.scale, f.astype(np.float64)

    def loss_grad(self, X, y):
        X = np.asarray(X, np.float64)
        if self.is_linear:
            K = (X @ self.L.T) * (self.coef[1] / self.scale) + self.coef[0]
        else:
            K = self._kappa(self._T(X))
        f = (K @ self.a.astype(K.dtype)).astype(np.float64)
        loss, dl = logistic(y * f)
        g = dl * y / len(y)
        return float(loss.mean()), self.P.T @ (K.T @ g.astype(K.dtype)).astype(np.float64), f

    def kernel(self, X1, X2):
        """The polynomial kernel kappa(<x, x'> / s) itself (for checks)."""
        return self._kappa(np.asarray(X1, np.float64) @ np.asarray(X2, np.float64).T / self.scale)
