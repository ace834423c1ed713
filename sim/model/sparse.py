"""The sparse noise-free l2 fast path: the network trained and attacked on the sparse codes z.

When the dictionary M is orthogonal and there is no noise, x = M z exactly, so
<w_i, x> = <M^T w_i, z> = <c_i, z>: the network can be run in the dictionary basis,
with C = W M (m x D) in place of W and the k-sparse codes z in place of the dense x.
Everything l2 is rotation-invariant, so every quantity of the dense path has an exact
counterpart here, at a cost in k (active atoms per sample) instead of d:

- pre-activations U = Z C^T: k rows of C^T per sample, O(N k m) instead of O(N d m);
- gradient: grad_W = G^T X = G^T Z M^T, so grad_C = grad_W M = G^T Z (sparse Z), and
  gradient descent on C is gradient descent on W: C_t = W_t M at every step;
- the bias b_i = beta |w_i| = beta |c_i| (M orthogonal preserves norms);
- FGM (l2): the perturbation delta_n = -y_n tau J_n / |J_n| with J_n = sum_i g'(u_ni) w_i is
  a combination of the rows of W, so its effect on the projections is
  W delta_n = -y_n tau (W W^T g'_n) / |W^T g'_n|, with W W^T = C C^T (m x m) and
  |J_n|^2 = g'_n . (C C^T g'_n): the perturbed pre-activations need neither x nor delta.
  The gradient at the perturbed points is G_adv^T (Z + Delta) in the dictionary basis,
  with Delta_n = M^T delta_n = s_n g'_n C (s_n = -y_n tau / |J_n|);
- PGD (l2): each step adds a multiple of J_n, so W delta_n (m-vector) and |delta_n|^2 are
  updated from C C^T without forming delta; a random start adds W r_n for the random
  point r_n (the one dense product of a restart).

The results equal those of the dense path (sim.model.network, sim.attacks) up to floating-point
rounding (the sums run over k atoms instead of d coordinates), which tests/test_sparse.py
checks: to 1e-10 in float64; in float32 a pre-activation within rounding of its threshold
b_i can be active on one path and silent on the other, so float32 agrees loosely. The correspondence needs an orthogonal M and noise 0; noise and l_inf (not
rotation-invariant) stay on the dense path. W = C M^T is formed only when asked (to_net).
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from . import kernels, tuning
from .linalg import gram, matmul
from .network import ACTIVATIONS, TwoLayerNet, fgm_shift_rows, pgd_l2_margins, product_nn, product_tn
from .config import ModelConfig

__all__ = ["Codes", "SparseNet", "SparseAttack", "fgm_loss_and_grad", "pgd", "fgm", "gradient_descent",
           "check_applicable"]


def check_applicable(problem) -> None:
    """Raise ValueError unless the problem is the noise-free orthogonal case of the fast path."""
    cfg = problem.cfg
    if cfg.noise != 0:
        raise ValueError(f"noise={cfg.noise!r}: the sparse path needs noise == 0 (use the dense path)")
    if cfg.dictionary not in ("orthogonal", "identity"):
        raise ValueError(f"dictionary={cfg.dictionary!r}: the sparse path needs an orthogonal dictionary")


# ---------------------------------------------------------------------------------------------
# Codes


@dataclass(frozen=True)
class Codes:
    """The codes z (n x D) of a data set as compressed rows: sample r has the atoms
    indices[indptr[r]:indptr[r+1]] (increasing) with values values[...] (float64)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    D: int
    _by_atom: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dense(cls, z: np.ndarray) -> "Codes":
        z = np.asarray(z, dtype=np.float64)
        rows, cols = np.nonzero(z)
        indptr = np.zeros(z.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=z.shape[0]), out=indptr[1:])
        return cls(indptr, cols.astype(np.int64), z[rows, cols].copy(), z.shape[1])

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    def rows(self, lo: int, hi: int) -> "Codes":
        """Samples lo..hi-1."""
        a, b = self.indptr[lo], self.indptr[hi]
        return Codes(self.indptr[lo:hi + 1] - a, self.indices[a:b], self.values[a:b], self.D)

    def to_dense(self) -> np.ndarray:
        z = np.zeros((len(self), self.D))
        rows = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        z[rows, self.indices] = self.values
        return z

    def by_atom(self):
        """The same codes by atom (compressed columns): (atom_ptr, rows, values), rows increasing."""
        if "csc" not in self._by_atom:
            rows = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))
            order = np.argsort(self.indices, kind="stable")  # stable: rows stay increasing per atom
            ptr = np.zeros(self.D + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.indices, minlength=self.D), out=ptr[1:])
            self._by_atom["csc"] = (ptr, rows[order], self.values[order])
        return self._by_atom["csc"]


