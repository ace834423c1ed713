"""The fast paths equal the dense path: the sparse backward products of the engine, and the
sparse noise-free l2 path on the codes (sim.model.sparse), checked against sim.model.network, sim.attacks
and tests/naive.py; and both give the same bits whatever the thread count."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import attacks
from sim.model import kernels, sparse
from sim.train.adversarial import make_perturb
from sim.model.config import DataConfig, ModelConfig, RunConfig
from sim.model.data import Problem
from sim.model.linalg import gram, matmul
from sim.model.network import TwoLayerNet, product_nn, product_tn

from tests import naive


def rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    s = np.linalg.norm(ref)
    return float(np.linalg.norm(a - ref) / s) if s > 0 else float(np.linalg.norm(a))


# --------------------------------------------------------------------------------------------
# the engine's sparse products


@settings(max_examples=25)
@given(st.integers(1, 700), st.integers(1, 40), st.integers(1, 70), st.floats(0.0, 1.0),
       st.sampled_from(["float64", "float32"]), st.integers(0, 2**31 - 1))
def test_sparse_products_match_dense(n, m, d, density, dtype, seed):
    rng = np.random.default_rng(seed)
    G = (rng.standard_normal((n, m)) * (rng.random((n, m)) < density)).astype(dtype)
    X = rng.standard_normal((n, d)).astype(dtype)
    B = rng.standard_normal((m, d)).astype(dtype)
    tol = 1e-12 if dtype == "float64" else 1e-5
    ref_tn = G.astype(np.float64).T @ X.astype(np.float64)
    ref_nn = G.astype(np.float64) @ B.astype(np.float64)
    for tile, block in ((1, 1), (3, 5), (64, 256)):  # any blocking gives the same result
        out = kernels.sparse_tn(G, X, np.empty((m, d), dtype), tile, block)
        assert out.dtype == np.dtype(dtype) and rel(out, ref_tn) <= tol
        out2 = kernels.sparse_nn(G, B, np.empty((n, d), dtype), tile, block)
        assert rel(out2, ref_nn) <= tol
    a = kernels.sparse_tn(G, X, np.empty((m, d), dtype), 2, 7)
    b = kernels.sparse_tn(G, X, np.empty((m, d), dtype), 64, 256)
    np.testing.assert_array_equal(a, b)  # the summation order is the samples', not the blocks'
    nnz = int(np.count_nonzero(G))
    assert rel(product_tn(G, X, nnz), ref_tn) <= tol and rel(product_nn(G, B, nnz), ref_nn) <= tol


def test_gram_is_symmetric_and_exact():
    rng = np.random.default_rng(0)
    C = rng.standard_normal((600, 70))
    A = gram(C, block=256)
    np.testing.assert_array_equal(A, A.T)
    np.testing.assert_allclose(A, C @ C.T, rtol=1e-12, atol=1e-12)
    A2 = gram(np.asfortranarray(C).T.T, block=100)  # any layout
    np.testing.assert_allclose(A2, A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "smooth_relu"])
@pytest.mark.parametrize("bias", ["fixed", "relative", "trained"])
def test_network_sparse_route_matches_naive(activation, bias):
    """With a large bias most neurons are silent, so the engine takes the sparse products."""
    rng = np.random.default_rng(1)
    n, m, d = 400, 30, 20
    W = rng.standard_normal((m, d))
    model = ModelConfig(activation=activation, bias=bias, bias_value=4.0, beta=0.9, rho=0.5)
    net = TwoLayerNet(W, model, b=np.full(m, 4.0))
    X = 0.4 * rng.standard_normal((n, d))
    y = rng.choice([-1.0, 1.0], n)
    U = X @ W.T
    assert np.mean(np.abs(U) > net.bias()) < 0.1  # the sparse route (d < 512: threshold 0.1)
    a = dict(activation=activation, q=3, rho=0.5)
    loss_ref, gW_ref, gb_ref, gx_ref = naive.grads(X, y, W, net.bias(), **a)
    loss, gW, gb, f = net.loss_and_grad(X, y, want_bias=True)
    assert abs(loss - loss_ref) <= 1e-12 and rel(gW, gW_ref) <= 1e-12 and rel(gb, gb_ref) <= 1e-12
    gx, _, _ = net.input_gradient(X, y)
    assert rel(gx, gx_ref) <= 1e-12
    J, _ = net.output_gradient(X)
    assert rel(J, naive.output_grads(X, W, net.bias(), **a)) <= 1e-12


# --------------------------------------------------------------------------------------------
# the sparse noise-free l2 path


def setup(d=40, n=300, k=3.0, dtype=np.float64, model=None, steps=15, seed=0):
    cfg = RunConfig(DataConfig(d=d, k=k, noise=0.0, n_train=n, n_test=10, seed=seed), model or ModelConfig(beta=0.1))
    p = Problem.from_config(cfg.data)
    tr = p.train_set()
    X = np.ascontiguousarray(tr.x, dtype=dtype)
    net = TwoLayerNet.init(cfg, dtype)
    for _ in range(steps):  # a few dense steps, so that the neurons are selective
        _, g, gb, _ = net.loss_and_grad(X, tr.y)
        net.W -= dtype(1.0) * g
        if net.model.bias == "trained":
            net.b -= gb
    return p, X, tr.y, sparse.Codes.from_dense(tr.z), net


def test_codes_round_trip():
    rng = np.random.default_rng(0)
    z = (rng.random((50, 30)) < 0.1) * rng.choice([-1.0, 1.0], (50, 30))
    c = sparse.Codes.from_dense(z)
    np.testing.assert_array_equal(c.to_dense(), z)
    np.testing.assert_array_equal(c.rows(10, 20).to_dense(), z[10:20])
    ptr, rows, vals = c.by_atom()
    for j in range(30):
        np.testing.assert_array_equal(rows[ptr[j]:ptr[j + 1]], np.nonzero(z[:, j])[0])
        np.testing.assert_array_equal(vals[ptr[j]:ptr[j + 1]], z[np.nonzero(z[:, j])[0], j])


@pytest.mark.parametrize("activation", ["relu", "smooth_relu"])
@pytest.mark.parametrize("bias", ["fixed", "relative", "trained", "schedule"])
def test_sparse_net_equals_dense(bias, activation):
    model = ModelConfig(bias=bias, activation=activation, bias_value=0.002, beta=0.1, rho=0.01)
    p, X, y, codes, net = setup(model=model)
    sn = sparse.SparseNet.from_net(net, p.M)
    np.testing.assert_allclose(sn.bias(), net.bias(), rtol=1e-12, atol=1e-15)
    assert rel(sn.preactivations(codes), net.preactivations(X)) <= 1e-12
    assert rel(sn.forward(codes), net.forward(X)) <= 1e-12
    loss, gW, gb, f = net.loss_and_grad(X, y, want_bias=True)
    loss_s, gC, gb_s, f_s = sn.loss_and_grad(codes, y, want_bias=True)
    assert abs(loss - loss_s) <= 1e-12 and rel(f_s, f) <= 1e-12 and rel(gb_s, gb) <= 1e-12
    assert rel(gC.T, gW @ p.M) <= 1e-12
    np.testing.assert_allclose(sn.to_net(p.M).W, net.W, rtol=0, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "smooth_relu"])
def test_sparse_fgm_equals_dense(activation):
    p, X, y, codes, net = setup(model=ModelConfig(beta=0.1, activation=activation, rho=0.01))
    sn = sparse.SparseNet.from_net(net, p.M)
    for tau in (0.0, 0.1, 0.5):
        r = attacks.fgm(net, X, y, tau, "l2")
        assert np.max(np.abs(sparse.fgm(sn, codes, y, tau).margin - r.margin)) <= 1e-11
        loss, gW, gb, f = net.loss_and_grad(r.x_adv, y, want_bias=True)
        loss_s, gC, gb_s, f_s = sparse.fgm_loss_and_grad(sn, codes, y, tau, want_bias=True)
        assert abs(loss - loss_s) <= 1e-12 and rel(f_s, f) <= 1e-11 and rel(gb_s, gb) <= 1e-11
        assert rel(gC.T, gW @ p.M) <= 1e-11


@pytest.mark.parametrize("random_start,restarts", [(False, 1), (True, 1), (True, 3)])
def test_sparse_pgd_equals_dense(random_start, restarts):
    p, X, y, codes, net = setup()
    sn = sparse.SparseNet.from_net(net, p.M)
    r = attacks.pgd(net, X, y, 0.4, "l2", steps=12, restarts=restarts, rng=np.random.default_rng(3),
                    random_start=random_start)
    s = sparse.pgd(sn, codes, y, 0.4, steps=12, restarts=restarts, rng=np.random.default_rng(3),
                   random_start=random_start, M=p.M)
    assert np.max(np.abs(s.margin - r.margin)) <= 1e-10
    assert s.robust_accuracy == r.robust_accuracy < 1.0


def test_sparse_training_equals_dense():
    """20 steps of clean, then 5 of FGM adversarial training: W = C M^T all along."""
    p, X, y, codes, net = setup(steps=0)
    sn = sparse.SparseNet.from_net(net, p.M)
    log = []
    sparse.gradient_descent(sn, codes, y, steps=20, lr=1.0, log=log)
    for _ in range(20):
        _, g, _, _ = net.loss_and_grad(X, y)
        net.W -= g
    assert rel(sn.to_net(p.M).W, net.W) <= 1e-11
    assert log[-1]["loss"] < log[0]["loss"]
    perturb = make_perturb("fgm", 0.3, "l2", p.cfg)
    sparse.gradient_descent(sn, codes, y, steps=5, lr=1.0, fgm_tau=0.3)
    for step in range(5):
        _, g, _, _ = net.loss_and_grad(perturb(net, X, y, step), y)
        net.W -= g
    assert rel(sn.to_net(p.M).W, net.W) <= 1e-10


def test_sparse_float32_close_to_dense():
    """In float32 the two paths round differently (k terms against d), so a neuron at the
    threshold can flip: equal up to rounding, checked loosely."""
    p, X, y, codes, net = setup(dtype=np.float32)
    sn = sparse.SparseNet.from_net(net, p.M)
    assert sn.CT.dtype == np.float32
    loss, gW, _, f = net.loss_and_grad(X, y)
    loss_s, gC, _, f_s = sn.loss_and_grad(codes, y)
    assert gC.dtype == np.float32
    assert abs(loss - loss_s) <= 1e-5 * max(1.0, loss) and rel(f_s, f) <= 1e-4
    assert rel(gC.T, gW.astype(np.float64) @ p.M) <= 1e-3


def test_applicability_is_checked():
    p = Problem.from_config(DataConfig(d=8, k=2.0))  # noise 0.05 by default
    with pytest.raises(ValueError, match="noise"):
        sparse.check_applicable(p)
    sparse.check_applicable(Problem.from_config(DataConfig(d=8, k=2.0, noise=0.0)))
    sn = sparse.SparseNet(np.zeros((8, 4)), ModelConfig())
    with pytest.raises(ValueError, match="random start needs"):
        sparse.pgd(sn, sparse.Codes.from_dense(np.eye(8)[:3]), np.ones(3), 0.1, steps=2, restarts=2)


SCRIPT = """
import hashlib, numpy as np, numba
from sim.model import kernels, sparse
from sim.model.config import DataConfig, ModelConfig, RunConfig
from sim.model.data import Problem
from sim.model.network import TwoLayerNet
h = hashlib.sha256()
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    G = (rng.standard_normal((900, 70)) * (rng.random((900, 70)) < 0.1)).astype(dtype)
    X = rng.standard_normal((900, 50)).astype(dtype)
    B = rng.standard_normal((70, 50)).astype(dtype)
    h.update(kernels.sparse_tn(G, X, np.empty((70, 50), dtype), 8, 64).tobytes())
    h.update(kernels.sparse_nn(G, B, np.empty((900, 50), dtype), 16, 4).tobytes())
