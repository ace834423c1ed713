"""The neural tangent kernel of the symmetric two-layer network at its initialisation.

Network (SPEC section 2): f(x; W) = sum_i g(<w_i, x>, b_i), g(u, b) = act(u - b) - act(-u - b),
bias b_i not differentiated (relative bias b_i = beta |w_i|, fixed during linearisation).
Its linearisation at the initial weights W0 (finite width m) is

    f_lin(x) = f(x; W0) + <grad_W f(x; W0), W - W0>
             = f0(x) + (1/sqrt m) sum_i g'(<w0_i, x>) <theta_i, x>,      W - W0 = theta / sqrt m,

features phi(x) = g'(W0 x) (x) x / sqrt m (m d dims; for the ReLU g'(u) = 1[|u| > b]), and
kernel <phi(x), phi(x')> = <x, x'> (1/m) sum_i g'(u_i) g'(u'_i), the empirical NTK
normalised by the width. The model is trained in the primal (theta is m x d = 131 k
numbers at d = 256): f, df/dx and the gradient in theta cost ~2 m d flops per input
each, the cost of the network itself, and no N x N Gram is formed, so 10 N = 60 k
samples are as cheap per step as N. f_lin is odd like the network (g' is even, x is odd);
parity 'full' adds a trained intercept c.

df/dx = g'(U) (W0 + theta/sqrt m) + (g''(U) * (X theta^T)) W0 / sqrt m; for the ReLU g'' = 0
almost everywhere (f_lin jumps where a neuron crosses its threshold; like the ReLU kink,
the jumps have no gradient, and the dense and random attacks of sim.attacks do not use
gradients).

Infinite width (`ntk_infinite`, ReLU): with w ~ N(0, sigma0^2 I) i.i.d. and the relative
bias, 1[|<w, x>| > beta |w|] depends on w/|w|, uniform on the sphere S^{d-1}, so

    K_inf(x, x') = <x, x'> P(|<u, x>| > beta, |<u, x'>| > beta),   u uniform on S^{d-1}.

Project u on the plane of x, x': rho (cos t, sin t) with t uniform and rho^2 ~ Beta(1, (d-2)/2)
independent of t. Given t the event is rho > r*(t) = beta max(1/(|x| |cos t|),
1/(|x'| |cos(t - phi)|)) (phi the angle between x and x'), whose probability is the
Beta survival function (1 - r*^2)_+^((d-2)/2) in closed form; what remains is the 1-D
integral (1/pi) int_0^pi ... dt, smooth between the (at most two) points where the max
switches, computed by Gauss-Legendre on each piece (128 nodes: converged to 1e-7 or better,
checked in the tests against a finer rule and against Monte Carlo on the sphere). For a
fixed bias b with w ~ N(0, sigma0^2 I), rho^2 / (2 sigma0^2) ~ Exp(1) and the survival
function is exp(-r*^2 / (2 sigma0^2)) with r* built from b. This is the exact limit of
the normalised empirical NTK at fixed d as m -> infinity (tests: the gap shrinks like
1/sqrt m).
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from .fit import check_int, check_parity, logistic

CHUNK = 4096


def _act_derivs(activation: str, q: float, rho: float):
    """(act, act', act'') as vectorised functions, act'(0) = 0 like sim.model.kernels."""
    if activation == "relu":
        return (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype), lambda z: np.zeros_like(z))
    if activation == "smooth_relu":
        def act(z):
            zc = np.clip(z, 0.0, rho)
            return np.where(z <= 0, 0.0, np.where(z <= rho, zc ** q / (q * rho ** (q - 1)), z - (1 - 1 / q) * rho))

        def dact(z):
            zc = np.clip(z, 0.0, rho)
            return np.where(z <= 0, 0.0, np.where(z <= rho, (zc / rho) ** (q - 1), 1.0))

        def ddact(z):
            zc = np.clip(z, 0.0, rho)
            return np.where((z > 0) & (z <= rho), (q - 1) * zc ** (q - 2) / rho ** (q - 1), 0.0)

        return act, dact, ddact
    raise ValueError(f"activation={activation!r} is invalid: allowed 'relu', 'smooth_relu'")


class NTKModel:
    """The linearised network f_lin (see the module docstring); theta = vec(theta) [+ c]."""

    def __init__(self, W0: np.ndarray, b: np.ndarray, activation: str = "relu", q: float = 3.0, rho: float = 0.1,
                 parity: str = "odd", dtype=np.float64):
        check_parity(parity)
        self.dtype = np.dtype(dtype)
        self.W0 = np.ascontiguousarray(W0, np.float64)
        self.m, self.d = self.W0.shape
        self.b = np.broadcast_to(np.asarray(b, np.float64), (self.m,)).copy()
        self.activation, self.q, self.rho = activation, float(q), float(rho)
        self._act, self._dact, self._ddact = _act_derivs(activation, self.q, self.rho)
        self.intercept = parity == "full"
        self.parity = parity
        self.theta = np.zeros(self.m * self.d + int(self.intercept))
        self._W0c = self.W0.astype(self.dtype)

    @classmethod
    def from_net(cls, net, parity: str = "odd", dtype=np.float64) -> "NTKModel":
        """The linearisation of a sim.model.network.TwoLayerNet at its current weights (its init)."""
        mc = net.model
        return cls(net.W.astype(np.float64), net.bias(), mc.activation, mc.q, mc.rho, parity, dtype)

    @property
    def Theta(self) -> np.ndarray:
        return self.theta[:self.m * self.d].reshape(self.m, self.d)

    @property
    def c(self) -> float:
        return float(self.theta[-1]) if self.intercept else 0.0

    def g(self, U):
        b = self.b.astype(U.dtype)
        return self._act(U - b) - self._act(-U - b)

    def dg(self, U):
        b = self.b.astype(U.dtype)
        return (self._dact(U - b) + self._dact(-U - b)).astype(U.dtype)

    def ddg(self, U):
        b = self.b.astype(U.dtype)
        return (self._ddact(U - b) - self._ddact(-U - b)).astype(U.dtype)

    def f0(self, X):
        return self.g(np.asarray(X, np.float64) @ self.W0.T).sum(axis=1)

    def _pre(self, X):
        """(X in the compute dtype, U = X W0^T, P = X theta^T)."""
        Xc = np.asarray(X, self.dtype)
        return Xc, Xc @ self._W0c.T, Xc @ self.Theta.astype(self.dtype).T

    def _out(self, U, G1, P):
        sm = self.dtype.type(np.sqrt(self.m))
        return (self.g(U).sum(axis=1) + (G1 * P).sum(axis=1) / sm).astype(np.float64) + self.c

    def forward(self, X):
        X = np.asarray(X, np.float64)
        out = [np.zeros(0)]
        for i in range(0, len(X), CHUNK):
            _, U, P = self._pre(X[i:i + CHUNK])
            out.append(self._out(U, self.dg(U), P))
        return np.concatenate(out)

    def output_gradient(self, X):
        _, U, P = self._pre(X)
        G1 = self.dg(U)
        f = self._out(U, G1, P)
        Tc = self.Theta.astype(self.dtype)
        sm = self.dtype.type(np.sqrt(self.m))
        J = G1 @ (self._W0c + Tc / sm)
        if self.activation != "relu":
            J += (self.ddg(U) * P) @ self._W0c / sm
        return J.astype(np.float64), f

    def loss_grad(self, X, y):
        Xc, U, P = self._pre(X)
        G1 = self.dg(U)
        f = self._out(U, G1, P)
        loss, dl = logistic(y * f)
        g = dl * y / len(y)
        grad = ((G1 * g.astype(self.dtype)[:, None]).T @ Xc).astype(np.float64).ravel() / np.sqrt(self.m)
        if self.intercept:
            grad = np.append(grad, g.sum())
        return float(loss.mean()), grad, f

    def smoothed(self, temperature: float) -> "SmoothedNTK":
        """A view of this model whose output_gradient follows a smoothed gate (for attacks)."""
        return SmoothedNTK(self, temperature)

    def features(self, X):
        """Explicit phi(x) (n x m d); only for small checks."""
        X = np.asarray(X, np.float64)
        G1 = self.dg(X @ self.W0.T)
        return (G1[:, :, None] * X[:, None, :]).reshape(len(X), -1) / np.sqrt(self.m)

    def kernel(self, X1, X2):
        """The normalised empirical NTK <phi(x), phi(x')> = <x, x'> mean_i g'(u_i) g'(u'_i)."""
        X1, X2 = np.asarray(X1, np.float64), np.asarray(X2, np.float64)
        return (X1 @ X2.T) * (self.dg(X1 @ self.W0.T) @ self.dg(X2 @ self.W0.T).T) / self.m


class SmoothedNTK:
    """The same f_lin, attacked through a smooth relaxation of its gates (BPDA-style).

    f_lin jumps where a neuron crosses its threshold and its gradient (exact almost
    everywhere) cannot see the jumps; adversarial training can learn to hide behind them
    (gradient masking: measured at d = 256, exact-gradient PGD left ~50 % of points robust
    where this relaxation left ~20 %). Here forward(X) is the true f_lin, but
    output_gradient returns the gradient of f0 + (1/sqrt m) sum_i sigma((|u_i| - b_i)/T_i)
    <theta_i, x> with T_i = temperature |w0_i| (ReLU), together with the true f, so the
    attacks of sim.attacks move along the relaxed gradient and judge success on f_lin.
    theta is shared with the base model (training through this view trains the base).
    """

    def __init__(self, base: NTKModel, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} is invalid: allowed values in (0, inf)")
        self.base = base
        self.temperature = float(temperature)
        self.T = (temperature * np.linalg.norm(base.W0, axis=1)).astype(base.dtype)

    @property
    def theta(self):
        return self.base.theta

    def forward(self, X):
        return self.base.forward(X)

    def loss_grad(self, X, y):
        return self.base.loss_grad(X, y)

    def output_gradient(self, X):
        bm = self.base
        if bm.activation != "relu":
            return bm.output_gradient(X)
        _, U, P = bm._pre(X)
        f = bm._out(U, bm.dg(U), P)
        b = bm.b.astype(U.dtype)
        S = expit((np.abs(U) - b) / self.T).astype(U.dtype)
        dS = (S * (1 - S) / self.T * np.sign(U)).astype(U.dtype)
        sm = bm.dtype.type(np.sqrt(bm.m))
        J = bm.dg(U) @ bm._W0c + S @ (bm.Theta.astype(bm.dtype) / sm) + (dS * P / sm) @ bm._W0c
        return J.astype(np.float64), f


def activation_probability(X1, X2, *, d: int, beta: float | None = None, b: float | None = None,
                           sigma0: float | None = None, nodes: int = 128) -> np.ndarray:
    """P(|<w, x>| > thr(w) and |<w, x'>| > thr(w)) for all pairs (x in X1, x' in X2).

    Relative bias: thr = beta |w| (give beta; needs d >= 3). Fixed bias: thr = b with
    w ~ N(0, sigma0^2 I_d) (give b and sigma0). Computed as
    (1/pi) int_0^pi S(r*(theta)^2) dtheta (see the module docstring), Gauss-Legendre with
    `nodes` points on each of the (at most 3) pieces between the switch points.
    """
    check_int("nodes", nodes, 2)
    X1, X2 = np.atleast_2d(np.asarray(X1, np.float64)), np.atleast_2d(np.asarray(X2, np.float64))
    if beta is not None:
        if b is not None:
            raise ValueError("give either beta (relative bias) or b and sigma0 (fixed bias), not both")
        if not beta >= 0:
            raise ValueError(f"beta={beta!r} is invalid: allowed values in [0, inf)")
        check_int("d", d, 3)
        a = (d - 2) / 2.0
        thr = float(beta)

        def survival(t):  # P(rho^2 > t), rho^2 ~ Beta(1, a)
            return np.clip(1.0 - t, 0.0, 1.0) ** a
    else:
        if b is None or sigma0 is None or not (b >= 0 and sigma0 > 0):
            raise ValueError(f"b={b!r}, sigma0={sigma0!r}: allowed b >= 0 and sigma0 > 0 (or give beta)")
        thr = float(b)

        def survival(t):  # P(rho^2 > t), rho^2 / (2 sigma0^2) ~ Exp(1)
            return np.exp(-t / (2 * sigma0 ** 2))

    n1, n2 = np.linalg.norm(X1, axis=1)[:, None], np.linalg.norm(X2, axis=1)[None, :]
    denom = n1 * n2
    cos = np.clip(np.where(denom > 0, (X1 @ X2.T) / np.where(denom > 0, denom, 1.0), 1.0), -1.0, 1.0)
    phi = np.arccos(cos)
    sin = np.sin(phi)
    # switch points of the max: n1 |cos t| = n2 |cos(t - phi)|, taken mod pi
    s1 = np.mod(np.arctan2(n1 - n2 * cos, n2 * sin), np.pi)
    s2 = np.mod(np.arctan2(n1 + n2 * cos, -n2 * sin), np.pi)
    edges = np.sort(np.stack([np.zeros_like(phi), np.minimum(s1, s2), np.maximum(s1, s2),
                              np.full_like(phi, np.pi)], axis=-1), axis=-1)
    u, wq = np.polynomial.legendre.leggauss(nodes)
    out = np.zeros_like(phi)
    if thr == 0.0:
        return np.where(denom > 0, 1.0, 0.0)
    for j in range(3):
        lo, hi = edges[..., j], edges[..., j + 1]
        half = (hi - lo) / 2
        for uk, wk in zip(u, wq):
            t = lo + half * (1 + uk)
            c1 = (n1 * np.cos(t)) ** 2
            c2 = (n2 * np.cos(t - phi)) ** 2
            with np.errstate(divide="ignore"):
                tstar = thr ** 2 / np.minimum(c1, c2)
            out += wk * half * survival(tstar)
    return np.where(denom > 0, out / np.pi, 0.0)


def ntk_infinite(X1, X2, net0=None, *, d: int | None = None, beta: float | None = None, b: float | None = None,
                 sigma0: float | None = None, nodes: int = 128) -> np.ndarray:
    """The infinite-width normalised NTK <x, x'> P(both neurons active) of the ReLU network.

    Either pass net0 (a TwoLayerNet at init, ReLU; relative/schedule bias -> beta, fixed/
    trained -> b = its common initial bias with sigma0 = the config's init scale, which
    must then be given as sigma0), or beta / (b, sigma0) directly.
    """
    X1, X2 = np.atleast_2d(np.asarray(X1, np.float64)), np.atleast_2d(np.asarray(X2, np.float64))
    d = X1.shape[1] if d is None else d
    if net0 is not None:
        if net0.model.activation != "relu":
            raise ValueError("ntk_infinite: only activation='relu' has the closed form")
        if net0.model.bias in ("relative", "schedule"):
            beta = float(net0.beta)
        else:
            b = float(np.mean(net0.b))
    P = activation_probability(X1, X2, d=d, beta=beta, b=b, sigma0=sigma0, nodes=nodes)
    return (X1 @ X2.T) * P