# ---------------------------------------------------------------------------------------------
# Kernels (each output entry reduced by one thread in a fixed order: thread-count independent)


@njit(cache=True, parallel=True)
def _codes_preacts(CT, indptr, indices, values, out):
    """out[r, :] = sum_e values[e] * CT[indices[e], :] over the atoms of sample r, in order
    (values in the dtype of CT)."""
    for r in prange(len(indptr) - 1):
        _row_preacts(CT, indptr, indices, values, r, out[r])
    return out


@njit(cache=True, parallel=True)
def _codes_tn(G, atom_ptr, rows, values, out):
    """out = Z^T G (D x m): out[j, :] = sum over the samples r with atom j (increasing r) of
    z_rj * G[r, :]. Parallel over atoms."""
    D = len(atom_ptr) - 1
    m = G.shape[1]
    for j in prange(D):
        o = out[j]
        for i in range(m):
            o[i] = 0
        lo = atom_ptr[j]
        k = atom_ptr[j + 1] - lo
        if k == 0:
            continue
        rr = rows[lo:lo + k]
        vv = np.empty(k, G.dtype)
        for e in range(k):
            vv[e] = values[lo + e]
        kernels._axpy_list(o, rr, vv, k, G)
    return out


@njit(cache=True, inline="always")
def _row_preacts(CT, indptr, indices, values, r, o):
    """o[:] = sum_e values[e] * CT[indices[e], :] over the atoms of sample r, in order:
    ((0 + v0 c0) + v1 c1) + ..."""
    for i in range(o.shape[0]):
        o[i] = 0
    lo, hi = indptr[r], indptr[r + 1]
    kernels._axpy_list(o, indices[lo:hi], values[lo:hi], hi - lo, CT)


@njit(cache=True, parallel=True)
def _step_rows(CT, indptr, indices, values, y, b, act, q, rho, scale, want_bias, f, loss, dldf, part, start, stop,
               gi, gv):
    """The fused forward and backward pass on the codes, one pass over the samples.

    Per sample r: its pre-activations in a row that stays in cache, the backward stage of
    sim.model.kernels on it (f, loss, dl/df, bias sums per chunk), and the nonzero entries of its
    gradient row G[r], stored at gi/gv[start[r]:stop[r]] inside the region of its chunk
    (CHUNK * m entries, touched only as far as used). No n x m buffer is written.
    """
    n = len(indptr) - 1
    m = CT.shape[1]
    n_chunks = (n + tuning.CHUNK - 1) // tuning.CHUNK
    for c in prange(n_chunks):
        u = np.empty((1, m), CT.dtype)
        e = c * tuning.CHUNK * m
        for r in range(c * tuning.CHUNK, min(n, (c + 1) * tuning.CHUNK)):
            _row_preacts(CT, indptr, indices, values, r, u[0])
            kernels._backward_rows(u, y[r:r + 1], b, act, q, rho, scale, want_bias, part, c, 0, 1,
                                   f[r:r + 1], loss[r:r + 1], dldf[r:r + 1])
            start[r] = e
            row = u[0]
            for i in range(m):
                v = row[i]
                if v != 0:
                    gi[e] = i
                    gv[e] = v
                    e += 1
            stop[r] = e


@njit(cache=True, parallel=True)
def _codes_tn_csr(atom_ptr, rows, values, start, stop, gi, gv, out):
    """out = Z^T G (D x m) for G's nonzeros (row r at gi/gv[start[r]:stop[r]]): out[j, i]
    sums z_rj G[r, i] over the samples r with atom j in increasing order. Parallel over atoms."""
    D = len(atom_ptr) - 1
    m = out.shape[1]
    for j in prange(D):
        o = out[j]
        for i in range(m):
            o[i] = 0
        for e in range(atom_ptr[j], atom_ptr[j + 1]):
            r = rows[e]
            z = values[e]
            for t in range(start[r], stop[r]):
                o[gi[t]] += z * gv[t]
    return out


