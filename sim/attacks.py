"""Attacks on binary classifiers f (label sgn f), batched, in l2 and l_inf balls.

A model is anything with `forward(X) -> f` and `output_gradient(X) -> (df/dx, f)`:
the two-layer network, and the low-complexity models of the lower bound. Attacks
ascend the margin loss -y f(x); for a binary classifier its gradient has the direction
of the logistic loss gradient (they differ by the factor sigmoid(-y f) > 0), so FGM is
the same attack, and it does not vanish by underflow on confident points.

Every attack returns an AttackResult: the perturbed points (always inside the ball,
up to rounding) and per-sample success (y f(x + delta) <= 0). Robust accuracy under a
set of attacks is the share of points that no attack of the set breaks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from .common.norms import NORMS, check_norm  # noqa: F401 - NORMS re-exported
from .common.validation import ConfigError


def _check(norm: str, tau: float):
    check_norm(norm)
    if not (np.isfinite(tau) and tau >= 0):
        raise ConfigError(f"tau={tau!r} is invalid: allowed values in [0, inf)")


@dataclass
class AttackResult:
    name: str
    x_adv: np.ndarray | None  # None where only the margins were computed (evaluate_robustness)
    success: np.ndarray  # bool per sample: y f(x_adv) <= 0
    margin: np.ndarray  # y f(x_adv), per sample

    @property
    def robust_accuracy(self) -> float:
        return float(np.mean(~self.success))


def _result(name, model, X_adv, y):
    f = model.forward(X_adv)
    margin = y * f
    return AttackResult(name, X_adv, margin <= 0, margin)


def project(delta: np.ndarray, norm: str, tau: float) -> np.ndarray:
    """Euclidean projection of each row of delta onto the ball of radius tau."""
    return _project_(np.array(delta, dtype=np.result_type(delta, np.float32)), norm, tau)


def steepest(g: np.ndarray, norm: str) -> np.ndarray:
    """The unit-ball point maximising <g, .>: g/|g|_2 (l2) or sign(g) (l_inf); 0 where g = 0."""
    if norm == "linf":
        return np.sign(g)
    n = np.linalg.norm(g, axis=1, keepdims=True)
    return np.where(n > 0, g / np.where(n > 0, n, 1.0), 0.0)


def random_in_ball(rng: np.random.Generator, shape, norm: str, tau: float) -> np.ndarray:
    """Uniform points in the ball (l2: direction uniform, radius tau U^(1/d))."""
    if norm == "linf":
        return rng.uniform(-tau, tau, size=shape)
    g = rng.standard_normal(shape)
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
    r = tau * rng.random((shape[0], 1)) ** (1.0 / shape[1])
    return g * r


def margin_gradient(model, X, y):
    """Gradient in x of the margin loss -y f(x), and f."""
    J, f = model.output_gradient(X)
    return -y[:, None] * J, f


def _float(X) -> np.ndarray:
    """X as a floating array (its own dtype if floating, else float64): attacks work in
    the model's precision, without float64 copies of float32 data."""
    X = np.asarray(X)
    return X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float64)


def _ascend_(J: np.ndarray, y: np.ndarray, step: float, norm: str) -> np.ndarray:
    """In place: J (= df/dx) becomes step * steepest(-y J, norm), the ascent step on the
    margin loss; no n x d temporaries."""
    c = -y * step
    if norm == "linf":
        np.sign(J, out=J)
    else:
        n = np.linalg.norm(J, axis=1).astype(np.float64)
        c = np.where(n > 0, c / np.where(n > 0, n, 1.0), 0.0)
    J *= c.astype(J.dtype)[:, None]
    return J


def _project_(delta: np.ndarray, norm: str, tau: float) -> np.ndarray:
    """project(delta, norm, tau), in place."""
    if norm == "linf":
        return np.clip(delta, -tau, tau, out=delta)
    n = np.linalg.norm(delta, axis=1).astype(np.float64)
    delta *= np.minimum(1.0, tau / np.maximum(n, 1e-300)).astype(delta.dtype)[:, None]
    return delta


def fgm(model, X, y, tau, norm="l2") -> AttackResult:
    """One step of size tau along the steepest ascent direction: FGM (l2) / FGSM (l_inf)."""
    _check(norm, tau)
    X = _float(X)
    J, _ = model.output_gradient(X)
    X_adv = _ascend_(np.asarray(J, X.dtype), y, tau, norm)
    X_adv += X
    return _result("fgm" if norm == "l2" else "fgsm", model, X_adv, y)


