"""The symmetric two-layer network of SPEC section 2, on top of the Numba kernels.

f(x) = sum_i act(<w_i, x> - b_i) - act(-<w_i, x> - b_i): with act = ReLU each neuron
is the soft-threshold (shrinkage) of its projection; f is odd. Output weights are
fixed at +1; only W (and b in the 'trained' bias mode) is learned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from . import kernels, tuning
from .linalg import gram, matmul
from .config import ModelConfig, RunConfig
from .data import STREAM_INIT, stream

ACTIVATIONS = {"relu": kernels.RELU, "smooth_relu": kernels.SMOOTH_RELU}

# The thresholds and block counts (SPARSE_MAX_DENSITY, FGM_BLOCKS, FGM_GRAM_MAX_DENSITY, the
# sparse tiles) are in sim.model.tuning with their measurements; read at call time.


def _sparse(nnz: int, G: np.ndarray, d: int) -> bool:
    return nnz <= (tuning.SPARSE_MAX_DENSITY if d >= 512 else tuning.SPARSE_MAX_DENSITY / 2) * G.size


def product_tn(G: np.ndarray, X: np.ndarray, nnz: int) -> np.ndarray:
    """G^T X (m x d), by the sparse kernel when G has at most SPARSE_MAX_DENSITY nonzeros.

    Either way each entry is reduced in a fixed order, so the bits do not depend on the
    thread count; the two ways differ by rounding only.
    """
    if not _sparse(nnz, G, X.shape[1]):
        return matmul(G.T, X)
    out = np.empty((G.shape[1], X.shape[1]), dtype=np.result_type(G, X))
    # rows of out per task: its share of L2, at least two tasks per thread (the result does
    # not depend on the tiling: each entry is summed over the samples in order)
    m = G.shape[1]
    per_thread = -(-m // (2 * numba.get_num_threads()))
    tile = int(max(8, min(512, tuning.SPARSE_TILE_BYTES // max(1, X.shape[1] * X.itemsize), per_thread)))
    return kernels.sparse_tn(G, X, out, tile, tuning.SPARSE_ROW_BLOCK)


def product_nn(G: np.ndarray, B: np.ndarray, nnz: int) -> np.ndarray:
    """G B (n x d), by the sparse kernel when G has at most SPARSE_MAX_DENSITY nonzeros."""
    if not _sparse(nnz, G, B.shape[1]):
        return matmul(G, B)
    out = np.empty((G.shape[0], B.shape[1]), dtype=np.result_type(G, B))
    tile = int(min(512, max(16, tuning.SPARSE_TILE_BYTES // max(1, B.shape[1] * B.itemsize))))
    return kernels.sparse_nn(G, B, out, tile, tuning.SPARSE_NN_ROWS)


def _gram_pays(U, b, act_args, sample_rows: int = 512) -> bool:
    """Whether the FGM route through W W^T pays: g' = dg/du sparse enough (share of
    nonzeros <= FGM_GRAM_MAX_DENSITY, estimated on the first rows of U), and W W^T (m x m)
    no larger than U (n x m), so that memory stays within two n x m buffers."""
    n, m = U.shape
    if m > n:
        return False
    Gp = U[:sample_rows].copy()
    _, nnz = kernels.output_grad_stage_nnz(Gp, b, *act_args)
    return nnz <= tuning.FGM_GRAM_MAX_DENSITY * Gp.size


def fgm_shift_rows(U, A, B, b, act_args, y, tau):
    """The l2 FGM on the pre-activations, block by block of rows: (s, g' B).

    With A = W W^T: U = X W^T (n x m) becomes, in place, (X + delta) W^T for the FGM
    points, delta_r = s_r g'_r W with g' = dg/du at X and s_r = -y_r tau / |g'_r W|
    (kernels.fgm_shift). With A = None, U is left as it is and s_r comes from |g'_r B|
    (B must then be W). Returns s and g' B (B: W gives the input gradients J, C = W M
    their codes). Only 1/FGM_BLOCKS of g' is held at a time.
    """
    n = len(U)
    s = np.empty(n)
    out = np.empty((n, B.shape[1]), dtype=np.result_type(U, B))
    block = max(tuning.CHUNK, -(-n // tuning.FGM_BLOCKS))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        Gp = U[lo:hi].copy()
        _, nnz = kernels.output_grad_stage_nnz(Gp, b, *act_args)  # g' at X
        if A is not None:
            kernels.fgm_shift(U[lo:hi], Gp, A, y[lo:hi], float(tau), s[lo:hi])
        out[lo:hi] = product_nn(Gp, B, nnz)
    if A is None:
        norm = np.linalg.norm(out, axis=1).astype(np.float64)
        s[:] = np.where(norm > 0, -y * tau / np.where(norm > 0, norm, 1.0), 0.0)
    return s, out


def pgd_l2_margins(U0, A, b, act_args, dtype, y, tau, steps, restarts, step_size, rng, random_start, d,
                   start_projections):
    """attacks.pgd in l2 run on the pre-activations: the best margin y f per sample.

    U0: clean pre-activations X W^T (n x m); A = W W^T; start_projections(delta) -> W delta
    (n x m) for the random starts delta (n x d) drawn as attacks.pgd draws them. The
    perturbation is kept as its projections P = W delta and its squared norm (see
    kernels.pgd_update), so a step costs the nonlinear stage and a sparse product with A,
    not two products with W. Same schedule, starts and restarts as attacks.pgd.
    """
    from sim.attacks import pgd_step_sizes, random_in_ball

    if steps < 1 or restarts < 1:
        raise ValueError(f"steps={steps}, restarts={restarts} are invalid: allowed integers >= 1")
    if not (np.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau={tau!r} is invalid: allowed values in [0, inf)")
    rng = rng if rng is not None else np.random.default_rng(0)
    y = np.asarray(y, np.float64)
    n = len(U0)
    alphas = pgd_step_sizes(tau, steps, step_size)
    best = y * kernels.outputs_from_preacts(U0, b, *act_args)
    for r in range(restarts):
        if random_start and (r > 0 or restarts == 1):
            delta = random_in_ball(rng, (n, d), "l2", tau)
            nsq = np.einsum("ij,ij->i", delta, delta)
            P = np.ascontiguousarray(start_projections(delta), dtype=np.float64)
            del delta
        else:
            P = np.zeros(U0.shape)
            nsq = np.zeros(n)
        for alpha in alphas:
            Gp = (U0 + P).astype(dtype)
            f, _ = kernels.output_grad_stage_nnz(Gp, b, *act_args)
            best = np.minimum(best, y * f)
            kernels.pgd_update(Gp, A, P, nsq, y, float(alpha), float(tau))
        f = kernels.outputs_from_preacts((U0 + P).astype(dtype), b, *act_args)
        best = np.minimum(best, y * f)
    return best


@dataclass
class TwoLayerNet:
    """Weights W (m x d) and the bias state of the symmetric network.

    b holds the absolute biases for the 'fixed' and 'trained' modes; beta is the
    current relative bias factor for 'relative' and 'schedule' (b_i = beta |w_i|,
    recomputed from W, never differentiated).
    """

    W: np.ndarray
    model: ModelConfig
    b: np.ndarray = field(default=None)
    beta: float = 0.0

    def __post_init__(self):
        self.W = np.ascontiguousarray(self.W)
        if self.b is None:
            self.b = np.full(self.W.shape[0], float(self.model.bias_value))
        self.b = np.asarray(self.b, dtype=np.float64)
        if self.model.bias in ("relative", "schedule") and self.beta == 0.0:
            self.beta = float(self.model.beta)

    @classmethod
    def init(cls, cfg: RunConfig, dtype=np.float64) -> "TwoLayerNet":
        """Small Gaussian init w_i ~ N(0, init_scale^2 I), from the config's init stream."""
        rng = stream(cfg.data, STREAM_INIT)
        W = rng.standard_normal((cfg.width(), cfg.data.d)) * cfg.init_scale()
        return cls(W.astype(dtype), cfg.model)

    def copy(self) -> "TwoLayerNet":
        return TwoLayerNet(self.W.copy(), self.model, self.b.copy(), self.beta)

    def astype(self, dtype) -> "TwoLayerNet":
        return TwoLayerNet(self.W.astype(dtype), self.model, self.b.copy(), self.beta)

    @property
    def width(self) -> int:
        return self.W.shape[0]

    def bias(self) -> np.ndarray:
        """The bias vector b (float64) in force now."""
        if self.model.bias in ("relative", "schedule"):
            return self.beta * kernels.row_norms(self.W)
        return self.b

    def _act_args(self):
        return ACTIVATIONS[self.model.activation], float(self.model.q), float(self.model.rho)

    def preactivations(self, X: np.ndarray) -> np.ndarray:
        """U = X W^T (n x m), in the dtype of W."""
        return matmul(np.asarray(X, dtype=self.W.dtype), self.W.T)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Network outputs f(x) (float64) for the rows of X."""
        U = self.preactivations(X)
        return kernels.outputs_from_preacts(U, self.bias(), *self._act_args())

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels sgn f(x) in {-1, +1} (f == 0 counts as a mistake for both labels: 0)."""
        return np.sign(self.forward(X))

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(y * self.forward(X) > 0))

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray, want_bias: bool | None = None):
        """Mean logistic loss and its exact gradient.

        Returns (loss, grad_W, grad_b, f): grad_W in the dtype of W, grad_b (float64,
        zeros unless the bias is trained or want_bias is set) and f the outputs.
        """
        if want_bias is None:
            want_bias = self.model.bias == "trained"
        X = np.asarray(X, dtype=self.W.dtype)
        U = self.preactivations(X)
        f, loss, _, gb, nnz = kernels.backward_stage_nnz(U, np.asarray(y, np.float64), self.bias(),
                                                         *self._act_args(), 1.0 / len(X), want_bias)
        grad_W = product_tn(U, X, nnz)  # U now holds G = (1/n) dl/df * dg/du
        return float(np.sum(loss) / len(X)), grad_W, gb, f

    def input_gradient(self, X: np.ndarray, y: np.ndarray):
        """Per-sample gradient of l_n = log(1 + exp(-y_n f(x_n))) in x_n.

        Returns (grad_x (n x d, dtype of W), loss_n, f). Used by the attacks.
        """
        X = np.asarray(X, dtype=self.W.dtype)
        U = self.preactivations(X)
        f, loss, _, _, nnz = kernels.backward_stage_nnz(U, np.asarray(y, np.float64), self.bias(),
                                                        *self._act_args(), 1.0, False)
        return product_nn(U, self.W, nnz), loss, f

    def fgm_loss_and_grad(self, X: np.ndarray, y: np.ndarray, tau: float, want_bias: bool | None = None):
        """The loss and gradient at the l2 FGM points of radius tau, in one pass.

        Equals, up to rounding, `self.loss_and_grad(attacks.fgm(self, X, y, tau, "l2").x_adv, y)`
        (the step of FGM adversarial training): returns (loss, grad_W, grad_b, f) at the
        perturbed points. The perturbation delta_n = -y_n tau J_n/|J_n| is a combination of
        the rows of W (J_n = g'_n W), so the perturbed pre-activations are U + s_n g'_n W W^T
        (kernels.fgm_shift): one product with X instead of three. Noise is fine; l2 only.
        Where g' is dense (share of active neurons above FGM_GRAM_MAX_DENSITY, e.g. d = 256
        at init), g' W W^T costs more than a product with the points, and U is recomputed
        from them instead (two products, still no separate attack pass).
        """
        if want_bias is None:
            want_bias = self.model.bias == "trained"
        X = np.asarray(X, dtype=self.W.dtype)
        y = np.asarray(y, np.float64)
        b = self.bias()
        args = self._act_args()
        n = len(X)
        U = self.preactivations(X)
        fused = _gram_pays(U, b, args)  # then U becomes (X + delta) W^T on the way
        s, Xa = fgm_shift_rows(U, gram(self.W) if fused else None, self.W, b, args, y, tau)
        Xa *= s.astype(Xa.dtype)[:, None]
        Xa += X  # the FGM points X + s J
        if not fused:  # g' too dense for the W W^T route: a second product with the points
            matmul(Xa, self.W.T, out=U)
        f, loss, _, gb, nnz = kernels.backward_stage_nnz(U, y, b, *args, 1.0 / n, want_bias)
        return float(np.sum(loss) / n), product_tn(U, Xa, nnz), gb, f

    def pgd_margins(self, X: np.ndarray, y: np.ndarray, tau: float, steps: int = 50, restarts: int = 5,
                    step_size: float | None = None, rng: np.random.Generator | None = None,
                    random_start: bool = True) -> np.ndarray:
        """attacks.pgd(self, X, y, tau, 'l2', ...) through W W^T: the best margins y f(x + delta).

        Equal up to rounding to `attacks.pgd(...).margin` with the same arguments and rng
        (the perturbed points themselves are not formed). One product X W^T, one W W^T,
        and per random start one product delta W^T; each step is the nonlinear stage and a
        sparse product with W W^T.
        """
        X = np.asarray(X, dtype=self.W.dtype)
        W = self.W

        def start_projections(delta):
            return matmul(delta, W.T.astype(np.float64))

        return pgd_l2_margins(self.preactivations(X), gram(W), self.bias(), self._act_args(), W.dtype, y, tau,
                              steps, restarts, step_size, rng, random_start, X.shape[1], start_projections)

    def output_gradient(self, X: np.ndarray):
        """(df/dx (n x d, dtype of W), f): the gradient of each output in its input."""
        X = np.asarray(X, dtype=self.W.dtype)
        U = self.preactivations(X)
        f, nnz = kernels.output_grad_stage_nnz(U, self.bias(), *self._act_args())
        return product_nn(U, self.W, nnz), f


