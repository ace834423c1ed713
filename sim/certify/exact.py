r"""Exact verification of the symmetric two-layer ReLU network on small problems:
the worst-case margin min_{|delta| <= tau} y f(x + delta), with a proof.

Notation as in sim.certify: c_i = y <w_i, x>, t_i = c_i + <w_i, delta>, and each neuron is
g_i(t) = relu(t - b_i) + min(0, t + b_i) (b_i >= 0), with t_i in [l_i, u_i] =
[c_i - r_i, c_i + r_i] from the interval step.

Mixed-integer formulation (l_inf, and every iteration of l2)
-----------------------------------------------------------
We MINIMISE the margin, so the convex kink costs nothing: relu(t - b) = min p s.t.
p >= 0, p >= t - b, an LP epigraph that the minimisation makes tight. Only the concave
kink min(0, t + b) needs a binary, and only when its interval straddles it
(l_i + b_i < 0 < u_i + b_i): with L = l_i + b_i < 0 < U = u_i + b_i and z in {0, 1},

    s >= (t + b) - U (1 - z),   s >= L z,

gives min_s = t + b for z = 1 and 0 for z = 0 (since L <= t + b <= U), so min_z min_s =
min(0, t + b) exactly; no consistency constraint between z and the sign of t + b is
needed, the minimisation picks the right branch. Neurons with a stable concave kink are
linear or 0 there. So the number of binaries is the number of neurons whose interval
contains -b_i (a subset of the unstable neurons). The big-M constants L, U come from the
interval bounds, which are exact for each projection alone. For each neuron with both
p and s we add the valid cuts p + s >= (lines of the convex envelope of g_i on
[l_i, u_i]), so the root LP relaxation is at least as tight as the 'dual' certificate.
The MILP is solved by HiGHS (scipy.optimize.milp); its dual bound is a lower bound,
and the margin of the returned perturbation, re-evaluated in NumPy after clipping it
into the ball, is an upper bound; status 'optimal' when they agree to `tol`.

l2: a polyhedral ball and outer approximation
---------------------------------------------
HiGHS has no second-order cone, so the l2 ball B is replaced by a polytope P containing
it, and P is refined until the answer is proven to `tol`:
- the Ben-Tal--Nemirovski polytope: a binary tree of 2-D cones, each written with `nu`
  reflections/rotations (O(d nu) sparse rows and variables), which contains B and lies
  inside (1 + eps) B, eps = (1 / cos(pi / 2^(nu+1)))^ceil(log2 d) - 1 (nu from bn_levels,
  eps ~ 1e-4 by default); plus the slabs |<w_i / |w_i|, delta>| <= tau of every neuron
  (they make the interval bounds exact in the LP) and the box |delta_j| <= tau;
- the MILP over P: as P contains B, its dual bound is a LOWER bound for the l2 problem;
  its solution delta_k scaled into the ball is feasible, its margin an UPPER bound, and
  the two differ by at most Lip * eps * tau;
- to close that gap, outer approximation with convex subproblems (Duran--Grossmann):
  with the binaries z_k of the MILP solution fixed the problem is convex,
  min_{|delta| <= tau} F_z(delta), F_z = sum of relus + linear terms >= f (so its minimiser
  is another upper bound). It is solved exactly through its smooth dual
  max_{a in [0,1]^P} K + <a, e> - tau |q + W_P^T a| (L-BFGS-B), and the tangent cut of B at
  its minimiser is added, together with the Kelley cut at delta_k / |delta_k|. After that
  cut the MILP can no longer give pattern z_k a value below its true minimum, so the
  loop ends after finitely many patterns; in practice one to three MILPs.
The result is an interval [lower, value] that contains the exact worst-case margin
(up to HiGHS tolerances), with status 'optimal' when its width is below `tol` (or
'time_limit' with the interval reached). When W has rank r < d, delta is restricted to the
row space of W (an isometry: the orthogonal part does not change f).

decide mode (exact_check, certify_gap_diagnosis): only the sign is wanted. A PGD attack
and the sim.certify bound go first; then the MILP gets the extra row 'margin <= 0' and
a huge relative gap, so HiGHS stops at its first feasible point (a flipping delta, checked
in NumPy) or proves the row infeasible (robust): usually far faster than optimising.

Soundness: HiGHS works in floating point with feasibility tolerances (about 1e-7), so
its dual bound is exact only up to those; the certificates of sim.certify are the
rigorous lower bounds, this module is the reference for small problems and for telling
a loose bound from a weak attack.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy import sparse

from .bounds import check_args, dual_norm_rows, shrink, shrinkage_params


@dataclass
class ExactResult:
    value: float  # margin y f(x + delta) at the best perturbation found (an upper bound on the minimum)
    lower: float  # proven lower bound on the minimum (up to HiGHS tolerances)
    delta: np.ndarray  # the best perturbation found (inside the ball)
    status: str  # 'optimal' | 'decided' | 'undecided' | 'stalled' | 'time_limit' | 'failed: ...'
    seconds: float
    n_binary: int
    iterations: int
    infeasible_below_zero: bool = False  # decide mode: HiGHS proved no delta has margin <= 0

    @property
    def robust(self):
        """True (proved robust), False (a perturbation flips the label) or None (undecided)."""
        if self.value <= 0:
            return False
        if self.lower > 0 or self.infeasible_below_zero:
            return True
        return None


def _envelope_lines(V, G):
    """Lines (slope, intercept) in v of the lower convex envelope through the 4 breakpoints."""
    lines = []
    for j in range(3):
        for k in range(j + 1, 4):
            span = V[k] - V[j]
            if span <= 1e-15 * max(1.0, abs(V[k]) + abs(V[j])):
                continue
            sl = (G[k] - G[j]) / span
            ic = G[j] - sl * V[j]
            if np.all(G - (sl * V + ic) >= -1e-12 * (1 + np.abs(G))):
                lines.append((sl, ic))
    return lines


FEAS_TOL = 1e-7  # HiGHS' primal feasibility tolerance (its default)


class _Rows:
    """Sparse constraint rows lb <= A v <= ub, collected as COO triplets."""

    def __init__(self):
        self.r, self.c, self.v, self.lb, self.ub = [], [], [], [], []

    def add(self, cols, vals, lb, ub):
        k = len(self.lb)
        self.r.extend([k] * len(cols))
        self.c.extend(cols)
        self.v.extend(vals)
        self.lb.append(lb)
        self.ub.append(ub)


def bn_levels(dim: int, rel_acc: float) -> int:
    """Rotations per 2-D cone so that the Ben-Tal--Nemirovski polytope of a ball in R^dim
    lies inside (1 + rel_acc) times the ball (tree depth ceil(log2 dim))."""
    depth = max(1, int(np.ceil(np.log2(max(dim, 2)))))
    for nu in range(2, 30):
        if (1.0 / np.cos(np.pi / 2 ** (nu + 1))) ** depth - 1.0 <= rel_acc:
            return nu
    return 30


class _Model:
    """The MILP of one sample in the variables (eta, p, s, z, cone); delta = y Q eta.

    For l2 the ball |eta| <= tau is replaced by the Ben-Tal--Nemirovski polytope (a binary
    tree of 2-D cones, each approximated by `nu` reflections/rotations), which contains the
    ball and lies inside (1 + eps) times it, plus the neuron slabs and tangent cuts.
    """

    def __init__(self, W, b, c, r, tau, norm, Q, nu=None):
        self.W, self.b, self.c, self.r, self.tau, self.norm, self.Q = W, b, c, r, tau, norm, Q
        WQ = W @ Q if Q is not None else W
        self.WQ = WQ
        m, dd = WQ.shape
        self.dd = dd
        lo, hi = c - r, c + r
        K = 0.0
        q = np.zeros(dd)
        p_idx, s_idx = [], []
        for i in range(m):
            if lo[i] >= b[i]:
                K += c[i] - b[i]
                q += WQ[i]
            elif hi[i] > b[i]:
                p_idx.append(i)
            if hi[i] <= -b[i]:
                K += c[i] + b[i]
                q += WQ[i]
            elif lo[i] < -b[i]:
                s_idx.append(i)
        self.K, self.q, self.p_idx, self.s_idx = K, q, p_idx, s_idx
        npv, nsv = len(p_idx), len(s_idx)
        ip = {i: dd + k for k, i in enumerate(p_idx)}
        isv = {i: dd + npv + k for k, i in enumerate(s_idx)}
        iz = {i: dd + npv + nsv + k for k, i in enumerate(s_idx)}
        self.z_slice = slice(dd + npv + nsv, dd + npv + 2 * nsv)
        lb = [-tau] * dd + [0.0] * npv + [lo[i] + b[i] for i in s_idx] + [0.0] * nsv
        ub = [tau] * dd + [np.inf] * npv + [0.0] * nsv + [1.0] * nsv
        R = _Rows()
        cols = list(range(dd))
        for i in p_idx:  # p >= t - b:  p - <w, eta> >= c - b
            R.add(cols + [ip[i]], list(-WQ[i]) + [1.0], c[i] - b[i], np.inf)
        for i in s_idx:  # s >= (t + b) - U (1 - z),  s >= L z
            L, U = lo[i] + b[i], hi[i] + b[i]
            R.add(cols + [isv[i], iz[i]], list(-WQ[i]) + [1.0, -U], c[i] + b[i] - U, np.inf)
            R.add([isv[i], iz[i]], [1.0, -L], 0.0, np.inf)
        for i in sorted(set(p_idx) & set(s_idx)):  # p + s >= envelope lines of g_i (valid cuts)
            V = np.clip(np.array([-r[i], -b[i] - c[i], b[i] - c[i], r[i]]), -r[i], r[i])
            G = shrink(c[i] + V, b[i])
            for sl, ic in _envelope_lines(V, G):
                R.add(cols + [ip[i], isv[i]], list(-sl * WQ[i]) + [1.0, 1.0], ic, np.inf)
        self.eps = 0.0
        if norm == "l2":
            nw = np.linalg.norm(WQ, axis=1)
            for i in range(m):  # slabs |<w_i / |w_i|, eta>| <= tau
                if nw[i] > 0:
                    R.add(cols, list(WQ[i] / nw[i]), -tau, tau)
            if dd > 1:
                self.nu = nu if nu is not None else bn_levels(dd, 1e-4)
                self.eps = (1.0 / np.cos(np.pi / 2 ** (self.nu + 1))) ** int(np.ceil(np.log2(dd))) - 1.0
                self._ball(R, lb, ub, dd, tau)
        self.R = R
        self.nvar = len(lb)
        cost = np.zeros(self.nvar)
        cost[:dd] = q
        cost[dd:dd + npv + nsv] = 1.0
        self.cost = cost
        self.bounds = Bounds(np.array(lb), np.array(ub))
        integ = np.zeros(self.nvar)
        integ[self.z_slice] = 1
        self.integrality = integ

    def _ball(self, R, lb, ub, dd, tau):
        """Ben-Tal--Nemirovski: (x1, x2) -> t with |(x1, x2)| <= t / cos(pi / 2^(nu+1)).

        xi_0 >= |x1|, eta_0 >= |x2|; for j < nu, with th = pi / 2^(j+2):
        xi_{j+1} = cos(th) xi_j + sin(th) eta_j, eta_{j+1} >= |cos(th) eta_j - sin(th) xi_j|;
        xi_nu <= t, eta_nu <= tan(pi / 2^(nu+1)) xi_nu. The disk is inside (take equalities:
        each step folds the angle into [0, pi / 2^(j+2)]), and the rotations never shrink the
        norm, which gives the outer bound. Auxiliaries lie in [0, tau] (true for the witness).
        """
        nu = self.nu

        def new_var():
            lb.append(0.0)
            ub.append(tau)
            return len(lb) - 1

        def cone(x1, x2, signed):
            xi = [new_var() for _ in range(nu + 1)]
            et = [new_var() for _ in range(nu + 1)]
            t = new_var()
            for x, v in ((x1, xi[0]), (x2, et[0])):
                R.add([v, x], [1.0, -1.0], 0.0, np.inf)
                if signed:
                    R.add([v, x], [1.0, 1.0], 0.0, np.inf)
            for j in range(nu):
                th = np.pi / 2 ** (j + 2)
                cs, sn = np.cos(th), np.sin(th)
                R.add([xi[j + 1], xi[j], et[j]], [1.0, -cs, -sn], 0.0, 0.0)
                R.add([et[j + 1], et[j], xi[j]], [1.0, -cs, sn], 0.0, np.inf)
                R.add([et[j + 1], et[j], xi[j]], [1.0, cs, -sn], 0.0, np.inf)
            R.add([xi[nu], t], [1.0, -1.0], -np.inf, 0.0)
            R.add([et[nu], xi[nu]], [1.0, -np.tan(np.pi / 2 ** (nu + 1))], -np.inf, 0.0)
            return t

        level = [(j, True) for j in range(dd)]  # (variable, may be negative)
        while len(level) > 1:
            nxt = []
            for k in range(0, len(level) - 1, 2):
                (a, sa), (bb, sb) = level[k], level[k + 1]
                nxt.append((cone(a, bb, sa or sb), False))
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        # the root variable is bounded by tau through its bounds [0, tau]

    def add_cut(self, e):
        e = np.asarray(e, dtype=np.float64)
        self.R.add(list(range(self.dd)), list(e), -np.inf, self.tau)

    def add_cutoff(self):
        """The row 'margin <= 0' (objective + K <= 0): the MILP becomes 'find a flipping delta'."""
        nz = np.nonzero(self.cost)[0]
        self.R.add(list(nz), list(self.cost[nz]), -np.inf, -self.K)

    def solve(self, time_limit, gap=1e-9):
        cons = []
        if self.R.lb:
            A = sparse.csr_array((self.R.v, (self.R.r, self.R.c)), shape=(len(self.R.lb), self.nvar))
            cons = [LinearConstraint(A, np.array(self.R.lb), np.array(self.R.ub))]
        t0 = time.perf_counter()
        res = milp(self.cost, integrality=self.integrality, bounds=self.bounds, constraints=cons,
                   options={"time_limit": max(time_limit, 0.01), "mip_rel_gap": gap})
        if res.status == 4:  # HiGHS 'solve error' (seen in presolve/postsolve): retry without presolve
            left = time_limit - (time.perf_counter() - t0)
            res = milp(self.cost, integrality=self.integrality, bounds=self.bounds, constraints=cons,
                       options={"time_limit": max(left, 0.01), "mip_rel_gap": gap, "presolve": False})
        return res


def _margin(W, b, x, y, delta):
    return float(y * shrink(W @ (x + delta), b).sum())


def _pattern_nlp(model: _Model, zvals: np.ndarray):
    """The convex problem of one binary pattern, exactly (l2 only), in the model's coordinates.

    With z fixed the concave parts are z_i (t_i + b_i) (linear), so the objective is
    F_z(eta) = K_z + <q_z, eta> + sum_{i in P} max(0, <w_i, eta> + e_i), convex, and F_z >= the
    margin everywhere. Its dual over the ball, max_{a in [0,1]^P} K_z + <a, e> - tau |q_z + W_P^T a|,
    is smooth away from q_z + W_P^T a = 0 and is solved by L-BFGS-B; the primal point is
    eta = -tau u / |u|, u = q_z + W_P^T a. Returns (eta on the sphere or None, dual value).
    """
    from scipy.optimize import minimize

    WQ, c, b, tau = model.WQ, model.c, model.b, model.tau
    q = model.q.copy()
    K = model.K
    for k, i in enumerate(model.s_idx):
        if zvals[k] > 0.5:
            q += WQ[i]
            K += c[i] + b[i]
    P = model.p_idx
    if not P:
        nq = np.linalg.norm(q)
        return (-tau * q / nq if nq > 0 else None), K - tau * nq
    A = WQ[P]
    e = c[P] - b[P]

    def neg(a):
        u = q + a @ A
        nu = np.linalg.norm(u)
        val = -(K + a @ e - tau * nu)
        grad = -e + (tau / nu) * (A @ u) if nu > 0 else -e
        return val, grad

    a0 = np.clip(0.5 + np.zeros(len(P)), 0, 1)
    res = minimize(neg, a0, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * len(P),
                   options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
    a = res.x
    u = q + a @ A
    nu = np.linalg.norm(u)
    return (-tau * u / nu if nu > 0 else None), -float(neg(a)[0])


def _attack_start(net, W, b, x, y, tau, norm):
    """A quick PGD attack for a first upper bound (evaluated in float64)."""
    from sim.attacks import pgd

    try:
        r = pgd(net, x[None, :].astype(net.W.dtype), np.array([y]), tau, norm, steps=50, restarts=3)
        delta = np.asarray(r.x_adv[0], dtype=np.float64) - x
    except Exception:  # the attack is only a warm start
        return None
    if norm == "l2":
        n = np.linalg.norm(delta)
        delta = delta * min(1.0, tau / n) if n > 0 else delta
    else:
        delta = np.clip(delta, -tau, tau)
    return delta


def exact_solve(net, x, y, tau, norm="l2", time_limit=60.0, tol=1e-6, decide=False,
                max_iter=1000, warm_start=True) -> ExactResult:
    """Worst-case margin of one sample with a proof (see the module docstring).

    tol: stop when value - lower <= tol * max(1, |value|) (HiGHS' tolerances limit it to
    about 1e-6 relative in l2). decide: only the sign of the minimum is wanted: a PGD attack
    and the sim.certify bound are tried first, then the MILP gets the row 'margin <= 0' and
    stops at its first feasible point (a flipping delta) or proves the row infeasible
    (robust); much faster than optimising. warm_start: a short PGD attack gives the first
    upper bound (and, in l2, the first cut).
    """
    check_args(norm, tau)
    W, b = shrinkage_params(net)
    x = np.asarray(x, dtype=np.float64).ravel()
    y = float(y)
    if x.shape != (W.shape[1],) or abs(y) != 1:
        raise ValueError(f"x of shape {x.shape} / y={y!r} invalid: expected ({W.shape[1]},) and y in {{-1, +1}}")
    tau = float(tau)
    t0 = time.perf_counter()
    c = y * (W @ x)
    r = tau * dual_norm_rows(W, norm)
    Q = None
    if norm == "l2":
        _, S, Vt = np.linalg.svd(W, full_matrices=False)
        rank = int(np.sum(S > S.max() * 1e-12)) if S.size and S.max() > 0 else 0
        if rank < W.shape[1]:
            Q = Vt[:rank].T
    model = _Model(W, b, c, r, tau, norm, Q)
    to_delta = (lambda eta: y * (Q @ eta)) if Q is not None else (lambda eta: y * eta)  # model delta = y delta
    best_val, best_delta = _margin(W, b, x, y, np.zeros_like(x)), np.zeros_like(x)

    def offer(delta):
        nonlocal best_val, best_delta
        val = _margin(W, b, x, y, delta)
        if val < best_val:
            best_val, best_delta = val, delta

    def done(status, lower, it, infeasible=False):
        return ExactResult(best_val, float(lower), best_delta, status, time.perf_counter() - t0,
                           len(model.s_idx), it, infeasible)

    if model.dd == 0 or tau == 0:  # nothing can move f
        return done("optimal", best_val, 0)
    if warm_start or decide:
        d0 = _attack_start(net, W, b, x, y, tau, norm)
        if d0 is not None:
            offer(d0)
            if norm == "l2":
                e0 = y * (Q.T @ d0 if Q is not None else d0)
                n0 = np.linalg.norm(e0)
                if n0 > 0:
                    model.add_cut(e0 / n0)
    lower = -np.inf
    if decide:
        if best_val <= 0:
            return done("decided", lower, 0)
        from .certificate import certify

        lower = float(certify(net, x[None, :], np.array([y]), tau, norm, "best").lower[0])
        if lower > 0:
            return done("decided", lower, 0)
        model.add_cutoff()
    status = "time_limit"
    it = 0
    stall, last, eta_z = 0, None, None
    while it < max_iter:
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            break
        it += 1
        res = model.solve(left, gap=1e12 if decide else 1e-9)
        if decide and res.status == 2:  # no delta in the (outer) polytope has margin <= 0
            return done("decided", max(lower, 0.0), it, infeasible=True)
        if not decide:
            bound = res.mip_dual_bound if res.mip_dual_bound is not None else (res.fun if res.status == 0 else None)
            if bound is not None and np.isfinite(bound):  # an LP (no binaries) has no separate dual bound
                lower = max(lower, float(bound) + model.K)
        if res.x is None:
            status = "time_limit" if res.status == 1 else f"failed: {res.message}"
            break
        eta = res.x[:model.dd]
        if norm == "l2":
            nrm = float(np.linalg.norm(eta))
            offer(to_delta(eta * min(1.0, tau / nrm) if nrm > 0 else eta))
            zvals = res.x[model.z_slice]
            eta_z, _ = _pattern_nlp(model, zvals)
            if eta_z is not None:
                offer(to_delta(eta_z))
        else:
            nrm = 0.0
            offer(np.clip(to_delta(eta), -tau, tau))
        if decide and best_val <= 0:
            status = "decided"
            break
        if not decide and best_val - lower <= tol * max(1.0, abs(best_val)):
            status = "optimal"
            break
        if res.status != 0:  # time limit inside this MILP
            status = "time_limit"
            break
        if norm == "linf" or nrm <= tau * (1 + FEAS_TOL):
            # the MILP optimum lies in the ball (up to HiGHS' feasibility tolerance): the two
            # bounds differ by solver tolerance only (in decide mode: a margin within
            # tolerance of 0, undecided)
            status = "undecided" if decide else "optimal"
            break
        # the cuts no longer move the MILP solution (violations below the solver's tolerance)
        stall = stall + 1 if last is not None and np.linalg.norm(eta - last) <= 1e-9 * tau else 0
        last = eta.copy()
        if stall >= 3:
            ok = not decide and best_val - lower <= 100 * tol * max(1.0, abs(best_val))
            status = "optimal" if ok else "stalled"
            break
        model.add_cut(eta / nrm)
        if eta_z is not None:
            model.add_cut(eta_z / tau)
    return done(status, lower, it)


def exact_min_margin(net, x, y, tau, norm="l2", time_limit=60.0, tol=1e-6):
    """(value, status): the exact worst-case margin min_{|delta| <= tau} y f(x + delta) of one
    sample (the margin at the best perturbation found; exact to `tol` when status is
    'optimal'), and the solver status ('optimal', 'time_limit' or 'failed: ...')."""
    res = exact_solve(net, x, y, tau, norm, time_limit=time_limit, tol=tol)
    return res.value, res.status


@dataclass
class ExactCheck:
    indices: np.ndarray  # which samples were verified
    robust: np.ndarray  # object array: True / False / None (undecided at the time limit)
    value: np.ndarray  # upper bound on the worst-case margin
    lower: np.ndarray  # lower bound on the worst-case margin
    status: list
    seconds: float

    def counts(self) -> dict:
        rob = list(self.robust)
        return {"robust": sum(v is True for v in rob), "broken": sum(v is False for v in rob),
                "undecided": sum(v is None for v in rob)}


def exact_check(net, X, y, tau, norm="l2", max_samples=20, time_limit=30.0, indices=None, seed=0,
                decide=True) -> ExactCheck:
    """Exact robustness of a subsample (at most max_samples, drawn without replacement with
    `seed`, or the given indices): robust True / False, or None where the time limit hit."""
    check_args(norm, tau)
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if indices is None:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(X), size=min(max_samples, len(X)), replace=False))
    else:
        indices = np.asarray(indices, dtype=int)[:max_samples]
    t0 = time.perf_counter()
    rob, val, low, st = [], [], [], []
    for i in indices:
        res = exact_solve(net, X[i], y[i], tau, norm, time_limit=time_limit, decide=decide)
        rob.append(res.robust)
        val.append(res.value)
        low.append(res.lower)
        st.append(res.status)
    return ExactCheck(np.asarray(indices), np.array(rob, dtype=object), np.array(val), np.array(low), st,
                      time.perf_counter() - t0)