class RandomStarts:
    """The random starts of PGD's restarts, handed out block by block of rows.

    Restart r (r > 0, or r = 0 when random_start and restarts == 1) starts at
    random_in_ball(rng, (n, d), norm, tau), drawn from rng restart after restart, as
    drawing them all at once would; the generator states are copied up front (and rng is
    advanced past the draws), so that block(r, lo, hi) gives rows lo..hi of that start
    with O(block) memory. Blocks of a restart must be asked for in increasing row order.
    """

    _SKIP_ROWS = 256

    def __init__(self, rng: np.random.Generator, restarts: int, random_start: bool, n: int, d: int, norm: str,
                 tau: float):
        self.n, self.d, self.norm, self.tau = n, d, norm, tau
        self.gens = []
        for r in range(restarts):
            if not (random_start and (r > 0 or restarts == 1)):
                self.gens.append(None)
                continue
            first = copy.deepcopy(rng)
            self._skip(rng, "uniform" if norm == "linf" else "normal", d)
            second = None
            if norm != "linf":
                second = copy.deepcopy(rng)
                self._skip(rng, "random", 1)
            self.gens.append((first, second))

    def _skip(self, rng, kind, width):
        for lo in range(0, self.n, self._SKIP_ROWS):
            shape = (min(self.n, lo + self._SKIP_ROWS) - lo, width)
            if kind == "uniform":
                rng.uniform(-self.tau, self.tau, size=shape)
            elif kind == "normal":
                rng.standard_normal(shape)
            else:
                rng.random(shape)

    def block(self, r: int, out: np.ndarray) -> np.ndarray:
        """Fill out (the next rows x d) with restart r's start for those rows."""
        gens = self.gens[r]
        if gens is None:
            out[...] = 0
        elif self.norm == "linf":
            out[...] = gens[0].uniform(-self.tau, self.tau, size=out.shape)
        else:
            g = gens[0].standard_normal(out.shape)
            g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
            out[...] = g * (self.tau * gens[1].random((out.shape[0], 1)) ** (1.0 / self.d))
        return out