@njit(cache=True, parallel=True)
def _transpose(A, out):
    """out = A.T, in 64 x 64 tiles (a plain strided copy is several times slower)."""
    n, m = A.shape
    nb = (n + 63) // 64
    for bi in prange(nb):
        i0 = bi * 64
        i1 = min(n, i0 + 64)
        for j0 in range(0, m, 64):
            j1 = min(m, j0 + 64)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    out[j, i] = A[i, j]
    return out


@njit(cache=True, parallel=True)
def _col_norms(CT):
    """Euclidean norms of the columns of CT (float64): sums over fixed blocks of 64 rows,
    then over the blocks in order (the partition depends on the shape only)."""
    D, m = CT.shape
    nb = (D + 63) // 64
    part = np.zeros((nb, m), np.float64)
    for bi in prange(nb):
        for j in range(bi * 64, min(D, bi * 64 + 64)):
            for i in range(m):
                v = np.float64(CT[j, i])
                part[bi, i] += v * v
    out = np.zeros(m, np.float64)
    for bi in range(nb):
        for i in range(m):
            out[i] += part[bi, i]
    return np.sqrt(out)


def _lazy_empty(n: int, dtype) -> np.ndarray:
    """An uninitialised array in fresh anonymous memory with ordinary pages: only the pages
    written to become resident (NumPy asks large arrays for huge pages, 2 MB each)."""
    dtype = np.dtype(dtype)
    if n * dtype.itemsize < (1 << 20):
        return np.empty(n, dtype)
    return np.frombuffer(mmap.mmap(-1, n * dtype.itemsize), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The network in the dictionary basis


@dataclass
class SparseNet:
    """The symmetric network with its weights in the dictionary basis: CT = (W M)^T (D x m).

    Same model, bias state and dtype conventions as TwoLayerNet; `to_net(M)` gives back the
    dense network W = C M^T, `from_net(net, M)` builds C = W M.
    """

    CT: np.ndarray
    model: ModelConfig
    b: np.ndarray = field(default=None)
    beta: float = 0.0

    def __post_init__(self):
        self.CT = np.ascontiguousarray(self.CT)
        if self.b is None:
            self.b = np.full(self.CT.shape[1], float(self.model.bias_value))
        self.b = np.asarray(self.b, dtype=np.float64)
        if self.model.bias in ("relative", "schedule") and self.beta == 0.0:
            self.beta = float(self.model.beta)

    @classmethod
    def from_net(cls, net: TwoLayerNet, M: np.ndarray) -> "SparseNet":
        CT = matmul(np.asarray(M, np.float64).T, net.W.astype(np.float64).T)  # deterministic, unlike @
        return cls(CT.astype(net.W.dtype), net.model, net.b.copy(), net.beta)

    def to_net(self, M: np.ndarray) -> TwoLayerNet:
        W = matmul(np.asarray(M, np.float64), self.CT.astype(np.float64)).T
        return TwoLayerNet(W.astype(self.CT.dtype), self.model, self.b.copy(), self.beta)

    def copy(self) -> "SparseNet":
        return SparseNet(self.CT.copy(), self.model, self.b.copy(), self.beta)

    @property
    def width(self) -> int:
        return self.CT.shape[1]

    @property
    def dtype(self):
        return self.CT.dtype

    def C(self) -> np.ndarray:
        """C = W M (m x D), contiguous."""
        return _transpose(self.CT, np.empty(self.CT.shape[::-1], dtype=self.CT.dtype))

    def bias(self) -> np.ndarray:
        if self.model.bias in ("relative", "schedule"):
            return self.beta * _col_norms(self.CT)
        return self.b

    def _act_args(self):
        return ACTIVATIONS[self.model.activation], float(self.model.q), float(self.model.rho)

    def preactivations(self, codes: Codes) -> np.ndarray:
        """U = Z C^T (n x m) = X W^T, in the dtype of the weights."""
        out = np.empty((len(codes), self.width), dtype=self.CT.dtype)
        return _codes_preacts(self.CT, codes.indptr, codes.indices, codes.values.astype(self.CT.dtype), out)

    def forward(self, codes: Codes) -> np.ndarray:
        return kernels.outputs_from_preacts(self.preactivations(codes), self.bias(), *self._act_args())

    def accuracy(self, codes: Codes, y: np.ndarray) -> float:
        return float(np.mean(y * self.forward(codes) > 0))

    def grad_from_G(self, codes: Codes, G: np.ndarray) -> np.ndarray:
        """Z^T G (D x m): the gradient in CT of sum_n G[n] . u_n."""
        ptr, rows, vals = codes.by_atom()
        out = np.empty((codes.D, G.shape[1]), dtype=G.dtype)
        return _codes_tn(G, ptr, rows, vals, out)

    def loss_and_grad(self, codes: Codes, y: np.ndarray, want_bias: bool | None = None):
        """(loss, grad_CT (D x m), grad_b, f): TwoLayerNet.loss_and_grad with grad_CT = (grad_W M)^T.

        One pass over the samples, each sample's pre-activations computed in a row that
        stays in cache, its backward stage run there and its nonzero gradient entries kept;
        then Z^T G over the nonzeros. No n x m buffer.
        """
        if want_bias is None:
            want_bias = self.model.bias == "trained"
        n = len(codes)
        m = self.width
        y = np.asarray(y, np.float64)
        b = self.bias()
        args = self._act_args()
        vals = codes.values.astype(self.CT.dtype)
        f, loss, dldf = np.empty(n), np.empty(n), np.empty(n)
        start, stop = np.empty(n, np.int64), np.empty(n, np.int64)
        n_chunks = (n + tuning.CHUNK - 1) // tuning.CHUNK
        part = np.zeros((n_chunks if want_bias else 1, m))
        # room for every entry of G, in virtual memory: only the pages the nonzeros reach are touched
        gi = _lazy_empty(n_chunks * tuning.CHUNK * m, np.int32)
        gv = _lazy_empty(n_chunks * tuning.CHUNK * m, self.CT.dtype)
        _step_rows(self.CT, codes.indptr, codes.indices, vals, y, b, *args, 1.0 / n, want_bias, f, loss, dldf, part,
                   start, stop, gi, gv)
        ptr, rows, avals = codes.by_atom()
        grad = _codes_tn_csr(ptr, rows, avals.astype(self.CT.dtype), start, stop, gi, gv,
                             np.empty((codes.D, m), self.CT.dtype))
        gb = np.zeros(m)
        if want_bias:
            for c in range(n_chunks):  # in chunk order, as kernels.backward_stage_nnz
                gb += part[c]
            gb *= 1.0 / n
        return float(np.sum(loss) / n), grad, gb, f

    def gram(self) -> np.ndarray:
        """C C^T = W W^T (m x m), exactly symmetric, thread-count independent."""
        return gram(self.CT.T)


# ---------------------------------------------------------------------------------------------
# FGM (l2) and adversarial training


# fgm_loss_and_grad works on 1/tuning.SPARSE_FGM_BLOCKS of the samples at a time (see tuning)


def fgm_loss_and_grad(net: SparseNet, codes: Codes, y: np.ndarray, tau: float, want_bias: bool | None = None,
                      A: np.ndarray | None = None):
    """The loss and gradient at the FGM (l2) points of radius tau, without forming x.

    Equals, up to rounding, the dense path's
    `net.loss_and_grad(attacks.fgm(net, X, y, tau, "l2").x_adv, y)` with grad_CT = (grad_W M)^T.
    Returns (loss, grad_CT, grad_b, f_adv). A = C C^T may be passed if already computed.
    The perturbations are dense in the dictionary basis (Delta = diag(s) g' C), so this
    runs on tuning.SPARSE_FGM_BLOCKS blocks of samples in turn, summing their gradients in block order:
    besides W W^T and C, only a block's pre-activations and perturbations are held.
    """
    if want_bias is None:
        want_bias = net.model.bias == "trained"
    y = np.asarray(y, np.float64)
    b = net.bias()
    args = net._act_args()
    n = len(codes)
    A = net.gram() if A is None else A
    C = net.C()
    grad = np.zeros(net.CT.shape, net.CT.dtype)
    gb = np.zeros(net.width)
    f = np.empty(n)
    loss = 0.0
    rows = max(tuning.CHUNK, -(-n // tuning.SPARSE_FGM_BLOCKS))
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        cb, yb = codes.rows(lo, hi), y[lo:hi]
        U = net.preactivations(cb)
        s, Delta = fgm_shift_rows(U, A, C, b, args, yb, tau)  # U = pre-activations at x + delta
        Delta *= s.astype(Delta.dtype)[:, None]  # Delta = diag(s) g' C: the perturbations in the dictionary basis
        f[lo:hi], loss_b, _, gb_b, nnz = kernels.backward_stage_nnz(U, yb, b, *args, 1.0 / n, want_bias)
        grad += net.grad_from_G(cb, U)  # Z^T G_adv
        grad += product_tn(U, Delta, nnz).T  # + Delta^T G_adv
        loss += float(np.sum(loss_b))
        if want_bias:
            gb += gb_b
        del U, Delta
    return loss / n, grad, gb, f


@dataclass
class SparseAttack:
    """An attack's outcome on the sparse path: margins y f(x + delta) per sample (no x_adv)."""

    name: str
    margin: np.ndarray

    @property
    def success(self) -> np.ndarray:
        return self.margin <= 0

    @property
    def robust_accuracy(self) -> float:
        return float(np.mean(~self.success))


def fgm(net: SparseNet, codes: Codes, y: np.ndarray, tau: float, A: np.ndarray | None = None) -> SparseAttack:
    """FGM (l2) of radius tau: the margins of attacks.fgm(net, X, y, tau, 'l2')."""
    y = np.asarray(y, np.float64)
    b = net.bias()
    args = net._act_args()
    U = net.preactivations(codes)
    Gp = U.copy()
    kernels.output_grad_stage_nnz(Gp, b, *args)
    A = net.gram() if A is None else A
    kernels.fgm_shift(U, Gp, A, y, float(tau), np.empty(len(codes)))
    return SparseAttack("fgm", y * kernels.outputs_from_preacts(U, b, *args))


def pgd(net: SparseNet, codes: Codes, y: np.ndarray, tau: float, steps: int = 50, restarts: int = 5,
        step_size: float | None = None, rng: np.random.Generator | None = None, random_start: bool = True,
        M: np.ndarray | None = None, A: np.ndarray | None = None) -> SparseAttack:
    """PGD (l2) with the schedule, starts and restarts of attacks.pgd; returns the best margins.

    The same random draws as attacks.pgd (same rng) give the same attack up to rounding;
    a random start needs M (the points r are drawn in R^d, as the dense path does, and
    W r = C (M^T r) is the one dense product of a restart).
    """
    CT64 = None

    def start_projections(delta):
        nonlocal CT64
        if M is None:
            raise ValueError("M: a random start needs the dictionary M")
        if CT64 is None:
            CT64 = net.CT.astype(np.float64)
        return matmul(matmul(delta, np.asarray(M, np.float64)), CT64)  # W delta = C (M^T delta)

    if random_start and M is None:
        raise ValueError("M: a random start needs the dictionary M")
    U0 = net.preactivations(codes)
    A = net.gram() if A is None else A
    d = M.shape[0] if M is not None else net.CT.shape[0]
    best_m = pgd_l2_margins(U0, A, net.bias(), net._act_args(), net.CT.dtype, y, tau, steps, restarts, step_size,
                            rng, random_start, d, start_projections)
    return SparseAttack(f"pgd{steps}x{restarts}", best_m)


# ---------------------------------------------------------------------------------------------
# Gradient descent on the codes


def gradient_descent(net: SparseNet, codes: Codes, y: np.ndarray, steps: int, lr: float, *,
                     fgm_tau: float | None = None, log: list | None = None) -> SparseNet:
    """Full-batch gradient descent on C (in place), as sim.train.loop.gradient_descent does on W.

    fgm_tau: train on the FGM (l2) points of that radius (FGM adversarial training).
    The bias modes (fixed, relative, trained, schedule) behave as in the dense loop.
    log: if a list, one dict per step (loss, train_acc, grad_norm, bias_mean) is appended.
    """
    from sim.train.loop import beta_at

    y = np.asarray(y, np.float64)
    dtype = net.CT.dtype
    for step in range(steps):
        if net.model.bias == "schedule":
            net.beta = beta_at(net.model, step)
        if fgm_tau is None:
            loss, g, gb, f = net.loss_and_grad(codes, y)
        else:
            loss, g, gb, f = fgm_loss_and_grad(net, codes, y, fgm_tau)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}: lower lr (now {lr})")
        if log is not None:
            log.append({"step": step, "loss": loss, "train_acc": float(np.mean(y * f > 0)),
                        "grad_norm": float(np.sqrt(np.sum(g.astype(np.float64) ** 2) + np.sum(gb ** 2))),
                        "bias_mean": float(np.mean(net.bias()))})
        net.CT -= dtype.type(lr) * g
        if net.model.bias == "trained":
            net.b -= lr * gb
        if not (np.isfinite(net.CT).all() and np.isfinite(net.b).all()):
            raise FloatingPointError(f"weights overflowed at step {step}: lower lr (now {lr})")
    if net.model.bias == "schedule":
        net.beta = beta_at(net.model, steps)
    return net