def ideal_network(M: np.ndarray, wstar: np.ndarray, beta: float, dtype=np.float64) -> TwoLayerNet:
    """The ideal purified network built from the dictionary and w*: one neuron per atom,
    w_j = w*_j M_j / |M_j| (the atom, oriented so that it votes for the label), relative bias
    beta (b_j = beta: each neuron is the soft threshold of its atom's code), output weights
    +1, so that f(M z) = (1 - beta) <w*, z> for pm1 codes without noise.

    The reference of what a network of this form can reach. With an orthogonal M and no
    noise, a perturbation of l2 norm tau moves y f by at most sqrt(a) tau through the a active
    atoms (each neuron is 1-Lipschitz in its atom's coordinate), and an inactive atom only
    counts beyond beta, which never pays while tau < 2 beta sqrt(a). So a point of margin
    |<w*, z>| = g with a active atoms is held at least up to (1 - beta) g / sqrt(a), and a
    margin-1 point exactly up to it (the perturbation -y tau / sqrt(a) sum_j w*_j M_j over its
    atoms breaks it beyond) when 1 - beta < 2 beta a; ideal_radius gives the radius."""
    A = np.asarray(M, np.float64)
    W = (A / np.linalg.norm(A, axis=0)).T * np.asarray(wstar, np.float64)[:, None]
    model = ModelConfig(m=W.shape[0], bias="relative", beta=float(beta))
    return TwoLayerNet(np.ascontiguousarray(W, dtype=dtype), model, beta=float(beta))


def ideal_radius(beta: float, active: int, margin: float = 1.0) -> float:
    """The l2 radius up to which ideal_network holds a noiseless point with `active` atoms
    and margin |<w*, z>| = margin (orthogonal M): (1 - beta) margin / sqrt(active)."""
    return float((1.0 - beta) * margin / np.sqrt(active))