def _pgd_rows(n: int) -> int:
    import numba

    from .model.tuning import CHUNK, PGD_BLOCKS

    return max(2 * CHUNK * numba.get_num_threads(), -(-n // PGD_BLOCKS))


def pgd_step_sizes(tau, steps: int, step_size=None) -> list[float]:
    """The PGD step schedule, one size per step: step_size * tau (step_size = 2.5 / steps by
    default, Madry et al.), halved at 50 % and again at 75 % of the steps. Used by pgd and by
    the W W^T route (sim.model.network.pgd_l2_margins), so both take the same steps."""
    alpha0 = (step_size if step_size is not None else 2.5 / steps) * tau
    return [alpha0 * (0.5 if t >= steps // 2 else 1.0) * (0.5 if t >= (3 * steps) // 4 else 1.0) for t in range(steps)]


def pgd(model, X, y, tau, norm="l2", steps=50, restarts=5, step_size=None, rng=None,
        random_start=True, block_rows: int | None = None) -> AttackResult:
    """Projected gradient ascent on -y f with random starts and restarts.

    Step size: step_size * tau, with step_size = 2.5 / steps by default (Madry et al.),
    halved at 50 % and 75 % of the steps. Restart 0 starts at x (no noise) unless
    random_start and restarts == 1; every other restart starts uniformly in the ball.
    The best point per sample (lowest margin) over all steps and restarts is kept.
    Works in X's precision, on block_rows points at a time (default: a quarter of them,
    see _pgd_rows): the points are attacked independently and the random starts are those
    of the whole batch (RandomStarts), so the block size changes only the memory held
    (two block x d buffers and the model's temporaries on a block).
    """
    _check(norm, tau)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps={steps}, restarts={restarts} are invalid: allowed integers >= 1")
    rng = rng if rng is not None else np.random.default_rng(0)
    X = _float(X)
    n, d = X.shape
    y = np.asarray(y, np.float64)
    alphas = pgd_step_sizes(tau, steps, step_size)
    starts = RandomStarts(rng, restarts, random_start, n, d, norm, tau)
    rows = min(n, block_rows or _pgd_rows(n))
    if rows < 1:
        raise ValueError(f"block_rows={block_rows!r} is invalid: allowed integers >= 1")
    best_x = X.copy()
    best_m = np.empty(n)
    delta_buf = np.empty((rows, d), X.dtype)
    xa_buf = np.empty((rows, d), X.dtype)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        Xb, yb, bx = X[lo:hi], y[lo:hi], best_x[lo:hi]
        delta, Xa = delta_buf[:hi - lo], xa_buf[:hi - lo]
        bm = yb * model.forward(Xb)

        def keep_best(f):
            nonlocal bm
            m = yb * f
            better = m < bm
            bm = np.where(better, m, bm)
            bx[better] = Xa[better]

        for r in range(restarts):
            starts.block(r, delta)
            for alpha in alphas:
                np.add(Xb, delta, out=Xa)
                J, f = model.output_gradient(Xa)
                keep_best(f)
                delta += _ascend_(np.asarray(J, X.dtype), yb, alpha, norm)
                del J
                _project_(delta, norm, tau)
            np.add(Xb, delta, out=Xa)
            keep_best(model.forward(Xa))
        best_m[lo:hi] = bm
    return AttackResult(f"pgd{steps}x{restarts}", best_x, best_m <= 0, best_m)


def dense(model, X, y, tau, direction, norm="l2") -> AttackResult:
    """The theory-guided dense attack: delta = -y tau v/|v| (l2) or -y tau sign(v) (l_inf), v = M w*."""
    _check(norm, tau)
    v = steepest(direction[None, :], norm)[0]
    X_adv = X - tau * y[:, None] * v[None, :]
    return _result("dense", model, X_adv, y)


def random_noise(model, X, y, tau, norm="l2", draws=10, rng=None) -> AttackResult:
    """A control: the best of `draws` random points on the sphere (l2) / corners (l_inf)."""
    _check(norm, tau)
    rng = rng if rng is not None else np.random.default_rng(0)
    best_x, best_m = X.copy(), y * model.forward(X)
    for _ in range(draws):
        if norm == "linf":
            delta = tau * rng.choice(np.array([-1.0, 1.0]), size=X.shape)
        else:
            delta = steepest(rng.standard_normal(X.shape), "l2") * tau
        m = y * model.forward(X + delta)
        better = m < best_m
        best_m = np.where(better, m, best_m)
        best_x[better] = (X + delta)[better]
    return AttackResult("random", best_x, best_m <= 0, best_m)


@dataclass
class RobustReport:
    """Robust accuracy under the best of several attacks, with the per-attack numbers."""

    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict
    masking_flag: bool
    masking_note: str
    broken: np.ndarray  # bool per sample: some attack succeeded (or misclassified clean)


GRADIENT_ATTACKS = ("fgm", "fgsm", "pgd")


def _pgd_for_report(model, X, y, tau, norm, steps, restarts, rng) -> AttackResult:
    """pgd(...) for evaluate_robustness, which needs only the margins: in l2, on a model
    with `pgd_margins` (the two-layer network: PGD on the pre-activations through W W^T,
    the same attack and random draws, equal up to rounding, tests/test_attacks.py) when
    W W^T (m x m) is no larger than an n x m buffer; x_adv is then None."""
    width = getattr(model, "width", None)
    if norm == "l2" and hasattr(model, "pgd_margins") and width is not None and width <= len(X):
        m = model.pgd_margins(X, y, tau, steps=steps, restarts=restarts, rng=rng)
        return AttackResult(f"pgd{steps}x{restarts}", None, m <= 0, m)
    return pgd(model, X, y, tau, norm, steps, restarts, rng=rng)


def evaluate_robustness(model, X, y, tau, norm="l2", direction=None, pgd_steps=50, pgd_restarts=5,
                        random_draws=10, seed=0) -> RobustReport:
    """Run FGM, PGD (steps x restarts), the dense attack (if a direction is given) and the
    random control; robust accuracy = share of points none of them breaks.

    Gradient masking check: if a non-gradient attack (dense, random) breaks points that
    every gradient attack left standing, on more than 1 % of the points, the gradient
    attacks are weak there and the report flags it.
    """
    rng = np.random.default_rng(seed)
    clean_margin = y * model.forward(X)
    results = [fgm(model, X, y, tau, norm), _pgd_for_report(model, X, y, tau, norm, pgd_steps, pgd_restarts, rng)]
    if direction is not None:
        results.append(dense(model, X, y, tau, direction, norm))
    results.append(random_noise(model, X, y, tau, norm, random_draws, rng=rng))
    broken = clean_margin <= 0
    grad_broken = broken.copy()
    other_broken = np.zeros_like(broken)
    per = {}
    for r in results:
        per[r.name] = r.robust_accuracy
        broken |= r.success
        if r.name.startswith(GRADIENT_ATTACKS):
            grad_broken |= r.success
        else:
            other_broken |= r.success
    extra = float(np.mean(other_broken & ~grad_broken))
    flag = extra > 0.01
    note = (f"non-gradient attacks break {100 * extra:.1f} % of points that FGM and PGD miss"
            + (": gradient masking suspected" if flag else ""))
    return RobustReport(float(np.mean(clean_margin > 0)), float(np.mean(~broken)), per, flag, note, broken)
