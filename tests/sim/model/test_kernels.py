"""Every kernel against the NumPy reference (tests/naive.py) and every gradient against
torch autograd in float64, on random instances drawn by hypothesis."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sim.model.config import ModelConfig
from sim.model.network import TwoLayerNet

from tests import naive

BIAS_MODES = ("fixed", "relative", "trained", "schedule")


@st.composite
def instances(draw, dtypes=("float64", "float32")):
    n = draw(st.integers(1, 300))
    m = draw(st.integers(1, 12))
    d = draw(st.integers(1, 9))
    activation = draw(st.sampled_from(["relu", "smooth_relu"]))
    bias = draw(st.sampled_from(BIAS_MODES))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    model = ModelConfig(activation=activation, bias=bias, q=draw(st.integers(2, 4)),
                        rho=draw(st.floats(0.05, 2.0)), beta=draw(st.floats(0.0, 0.5)),
                        bias_value=draw(st.floats(-0.5, 1.0)))
    W = rng.standard_normal((m, d)) * draw(st.floats(0.1, 2.0))
    net = TwoLayerNet(W.astype(dtype), model, b=rng.uniform(-0.5, 1.0, m))
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.choice([-1.0, 1.0], n)
    return net, X, y


def act_kwargs(net):
    return dict(activation=net.model.activation, q=net.model.q, rho=net.model.rho)


def rel_err(a, ref, floor: float = 1e-4):
    """|a - ref| / max(|ref|, floor): relative, except where the reference nearly cancels (a
    gradient that is a mean of O(1) terms summing to 3e-5 carries rounding of the terms' size,
    so its relative error can reach 2e-12 in float64; hypothesis found one)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), floor))


@given(instances())
def test_kernels_match_numpy_reference(inst):
    net, X, y = inst
    tol = 1e-12 if net.W.dtype == np.float64 else 2e-4
    b = net.bias()
    Xr = X.astype(np.float64)
    Wr = net.W.astype(np.float64)
    loss_ref, gW_ref, gb_ref, gx_ref = naive.grads(Xr, y, Wr, b, **act_kwargs(net))
    f = net.forward(X)
    assert rel_err(f, naive.outputs(Xr, Wr, b, **act_kwargs(net))) < tol
    loss, gW, gb, f2 = net.loss_and_grad(X, y, want_bias=True)
    assert gW.dtype == net.W.dtype
    assert abs(loss - loss_ref) <= tol * max(1.0, abs(loss_ref))
    assert rel_err(gW, gW_ref) < tol
    assert rel_err(gb, gb_ref) < tol
    gx, loss_n, _ = net.input_gradient(X, y)
    assert rel_err(gx, gx_ref) < tol
    assert rel_err(loss_n, naive.losses(Xr, y, Wr, b, **act_kwargs(net))) < tol
    J, f3 = net.output_gradient(X)
    assert rel_err(J, naive.output_grads(Xr, Wr, b, **act_kwargs(net))) < tol
    assert rel_err(f3, f) < tol


def torch_outputs(net, Xt, W=None, b=None):
    """f(x) in torch float64, with the bias as the network defines it."""
    if W is None:
        W = torch.tensor(net.W, dtype=torch.float64)
    if b is None:
        b = torch.tensor(net.bias(), dtype=torch.float64)
    q, rho = net.model.q, net.model.rho

    def act(z):
        if net.model.activation == "relu":
            return torch.relu(z)
        zc = z.clamp(min=0.0)
        return torch.where(z <= 0, torch.zeros_like(z),
                           torch.where(z <= rho, zc ** q / (q * rho ** (q - 1)), z - (1 - 1 / q) * rho))

    U = Xt @ W.T
    return (act(U - b) - act(-U - b)).sum(dim=1)


def torch_loss(net, X, y):
    """Per-sample logistic losses in torch float64, and the leaves W, b, X."""
    W = torch.tensor(net.W, dtype=torch.float64, requires_grad=True)
    Xt = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    if net.model.bias in ("relative", "schedule"):
        b = net.beta * W.detach().norm(dim=1)  # not differentiated, by definition
        b.requires_grad_(True)
    else:
        b = torch.tensor(net.b, dtype=torch.float64, requires_grad=True)
    f = torch_outputs(net, Xt, W, b)
    yt = torch.tensor(y, dtype=torch.float64)
    per = torch.logaddexp(torch.zeros_like(f), -yt * f)  # exact (softplus is linear past 20)
    return per, W, b, Xt


@given(instances(dtypes=("float64",)))
def test_gradients_match_torch_autograd_float64(inst):
    net, X, y = inst
    per, W, b, Xt = torch_loss(net, X, y)
    per.mean().backward(retain_graph=True)
    loss, gW, gb, _ = net.loss_and_grad(X, y, want_bias=True)
    assert rel_err(gW, W.grad.numpy()) <= 1e-10
    assert rel_err(gb, b.grad.numpy()) <= 1e-10
    assert abs(loss - per.mean().item()) <= 1e-10 * max(1.0, loss)
    Xt.grad = None
    per.sum().backward()  # d(sum_n l_n)/dx_n = dl_n/dx_n: the per-sample input gradients
    gx, _, _ = net.input_gradient(X, y)
    assert rel_err(gx, Xt.grad.numpy()) <= 1e-10
    Xt2 = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    torch_outputs(net, Xt2).sum().backward()
    J, _ = net.output_gradient(X)
    assert rel_err(J, Xt2.grad.numpy()) <= 1e-10


