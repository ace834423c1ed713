"""certify and certify_radii: the best sound bound per sample, over the methods asked for."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bounds import _block, _data, _fista, _linear_slopes, _sound_dual, check_args, shrink, shrinkage_params
from .quadratic import _quad_pre, _quadratic, _refine


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