cfg = RunConfig(DataConfig(d=48, k=3.0, noise=0.0, n_train=700), ModelConfig(beta=0.1))
p = Problem.from_config(cfg.data); tr = p.train_set()
X = tr.x.astype(np.float32)
net = TwoLayerNet.init(cfg, np.float32)
for _ in range(10):
    _, g, _, _ = net.loss_and_grad(X, tr.y); net.W -= g
h.update(net.input_gradient(X, tr.y)[0].tobytes())
codes = sparse.Codes.from_dense(tr.z)
sn = sparse.SparseNet.from_net(net, p.M)
sparse.gradient_descent(sn, codes, tr.y, steps=5, lr=1.0)
h.update(sn.CT.tobytes())
net = net.astype(np.float64)
h.update(net.fgm_loss_and_grad(tr.x, tr.y, 0.3)[1].tobytes())
h.update(net.pgd_margins(tr.x, tr.y, 0.3, steps=5, restarts=2).tobytes())
sn = sparse.SparseNet.from_net(net, p.M)
sparse.gradient_descent(sn, codes, tr.y, steps=2, lr=1.0, fgm_tau=0.3)
h.update(sn.CT.tobytes())
h.update(sparse.pgd(sn, codes, tr.y, 0.3, steps=5, restarts=2, M=p.M).margin.tobytes())
print(numba.get_num_threads(), h.hexdigest())
"""


def test_fast_paths_bit_identical_whatever_the_thread_count():
    out = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
        out.append(res.stdout.split())
    assert out[0][0] == "1" and out[1][0] == "2"
    assert out[0][1] == out[1][1]