def test_relu_kink_subgradient_is_zero():
    """At |u| == b exactly the ReLU neuron contributes no gradient (act'(0) = 0, as torch)."""
    model = ModelConfig(bias="fixed", bias_value=0.5)
    net = TwoLayerNet(np.array([[1.0, 0.0]]), model)
    X = np.array([[0.5, 0.3], [-0.5, 1.0], [0.7, 0.0]])
    y = np.array([1.0, 1.0, 1.0])
    gx, _, _ = net.input_gradient(X, y)
    assert np.all(gx[:2] == 0.0)
    assert gx[2, 0] != 0.0
    per, W, b, Xt = torch_loss(net, X, y)
    per.sum().backward()
    np.testing.assert_array_equal(Xt.grad.numpy()[:2], 0.0)
    np.testing.assert_allclose(gx, Xt.grad.numpy(), rtol=1e-14, atol=0)


def test_network_is_odd_and_shrinks():
    """f(-x) = -f(x); with ReLU and b >= 0 each neuron is the soft threshold of its projection."""
    rng = np.random.default_rng(0)
    net = TwoLayerNet(rng.standard_normal((5, 4)), ModelConfig(bias="fixed", bias_value=0.3))
    X = rng.standard_normal((50, 4))
    np.testing.assert_allclose(net.forward(-X), -net.forward(X), rtol=0, atol=1e-14)
    U = X @ net.W.T
    shrink = np.sign(U) * np.maximum(np.abs(U) - 0.3, 0)
    np.testing.assert_allclose(net.forward(X), shrink.sum(axis=1), rtol=1e-14, atol=1e-14)


@st.composite
def shift_instances(draw):
    """A network, points, and the kernels' inputs for FGM / PGD on the pre-activations."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    n, m, d = draw(st.integers(1, 300)), draw(st.integers(1, 12)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    W = (rng.standard_normal((m, d)) * draw(st.floats(0.1, 2.0))).astype(dtype)
    X = rng.standard_normal((n, d)).astype(dtype)
    b = rng.uniform(-0.2, 1.0, m)
    U = X @ W.T
    Gp = np.where(np.abs(U) > b, 1.0, 0.0).astype(dtype)  # ReLU: dg/du of the symmetric pair
    Gp[rng.random(n) < 0.1] = 0  # some rows with J = 0
    return W, X, U, Gp, rng.choice([-1.0, 1.0], n), draw(st.floats(0.0, 2.0)), rng


@given(shift_instances())
def test_fgm_shift_matches_numpy_reference(inst):
    from sim.model import kernels
    W, X, U, Gp, y, tau, _ = inst
    A = W @ W.T
    ref_U, ref_s = naive.fgm_shift(U, Gp, A, y, tau)
    s = np.empty(len(U))
    kernels.fgm_shift(U, Gp, A, y, tau, s)
    tol = 1e-10 if W.dtype == np.float64 else 1e-4
    assert rel_err(s, ref_s) <= tol and rel_err(U, ref_U) <= tol
    # it is the FGM: U becomes (X + delta) W^T with delta = s Gp W, |delta| = tau where J != 0
    delta = ref_s[:, None] * (Gp.astype(np.float64) @ W.astype(np.float64))
    assert rel_err(U, (X + delta) @ W.T.astype(np.float64)) <= tol
    J = np.linalg.norm(Gp.astype(np.float64) @ W.astype(np.float64), axis=1)
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1)[J > 1e-6], tau, rtol=10 * tol, atol=1e-12)


@given(shift_instances(), st.floats(0.0, 1.0))
def test_pgd_update_matches_numpy_reference(inst, alpha):
    from sim.model import kernels
    W, X, U, Gp, y, tau, rng = inst
    A = W @ W.T
    delta = rng.standard_normal(X.shape) * rng.uniform(0, 2 * tau + 1e-3, (len(X), 1))
    P = delta @ W.T.astype(np.float64)
    nsq = np.einsum("ij,ij->i", delta, delta)
    ref_P, ref_nsq = naive.pgd_update(Gp, A, P, nsq, y, alpha, tau)
    kernels.pgd_update(Gp, A, P, nsq, y, alpha, tau)
    tol = 1e-10 if W.dtype == np.float64 else 1e-4
    assert rel_err(P, ref_P) <= tol and rel_err(nsq, ref_nsq) <= tol
    assert np.all(nsq <= tau ** 2 * (1 + 1e-9) + 1e-300)


@given(st.integers(1, 40), st.integers(1, 300), st.sampled_from(["float64", "float32"]), st.integers(0, 2**31 - 1))
def test_row_norms_match_numpy_reference(m, d, dtype, seed):
    from sim.model import kernels
    W = (np.random.default_rng(seed).standard_normal((m, d)) * 3).astype(dtype)
    got = kernels.row_norms(W)
    assert got.dtype == np.float64 and rel_err(got, naive.row_norms(W)) <= 1e-13
