"""Numba kernels of the symmetric two-layer network and its logistic loss.

Network: f(x) = sum_i g(u_i, b_i),  u = W x,  g(u, b) = act(u - b) - act(-u - b).
Loss: mean over samples of log(1 + exp(-y f(x))).

Derivatives of one neuron:
    dg/du = act'(u - b) + act'(-u - b),     dg/db = act'(-u - b) - act'(u - b).

Subgradient at the ReLU kink: act'(0) = 0 (the convention of torch.relu's backward),
so a neuron with |u| == b exactly contributes no gradient. The smoothed ReLU is C^1
and has no kink.

Activations: code 0 = ReLU; code 1 = smoothed ReLU of degree q and width rho:
    act(z) = 0 (z <= 0),  z^q / (q rho^(q-1)) (0 < z <= rho),  z - (1 - 1/q) rho (z > rho).

Layout of the work, so that results are bit-identical whatever the number of threads:
- the two matrix products (U = X W^T and grad_W = G^T X, or grad_x = G W) go through
  BLAS; each entry of a product is reduced by one thread in a fixed order;
- the nonlinear stage runs in parallel over samples (prange), each sample written by
  exactly one iteration, with no reduction across iterations;
- the only reduction over samples inside a kernel (the bias gradient) is kept per
  fixed chunk of rows, whose count does not depend on the thread count, and the chunk
  sums are added in order; the loss is summed by NumPy outside.

Sparsity: with a bias most neurons are silent on most samples (|u| <= b), so G and dg/du
are mostly zeros. The *_nnz stages count the nonzeros, and sparse_tn (G^T X) and
sparse_nn (G B) skip the zeros; each of their output entries is summed by one thread over
the nonzero terms in index order, so they too give the same bits for any thread count
(sim.model.network picks them over BLAS below a density threshold). fgm_shift and pgd_update
run the l2 FGM and PGD steps on the pre-activations through W W^T (sim.model.network,
sim.model.sparse).
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from .tuning import CHUNK  # compiled into the kernels below (see tuning's note)

# Threading layer: Numba picks OpenMP (GNU libgomp) when TBB is missing, and libgomp's
# threads spin-wait between parallel regions; on a machine shared with other processes
# (more runnable threads than cores) that made each parallel kernel up to 10x slower than
# on one thread. The workqueue layer sleeps instead. The kernels are coarse-grained and
# launched from one Python thread at a time (sim.sweep serialises its jobs), which is what
# workqueue supports. NUMBA_THREADING_LAYER in the environment still decides. Results do
# not depend on the layer.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

RELU, SMOOTH_RELU = 0, 1
# CHUNK: rows per parallel chunk (fixed, so reductions do not depend on threads); see tuning


@njit(cache=True, inline="always")
def _act(z, act, q, rho):
    if z <= 0.0:
        return 0.0
    if act == RELU:
        return z
    if z <= rho:
        return z ** q / (q * rho ** (q - 1))
    return z - (1.0 - 1.0 / q) * rho


@njit(cache=True, inline="always")
def _dact(z, act, q, rho):
    if z <= 0.0:
        return 0.0
    if act == RELU:
        return 1.0
    if z <= rho:
        return (z / rho) ** (q - 1)
    return 1.0


@njit(cache=True, inline="always")
def _softplus(t):
    """log(1 + exp(t)) without overflow."""
    if t > 0:
        return t + math.log1p(math.exp(-t))
    return math.log1p(math.exp(t))


@njit(cache=True, inline="always")
def _sigmoid(t):
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


@njit(cache=True, inline="always")
def _relu_out(u, bi):
    """act(u - b) - act(-u - b) for ReLU: the operations of _act, written without branches."""
    zp = u - bi
    zm = -u - bi
    return (0.0 if zp <= 0.0 else zp) - (0.0 if zm <= 0.0 else zm)


@njit(cache=True, inline="always")
def _row_output(U, r, b, act, q, rho):
    """sum_i g(U[r, i], b_i) in float64, in a fixed order.

    ReLU: four partial sums over i = 0, 1, 2, 3 mod 4 (the rest in the first), added as
    (s0 + s1) + (s2 + s3), so that the additions do not wait on each other. Other
    activations: one sum in the order of i.
    """
    m = U.shape[1]
    if act == RELU:
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        m4 = m - m % 4
        for i in range(0, m4, 4):
            s0 += _relu_out(U[r, i], b[i])
            s1 += _relu_out(U[r, i + 1], b[i + 1])
            s2 += _relu_out(U[r, i + 2], b[i + 2])
            s3 += _relu_out(U[r, i + 3], b[i + 3])
        for i in range(m4, m):
            s0 += _relu_out(U[r, i], b[i])
        return (s0 + s1) + (s2 + s3)
    s = 0.0
    for i in range(m):
        u = U[r, i]
        s += _act(u - b[i], act, q, rho) - _act(-u - b[i], act, q, rho)
    return s


@njit(cache=True, parallel=True)
def outputs_from_preacts(U, b, act, q, rho):
    """f_n = sum_i g(U[n, i], b_i): the network output from the pre-activations."""
    n, m = U.shape
    f = np.empty(n, dtype=np.float64)
    for r in prange(n):
        f[r] = _row_output(U, r, b, act, q, rho)
    return f


@njit(cache=True, inline="always")
def _backward_rows(U, y, b, act, q, rho, scale, want_bias, part, c, lo, hi, f, loss, dldf):
    """The backward stage on rows lo..hi-1 (bias sums into part[c]); returns the count of
    nonzero entries written to U."""
    m = U.shape[1]
    nnz = 0
    for r in range(lo, hi):
        s = _row_output(U, r, b, act, q, rho)
        f[r] = s
        yf = y[r] * s
        loss[r] = _softplus(-yf)
        g = -y[r] * _sigmoid(-yf)
        dldf[r] = g
        gs = g * scale
        if act == RELU and not want_bias:
            for i in range(m):  # the common case, branch-free: same operations as below
                u = U[r, i]
                zp = u - b[i]
                zm = -u - b[i]
                v = gs * ((0.0 if zp <= 0.0 else 1.0) + (0.0 if zm <= 0.0 else 1.0))
                U[r, i] = v
                nnz += v != 0.0
        else:
            for i in range(m):
                u = U[r, i]
                dp = _dact(u - b[i], act, q, rho)
                dm = _dact(-u - b[i], act, q, rho)
                if want_bias:
                    part[c, i] += g * (dm - dp)
                v = gs * (dp + dm)
                U[r, i] = v
                nnz += v != 0.0
    return nnz


@njit(cache=True, parallel=True)
def backward_stage_nnz(U, y, b, act, q, rho, scale, want_bias):
    """backward_stage, also returning the number of nonzero entries of G (for choosing
    between the dense and the sparse products): (f, loss_n, dl_n/df_n, grad_b, nnz)."""
    n, m = U.shape
    f = np.empty(n, dtype=np.float64)
    loss = np.empty(n, dtype=np.float64)
    dldf = np.empty(n, dtype=np.float64)
    n_chunks = (n + CHUNK - 1) // CHUNK
    part = np.zeros((n_chunks if want_bias else 1, m), dtype=np.float64)
    counts = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        counts[c] = _backward_rows(U, y, b, act, q, rho, scale, want_bias, part, c, c * CHUNK,
                                   min(n, (c + 1) * CHUNK), f, loss, dldf)
    grad_b = np.zeros(m, dtype=np.float64)
    if want_bias:
        for c in range(n_chunks):
            for i in range(m):
                grad_b[i] += part[c, i]
        for i in range(m):
            grad_b[i] *= scale
    return f, loss, dldf, grad_b, counts.sum()


@njit(cache=True)
def backward_stage(U, y, b, act, q, rho, scale, want_bias):
    """The nonlinear stage of the backward pass, in place.

    On entry U holds the pre-activations (n x m). On exit U holds
    G[n, i] = scale * dl_n/df_n * dg/du(U[n, i], b_i), where l_n is the logistic loss
    of sample n. Returns (f, loss_n, dl_n/df_n, grad_b) as float64 arrays, with
    grad_b[i] = scale * sum_n dl_n/df_n * dg/db(U[n, i], b_i) when want_bias (else 0).
    Use scale = 1/n for the gradient of the mean loss, scale = 1 for per-sample
    input gradients.

    Parallel over fixed chunks of CHUNK rows; the bias sums are kept per chunk and
    added in chunk order, so nothing depends on the number of threads.
    """
    f, loss, dldf, grad_b, _ = backward_stage_nnz(U, y, b, act, q, rho, scale, want_bias)
    return f, loss, dldf, grad_b


@njit(cache=True, parallel=True)
def output_grad_stage_nnz(U, b, act, q, rho):
    """output_grad_stage, also returning the number of nonzero entries of dg/du: (f, nnz)."""
    n, m = U.shape
    f = np.empty(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    for r in prange(n):
        s = _row_output(U, r, b, act, q, rho)
        nnz = 0
        if act == RELU:
            for i in range(m):
                u = U[r, i]
                zp = u - b[i]
                zm = -u - b[i]
                v = (0.0 if zp <= 0.0 else 1.0) + (0.0 if zm <= 0.0 else 1.0)
                U[r, i] = v
                nnz += v != 0.0
        else:
            for i in range(m):
                u = U[r, i]
                v = _dact(u - b[i], act, q, rho) + _dact(-u - b[i], act, q, rho)
                U[r, i] = v
                nnz += v != 0.0
        f[r] = s
        counts[r] = nnz
    return f, counts.sum()


@njit(cache=True)
def output_grad_stage(U, b, act, q, rho):
    """In place: U (pre-activations) becomes dg/du(U[n, i], b_i); returns f (float64).

    Then df/dx = U @ W: the input gradient of the output itself, which attacks follow
    (its direction equals that of the logistic loss gradient, without the underflow of
    sigmoid(-y f) on confidently classified points).
    """
    f, _ = output_grad_stage_nnz(U, b, act, q, rho)
    return f


# Products with a sparse left factor. With a bias, most neurons are silent on most samples
# (|u| <= b), so G and dg/du are mostly zeros: skipping them saves most of the work of the
# backward product. Each output entry is summed by one thread, over the nonzero terms in
# increasing index order (samples for G^T X, neurons for G B), whatever the blocking and
# the thread count: the bits do not depend on either.

# The tile sizes of sparse_tn and sparse_nn are in sim.model.tuning (SPARSE_*).


@njit(cache=True, inline="always")
def _axpy_rows4(o, ga, xa, gb, xb, gc, xc, gd, xd):
    for c in range(o.shape[0]):
        o[c] = o[c] + ga * xa[c] + gb * xb[c] + gc * xc[c] + gd * xd[c]


@njit(cache=True, inline="always")
def _axpy_rows3(o, ga, xa, gb, xb, gc, xc):
    for c in range(o.shape[0]):
        o[c] = o[c] + ga * xa[c] + gb * xb[c] + gc * xc[c]


@njit(cache=True, inline="always")
def _axpy_rows2(o, ga, xa, gb, xb):
    for c in range(o.shape[0]):
        o[c] = o[c] + ga * xa[c] + gb * xb[c]


@njit(cache=True, inline="always")
def _axpy_row(o, ga, xa):
    for c in range(o.shape[0]):
        o[c] = o[c] + ga * xa[c]


@njit(cache=True, inline="always")
def _axpy_list(o, ids, vs, k, B):
    """o += sum_e vs[e] * B[ids[e]] for e < k, added in the order of e (four rows per pass
    over o: the sum is the same as one row at a time, with fewer loads and stores of o)."""
    e = 0
    while e + 4 <= k:
        _axpy_rows4(o, vs[e], B[ids[e]], vs[e + 1], B[ids[e + 1]], vs[e + 2], B[ids[e + 2]], vs[e + 3], B[ids[e + 3]])
        e += 4
    if k - e == 3:
        _axpy_rows3(o, vs[e], B[ids[e]], vs[e + 1], B[ids[e + 1]], vs[e + 2], B[ids[e + 2]])
    elif k - e == 2:
        _axpy_rows2(o, vs[e], B[ids[e]], vs[e + 1], B[ids[e + 1]])
    elif k - e == 1:
        _axpy_row(o, vs[e], B[ids[e]])


@njit(cache=True, parallel=True)
def sparse_tn(G, X, out, tile, block):
    """out = G^T X (m x d) for G (n x m), skipping the zero entries of G.

    Parallel over tiles of `tile` rows of out; G is read in blocks of `block` samples,
    whose nonzero entries are listed per output row, then added in sample order.
    """
    n, m = G.shape
    n_tiles = (m + tile - 1) // tile
    for t in prange(n_tiles):
        lo = t * tile
        hi = min(m, lo + tile)
        cnt = np.zeros(tile, np.int64)
        idx = np.empty((tile, block), np.int64)
        val = np.empty((tile, block), G.dtype)
        for i in range(lo, hi):
            out[i, :] = 0
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            cnt[:] = 0
            for r in range(r0, r1):
                for i in range(lo, hi):
                    g = G[r, i]
                    j = i - lo
                    k = cnt[j]
                    idx[j, k] = r
                    val[j, k] = g
                    cnt[j] = k + (g != 0)
            for j in range(hi - lo):
                _axpy_list(out[lo + j], idx[j], val[j], cnt[j], X)
    return out


@njit(cache=True, parallel=True)
def sparse_nn(G, B, out, tile, rows):
    """out = G B (n x d) for G (n x m), B (m x d), skipping the zero entries of G.

    Parallel over blocks of `rows` rows of out; B is read in tiles of `tile` rows (kept
    in cache while the block's rows use them), each output row summed in neuron order.
    """
    n, m = G.shape
    n_blocks = (n + rows - 1) // rows
    for t in prange(n_blocks):
        r0 = t * rows
        r1 = min(n, r0 + rows)
        ids = np.empty(tile, np.int64)
        vs = np.empty(tile, G.dtype)
        for r in range(r0, r1):
            out[r, :] = 0
        for i0 in range(0, m, tile):
            i1 = min(m, i0 + tile)
            for r in range(r0, r1):
                k = 0
                for i in range(i0, i1):
                    g = G[r, i]
                    ids[k] = i
                    vs[k] = g
                    k += g != 0
                _axpy_list(out[r], ids, vs, k, B)
    return out


# The l2 attacks through W W^T. An l2 FGM or PGD step moves x along J = sum_i g'(u_i) w_i,
# a combination of the rows of W, so its effect on the pre-activations is (g' W) W^T =
# g' A with A = W W^T (m x m), and |J|^2 = g' A g'^T: the perturbed pre-activations follow
# without forming the perturbed points.


@njit(cache=True, inline="always")
def _row_times(Gp, r, A, ids, vs, out):
    """out = Gp[r] A over the nonzeros of Gp[r], gathered in neuron order into ids/vs;
    returns their count (the shared first half of fgm_shift and pgd_update)."""
    k = 0
    for i in range(Gp.shape[1]):
        g = Gp[r, i]
        ids[k] = i
        vs[k] = g
        k += g != 0
    out[:] = 0
    _axpy_list(out, ids, vs, k, A)
    return k


@njit(cache=True, parallel=True)
def fgm_shift(U, Gp, A, y, tau, s_out):
    """In place U[r] += s_r * (Gp[r] A), with s_r = -y_r tau / |J_r| and
    |J_r|^2 = Gp[r] A Gp[r]^T (s_r = 0 where J_r = 0, as attacks.steepest).

    With U = X W^T, Gp = dg/du at X and A = W W^T, U becomes (X + delta) W^T for the FGM
    (l2) points X + delta, delta_r = s_r Gp[r] W; s_out[r] receives s_r. Parallel over
    rows, each row's sums in neuron order.
    """
    n, m = U.shape
    n_chunks = (n + CHUNK - 1) // CHUNK
    for c in prange(n_chunks):
        P = np.empty(m, A.dtype)
        ids = np.empty(m, np.int64)
        vs = np.empty(m, A.dtype)
        for r in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            k = _row_times(Gp, r, A, ids, vs, P)
            nsq = 0.0
            for e in range(k):
                nsq += np.float64(vs[e]) * np.float64(P[ids[e]])
            s = 0.0
            if nsq > 0:
                s = -y[r] * tau / math.sqrt(nsq)
            s_out[r] = s
            if s != 0:
                for i in range(m):
                    U[r, i] = U[r, i] + s * P[i]


@njit(cache=True, parallel=True)
def pgd_update(Gp, A, P, nsq, y, alpha, tau):
    """One l2 PGD step in the space of the projections, in place.

    P[r] = W delta_r (float64) and nsq[r] = |delta_r|^2 for the current perturbation; Gp[r]
    holds dg/du at x_r + delta_r, so J_r = Gp[r] W. The step adds c_r J_r with
    c_r = -y_r alpha / |J_r| (0 where J_r = 0), then projects on the ball of radius tau:
    |delta + c J|^2 = |delta|^2 + 2 c Gp.P + c^2 |J|^2 and W (delta + c J) = P + c Gp A.
    """
    n, m = P.shape
    n_chunks = (n + CHUNK - 1) // CHUNK
    for ch in prange(n_chunks):
        Q = np.empty(m, A.dtype)
        ids = np.empty(m, np.int64)
        vs = np.empty(m, A.dtype)
        for r in range(ch * CHUNK, min(n, (ch + 1) * CHUNK)):
            k = _row_times(Gp, r, A, ids, vs, Q)
            jn2 = 0.0
            gp = 0.0
            for e in range(k):
                g = np.float64(vs[e])
                jn2 += g * np.float64(Q[ids[e]])
                gp += g * P[r, ids[e]]
            c = 0.0
            if jn2 > 0:
                c = -y[r] * alpha / math.sqrt(jn2)
            ns = nsq[r] + 2.0 * c * gp + c * c * jn2
            if ns < 0:
                ns = 0.0
            fac = min(1.0, tau / max(math.sqrt(ns), 1e-300))
            for i in range(m):
                P[r, i] = fac * (P[r, i] + c * Q[i])
            nsq[r] = fac * fac * ns


@njit(cache=True, parallel=True)
def row_norms(W):
    """Euclidean norms of the rows of W (float64), each summed in order in float64: the
    relative bias beta |w_i| without the float64 copy and square of W that NumPy makes."""
    m, d = W.shape
    out = np.empty(m, np.float64)
    for i in prange(m):
        s = 0.0
        for j in range(d):
            v = np.float64(W[i, j])
            s += v * v
        out[i] = math.sqrt(s)
    return out
