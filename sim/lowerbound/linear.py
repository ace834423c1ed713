"""Linear classifiers f(x) = <w, x> + c and their exact robust accuracy.

The worst perturbation of a linear model in a ball of radius tau is known in closed
form: min_{|delta| <= tau} y f(x + delta) = y (<w, x> + c) - tau |w|_*, with |.|_* the
dual norm (l2 -> l2, linf -> l1), reached at delta = -y tau w/|w|_2 (l2) or
-y tau sign(w) (linf). So robust accuracy is exact, no attack needed
(`exact_robust_accuracy`); `exact_attack` returns the worst points themselves, which
the tests compare against the closed form and sim.attacks.

Training:
- clean: L2-regularised logistic regression by L-BFGS (`fit_logistic`);
- adversarial: Adam on PGD-perturbed batches from the clean weights (fit.adam_fit),
  the procedure used for every other model (for a linear model FGM/PGD is exact, so
  this is gradient descent on the robust loss, stopped after a budget of steps);
- best robust: the exact minimiser of the robust logistic loss
      L(w, c) = mean log(1 + exp(-(y (<w, x> + c) - tau |w|_*)))
  (`fit_robust_logistic`). L is convex in (w, c): y(<w,x>+c) - tau|w|_* is concave and
  the logistic loss is convex and decreasing. w = 0 minimises L exactly when
  |mean(s y x)|_threat <= tau mean(s) with s = sigmoid(-y c*), c* the best constant
  (the subgradient condition at w = 0); this is checked first and, when it holds, the
  minimiser is returned in closed form (w = 0). Otherwise L is smooth near the
  minimiser and is minimised by L-BFGS (l2) or L-BFGS-B on w = p - q, p, q >= 0 (linf,
  where |w|_1 = sum(p + q) makes the problem smooth with bounds). The returned info
  reports which case held and the final gradient norm.

parity 'odd' (the default in the table) drops the intercept: f(-x) = -f(x) like the
network; 'full' fits c.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .fit import check_norm_tau, dual_norm, logistic


class LinearModel:
    """f(x) = <w, x> + c; theta = w (odd) or [w, c] (with intercept)."""

    def __init__(self, w: np.ndarray, c: float = 0.0, intercept: bool = False):
        self.intercept = bool(intercept)
        self.theta = np.concatenate([np.asarray(w, np.float64).ravel(), [float(c)] if intercept else []])
        self.d = len(self.theta) - int(self.intercept)

    @property
    def w(self) -> np.ndarray:
        return self.theta[:self.d]

    @property
    def c(self) -> float:
        return float(self.theta[self.d]) if self.intercept else 0.0

    def forward(self, X):
        return np.asarray(X, np.float64) @ self.w + self.c

    def output_gradient(self, X):
        X = np.asarray(X, np.float64)
        return np.broadcast_to(self.w, X.shape).copy(), X @ self.w + self.c

    def loss_grad(self, X, y):
        f = self.forward(X)
        loss, dl = logistic(y * f)
        g = dl * y / len(y)
        grad = X.T @ g
        if self.intercept:
            grad = np.append(grad, g.sum())
        return float(loss.mean()), grad, f

    def robust_margin(self, X, y, tau, norm):
        """min over the ball of y f(x + delta), exactly: y f(x) - tau |w|_*."""
        check_norm_tau(norm, tau)
        return y * self.forward(X) - tau * dual_norm(self.w, norm)

    def exact_robust_accuracy(self, X, y, tau, norm) -> float:
        return float(np.mean(self.robust_margin(X, y, tau, norm) > 0))

    def exact_attack(self, X, y, tau, norm):
        """The worst points x - y tau u, u = argmax_{|u| <= 1} <w, u>."""
        check_norm_tau(norm, tau)
        w = self.w
        if norm == "linf":
            u = np.sign(w)
        else:
            nw = np.linalg.norm(w)
            u = w / nw if nw > 0 else np.zeros_like(w)
        return np.asarray(X, np.float64) - tau * y[:, None] * u[None, :]


def fit_logistic(X, y, *, ridge: float = 1e-4, intercept: bool = False, maxiter: int = 500) -> LinearModel:
    """Clean training: argmin mean log(1 + exp(-y f)) + ridge/2 |w|^2 (c not penalised), L-BFGS."""
    X = np.asarray(X, np.float64)
    model = LinearModel(np.zeros(X.shape[1]), 0.0, intercept)

    def fun(theta):
        model.theta[:] = theta
        loss, g, _ = model.loss_grad(X, y)
        w = model.w
        g = g.copy()
        g[:model.d] += ridge * w
        return loss + 0.5 * ridge * float(w @ w), g

    res = minimize(fun, model.theta.copy(), jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    model.theta[:] = res.x
    return model


def _best_constant(y):
    """argmin_c mean log(1 + exp(-y c)) = log(p / (1 - p)), p = share of +1 (finite if both labels occur)."""
    p = float(np.mean(y > 0))
    if p in (0.0, 1.0):
        return 0.0 if len(y) == 0 else (30.0 if p == 1.0 else -30.0)
    return float(np.log(p / (1 - p)))


def robust_loss(theta, X, y, tau, norm, intercept):
    """The robust logistic loss L(w, c) (mean) for theta = w or [w, c]."""
    d = X.shape[1]
    w = theta[:d]
    c = theta[d] if intercept else 0.0
    return float(np.mean(np.logaddexp(0.0, -(y * (X @ w + c) - tau * dual_norm(w, norm)))))


def fit_robust_logistic(X, y, tau, norm, *, intercept: bool = False, ridge: float = 0.0, maxiter: int = 1000,
                        init: np.ndarray | None = None):
    """The exact minimiser of the robust logistic loss (+ ridge/2 |w|^2 if ridge > 0).

    Returns (model, info) with info = dict(zero_optimal, grad_norm, loss, n_iter):
    zero_optimal says the subgradient condition at w = 0 held (then w = 0 is the exact
    global minimiser); grad_norm is the norm of the (projected) gradient at the end.
    Without ridge, if the training set is robustly separable at tau the loss has no
    minimiser (it decreases along a ray); L-BFGS then stops at maxiter and the direction
    approximates the robust max-margin classifier.
    """
    check_norm_tau(norm, tau)
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    n, d = X.shape
    c0 = _best_constant(y) if intercept else 0.0
    s = expit(-y * c0)
    g0 = X.T @ (s * y) / n
    g0_norm = float(np.max(np.abs(g0))) if norm == "linf" else float(np.linalg.norm(g0))
    if g0_norm <= tau * float(np.mean(s)):
        model = LinearModel(np.zeros(d), c0, intercept)
        return model, {"zero_optimal": True, "grad_norm": 0.0, "n_iter": 0,
                       "loss": robust_loss(model.theta, X, y, tau, norm, intercept),
                       "zero_test": (g0_norm, tau * float(np.mean(s)))}
    nc = 1 if intercept else 0
    if init is None:
        # start along the steepest descent direction from 0, where L is smooth
        u = np.sign(g0) if norm == "linf" else g0 / np.linalg.norm(g0)
        init = np.concatenate([0.1 * u / max(dual_norm(u, "l2"), 1e-300), [c0] * nc])
    init = np.asarray(init, np.float64)

    if norm == "l2":
        def fun(theta):
            w = theta[:d]
            c = theta[d] if intercept else 0.0
            nw = np.linalg.norm(w)
            m = y * (X @ w + c) - tau * nw
            loss, dl = logistic(m)
            dl = dl / n
            gw = X.T @ (dl * y) - tau * dl.sum() * (w / nw if nw > 0 else 0.0) + ridge * w
            g = np.append(gw, np.sum(dl * y)) if intercept else gw
            return float(loss.mean()) + 0.5 * ridge * float(w @ w), g

        res = minimize(fun, init, jac=True, method="L-BFGS-B",
                       options={"maxiter": maxiter, "gtol": 1e-10, "ftol": 1e-15})
        theta = res.x
        grad_norm = float(np.linalg.norm(res.jac))
    else:
        w0 = init[:d]
        z0 = np.concatenate([np.maximum(w0, 0), np.maximum(-w0, 0), init[d:]])

        def fun(z):
            p, q = z[:d], z[d:2 * d]
            w = p - q
            c = z[2 * d] if intercept else 0.0
            m = y * (X @ w + c) - tau * float(np.sum(p + q))
            loss, dl = logistic(m)
            dl = dl / n
            gx = X.T @ (dl * y) + ridge * w
            gs = -tau * dl.sum()
            g = np.concatenate([gx + gs, -gx + gs] + ([[np.sum(dl * y)]] if intercept else []))
            return float(loss.mean()) + 0.5 * ridge * float(w @ w), g

        bounds = [(0, None)] * (2 * d) + [(None, None)] * nc
        res = minimize(fun, z0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": maxiter, "gtol": 1e-10, "ftol": 1e-15})
        z = res.x
        theta = np.concatenate([z[:d] - z[d:2 * d], z[2 * d:]])
        g = res.jac
        pg = np.where((z > 0) | (np.arange(len(z)) >= 2 * d), g, np.minimum(g, 0.0))  # projected gradient
        grad_norm = float(np.linalg.norm(pg))
    model = LinearModel(theta[:d], theta[d] if intercept else 0.0, intercept)
    return model, {"zero_optimal": False, "grad_norm": grad_norm, "n_iter": int(res.nit),
                   "loss": robust_loss(model.theta, X, y, tau, norm, intercept),
                   "zero_test": (g0_norm, tau * float(np.mean(s)))}


def _normalised_margin_grad(w, X, y, tau, norm, T):
    """(surrogate, gradient, exact margins) of mean sigmoid(-r/T), r_i = y_i <w, x_i>/|w|_* - tau.

    r is scale-invariant in w; r_i > 0 exactly when point i is robust at tau (the exact
    robust margin divided by |w|_*), so mean(r > 0) is the exact robust accuracy of w.
    """
    N = dual_norm(w, norm)
    gN = np.sign(w) if norm == "linf" else w / N
    yf = y * (X @ w)
    r = yf / N - tau
    s = expit(-r / T)
    dr = -s * (1 - s) / T / len(y)  # d surrogate / d r_i
    g = X.T @ (dr * y) / N - float(dr @ yf) * gN / N ** 2
    return float(s.mean()), g, r


def fit_robust_accuracy(X, y, tau, norm, starts, *, rng: np.random.Generator, val_share: float = 0.2,
                        top: int = 2, stages: int = 6, steps: int = 100, batch: int = 2048, lr: float = 0.02,
                        check_every: int = 20, z: float = 2.0):
    """A linear model of high exact robust accuracy (no intercept: odd parity).

    Robust accuracy of w is exact, mean(y <w, x> - tau |w|_* > 0), but maximising it is a
    0-1 problem. (X, y) is split into a fitting part and a validation part (val_share,
    random by rng), the latter halved into a selection and a confirmation half; every
    candidate is judged by its exact robust accuracy on the selection half (on the
    fitting part it overfits: at d = 256, N = 6000, l2 0.25 the continuation took the
    fitting accuracy from 6 % to 15 % and the test accuracy down).
    Candidates: the starts themselves (dict name -> w; zero vectors skipped), and the
    iterates of a continuation from each of the `top` best starts: the sigmoid surrogate
    mean sigmoid(-r/T) of the normalised robust margin r = y <w, x>/|w|_* - tau (r > 0
    exactly when the point is robust), `stages` temperatures T halving from the spread of
    r at the start, `steps` mini-batch Adam steps each on the unit sphere of |.|_2 (r does
    not depend on the scale of w), an iterate taken every `check_every` steps.
    The first start is the reference (the table passes M w*) and the first incumbent; a
    candidate (later start or iterate) replaces the incumbent only if it is better on
    the validation part by more than `z` standard errors of the paired difference
    (selecting the best of ~30 candidates on validation alone picked, at l2 0.25, models
    1-2 points below M w* on the test set). The winner must then beat the reference on
    the confirmation half too (untouched by the selection), else the reference is
    returned. So the result is the reference unless something was found that is better
    beyond selection noise (at d = 128, uniform magnitudes, a selection-only rule still
    returned a model 0.8 points below M w* on the test set). info['confirmed'] says
    whether a non-reference winner passed the confirmation.
    Returns (model, info), info = dict(start (winning start), how, val_acc (selection
    half), fit_acc, ref_val_acc, start_val_acc {name: selection-half accuracy of each
    start}, confirmed).
    """
    check_norm_tau(norm, tau)
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    n = len(y)
    perm = rng.permutation(n)
    n_val = max(2, int(round(val_share * n)))
    vi, ci, fi = perm[:n_val // 2], perm[n_val // 2:n_val], perm[n_val:]
    Xv, yv = X[vi], y[vi]
    Xc, yc = X[ci], y[ci]
    Xf, yf = X[fi].astype(np.float32), y[fi]

    def robust(w):
        return yv * (Xv @ w) - tau * dual_norm(w, norm) > 0

    ref_name = next(iter(starts))
    ref = robust(np.asarray(starts[ref_name], np.float64))
    best = (float(ref.mean()), None, None, "")
    best_ok = ref.astype(np.float64)
    start_val = {}

    def consider(w, name, how):
        nonlocal best, best_ok
        ok = robust(w).astype(np.float64)
        acc = float(ok.mean())
        diff = ok - best_ok
        se = float(np.std(diff)) / np.sqrt(len(diff))
        if best[1] is None and name == ref_name or acc - best[0] > z * se:
            best, best_ok = (acc, w / np.linalg.norm(w), name, how), ok
        return acc

    for name, w0 in starts.items():
        w = np.asarray(w0, np.float64)
        if not np.any(w):
            continue
        start_val[name] = consider(w, name, "start, not optimised")
    for name in sorted(start_val, key=lambda k: -start_val[k])[:top]:
        w = np.asarray(starts[name], np.float64)
        w = w / np.linalg.norm(w)
        _, _, r = _normalised_margin_grad(w, Xf, yf, tau, norm, 1.0)
        T = max(float(np.std(r)), 1e-6)
        m1, m2 = np.zeros_like(w), np.zeros_like(w)
        t = 0
        for stage in range(stages):
            for i in range(steps):
                idx = rng.integers(0, len(yf), size=min(batch, len(yf)))
                _, g, _ = _normalised_margin_grad(w, Xf[idx], yf[idx], tau, norm, T)
                t += 1
                m1 = 0.9 * m1 + 0.1 * g
                m2 = 0.999 * m2 + 0.001 * g * g
                w = w - lr * (m1 / (1 - 0.9 ** t)) / (np.sqrt(m2 / (1 - 0.999 ** t)) + 1e-12)
                w /= np.linalg.norm(w)
                if (i + 1) % check_every == 0:
                    consider(w, name, f"sigmoid continuation from {name}, stage {stage} (T = {T:.3g})")
            T /= 2
    if best[1] is None:
        return LinearModel(np.zeros(X.shape[1])), {"start": None, "how": "all starts zero", "val_acc": 0.0,
                                                    "fit_acc": 0.0, "ref_val_acc": 0.0, "start_val_acc": start_val,
                                                    "confirmed": False}
    w = best[1]
    ref_w = np.asarray(starts[ref_name], np.float64)
    def confirm_acc(v):
        return float(np.mean(yc * (Xc @ v) - tau * dual_norm(v, norm) > 0))

    confirmed = best[2] == ref_name and best[3].startswith("start") or confirm_acc(w) > confirm_acc(ref_w)
    if not confirmed:  # the winner of the selection half did not beat the reference on the confirmation half
        best = (float(ref.mean()), ref_w / np.linalg.norm(ref_w), ref_name,
                f"start, not optimised ({best[3]} won the selection half but not the confirmation half)")
        w = best[1]
    fit_acc = float(np.mean(yf * (Xf @ w) - tau * dual_norm(w, norm) > 0))
    return LinearModel(w), {"start": best[2], "how": best[3], "val_acc": best[0], "fit_acc": fit_acc,
                            "ref_val_acc": float(ref.mean()), "start_val_acc": start_val, "confirmed": confirmed}
