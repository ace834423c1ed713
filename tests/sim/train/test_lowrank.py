"""Low-rank adversarial training (sim.train.lowrank): the factor gradients against torch autograd
in float64, the full-rank equivalence that holds exactly, the loop against
sim.train.loop.gradient_descent, the rank of the update, the stopping rule."""
import numpy as np
import pytest
import torch

from sim.model.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from sim.model.data import Problem
from sim.model.network import TwoLayerNet
from sim.train.adversarial import make_perturb
from sim.train.loop import gradient_descent
from sim.train.lowrank import FullUpdate, LowRankUpdate, Plateau, factor_gradients, train_adversarial
from tests.sim.model.test_kernels import rel_err, torch_outputs


@pytest.mark.parametrize("activation", ["relu", "smooth_relu"])
@pytest.mark.parametrize("bias", ["fixed", "relative"])
@pytest.mark.parametrize("r", [1, 3, 5])
def test_factor_gradients_match_torch_autograd_float64(activation, bias, r):
    """d/dU and d/dV of L(W_0 + U V^T), by the chain rule from the network's gradient G,
    equal autograd through the product (the relative bias b = beta |w_i| is a constant,
    as the network defines it)."""
    rng = np.random.default_rng(10 * r + (activation == "relu") + 2 * (bias == "fixed"))
    m, d, n = 7, 5, 60
    model = ModelConfig(activation=activation, bias=bias, bias_value=0.2, beta=0.3, rho=0.3)
    W0 = rng.standard_normal((m, d))
    U, V = rng.standard_normal((m, r)) * 0.5, rng.standard_normal((d, r)) * 0.5
    X, y = rng.standard_normal((n, d)), np.where(rng.random(n) < 0.5, -1.0, 1.0)
    net = TwoLayerNet(W0 + U @ V.T, model)
    _, G, _, _ = net.loss_and_grad(X, y)
    gU, gV = factor_gradients(G, U, V)

    Ut = torch.tensor(U, dtype=torch.float64, requires_grad=True)
    Vt = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    Wt = torch.tensor(W0, dtype=torch.float64) + Ut @ Vt.T
    b = net.beta * Wt.detach().norm(dim=1) if bias == "relative" else torch.tensor(net.b, dtype=torch.float64)
    f = torch_outputs(net, torch.tensor(X, dtype=torch.float64), Wt, b)
    loss = torch.logaddexp(torch.zeros_like(f), -torch.tensor(y) * f).mean()
    loss.backward()
    assert rel_err(gU, Ut.grad.numpy()) <= 1e-10
    assert rel_err(gV, Vt.grad.numpy()) <= 1e-10
    assert np.abs(gU).max() > 0 and np.abs(gV).max() > 0  # a vanishing gradient would pass trivially


SMALL = RunConfig(DataConfig(d=12, k=2.0, n_train=300, n_test=100), ModelConfig(beta=0.1),
                  TrainConfig(lr=1.0, steps=30, dtype="float64"))


def _clean_net(dtype=np.float64):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((SMALL.width(), SMALL.data.d)) * 0.3
    net = TwoLayerNet(W.astype(dtype), SMALL.model)
    net.model = net.model.replace(bias="schedule", beta=0.1, beta_end=0.2, ramp_steps=5)
    return net


def _run(update, steps=12, dtype=np.float64, kind="fgm"):
    problem = Problem.from_config(SMALL.data)
    net = _clean_net(dtype)
    perturb = make_perturb(kind, 0.3, "l2", SMALL.data)
    return train_adversarial(net, problem, perturb, update, lr=0.5, max_steps=steps, batch_size=200, quiet=True)


def test_frozen_orthonormal_factor_at_full_rank_is_full_training():
    """What "rank min(m, d) equals full training" means exactly. Gradient descent on both
    factors is a different dynamics from GD on W (W moves by -lr (G V V^T + U U^T G), a
    preconditioned step), so it is NOT compared with full training. What is equal: with
    r = d, V frozen at an orthonormal basis Q of R^d and only U trained, W = W_0 + U Q^T
    moves by -lr G Q Q^T = -lr G each step, i.e. along the full trajectory (FGM perturbation
    recomputed at every W, schedule bias), up to rounding. The two controls show the check
    can fail: V = 2 Q (a step 4x larger) and training V as well both leave the trajectory."""
    W0 = _clean_net().W
    d = W0.shape[1]
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
    full = _run(FullUpdate(W0)).net.W
    lowrank = _run(LowRankUpdate(W0, d, V=Q, train_V=False)).net.W
    assert rel_err(lowrank, full) <= 1e-10
    assert rel_err(full, W0) > 1e-2  # the runs moved
    scaled = _run(LowRankUpdate(W0, d, V=2 * Q, train_V=False)).net.W
    assert rel_err(scaled, full) > 1e-3
    both = _run(LowRankUpdate(W0, d, V=Q, train_V=True)).net.W
    assert rel_err(both, full) > 1e-6


def test_full_update_loop_is_gradient_descent_bit_for_bit():
    """train_adversarial with FullUpdate (what the strategies experiment runs) gives the same
    bits as sim.train.loop.gradient_descent (what verify runs), online, float32."""
    problem = Problem.from_config(SMALL.data)
    perturb = make_perturb("fgm", 0.3, "l2", SMALL.data)
    a = _clean_net(np.float32)
    run = train_adversarial(a.copy(), problem, perturb, FullUpdate(a.W), lr=0.5, max_steps=10, batch_size=200,
                            quiet=True)
    b = a.copy()
    gradient_descent(b, problem, None, None, TrainConfig(lr=0.5, steps=10, mode="online", batch_size=200,
                                                         dtype="float32"), perturb=perturb, quiet=True)
    assert run.net.W.dtype == np.float32
    np.testing.assert_array_equal(run.net.W, b.W)


@pytest.mark.parametrize("r", [1, 2])
def test_lowrank_update_has_rank_r_and_both_factors_learn(r):
    W0 = _clean_net().W
    upd = LowRankUpdate(W0, r, init_scale=1.0, seed_cfg=SMALL.data)
    V0 = upd.V.copy()
    res = _run(upd, steps=10)
    s = np.linalg.svd(res.net.W - W0, compute_uv=False)
    assert s[0] > 1e-3
    assert s[r] <= 1e-10 * s[0]
    assert np.abs(res.factors["V"] - V0).max() > 0
    np.testing.assert_allclose(res.net.W, W0 + res.factors["U"] @ res.factors["V"].T, rtol=0, atol=1e-14)


def test_lowrank_start_is_the_clean_weights_and_seeded():
    W0 = _clean_net().W
    a, b = LowRankUpdate(W0, 3, seed_cfg=SMALL.data), LowRankUpdate(W0, 3, seed_cfg=SMALL.data)
    np.testing.assert_array_equal(a.V, b.V)
    np.testing.assert_array_equal(a.weights(), W0)
    assert abs(np.linalg.norm(a.V, axis=0).mean() - 1.0) < 0.5  # columns of norm about init_scale


def test_bad_arguments_are_rejected():
    W0 = _clean_net().W
    with pytest.raises(ValueError, match="rank"):
        LowRankUpdate(W0, 0)
    with pytest.raises(ValueError, match="init_scale"):
        LowRankUpdate(W0, 1, init_scale=-1.0)
    with pytest.raises(ValueError, match="V of shape"):
        LowRankUpdate(W0, 2, V=np.zeros((3, 2)))
    net = _clean_net()
    net.model = net.model.replace(bias="trained")
    with pytest.raises(ValueError, match="bias"):
        train_adversarial(net, Problem.from_config(SMALL.data), make_perturb("fgm", 0.3, "l2", SMALL.data),
                          FullUpdate(net.W), lr=0.5, max_steps=2, quiet=True)


def test_plateau_rule():
    pl = Plateau(tol=0.005, window=0.25, min_checks=4, min_steps=40)

    def curve(vals, every=10):
        return [{"step": every * i, "value": v} for i, v in enumerate(vals)]

    flat_late = curve([0.1, 0.5, 0.8, 0.9, 0.92, 0.93, 0.93, 0.931, 0.932, 0.931, 0.932, 0.932, 0.933])
    assert pl.converged(flat_late)  # steps 90..120: spread 0.002
    assert not pl.converged(curve([0.1, 0.5, 0.8, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]))
    assert not pl.converged(curve([0.5, 0.5, 0.5, 0.5]))  # step 30 < min_steps
    assert not pl.converged(curve([0.5] * 6, every=10)[-2:])  # too few checks in the window
    assert pl.plateau_value(flat_late) == pytest.approx(np.mean([0.931, 0.932, 0.932, 0.933]))


def test_stopping_at_plateau_in_the_loop():
    """The loop stops at the first converged check; without a rule it runs to max_steps."""
    W0 = _clean_net().W
    problem = Problem.from_config(SMALL.data)
    perturb = make_perturb("fgm", 0.3, "l2", SMALL.data)
    calls = []

    def check(step, net):
        calls.append(step)
        return {"value": 1.0}

    res = train_adversarial(_clean_net(), problem, perturb, FullUpdate(W0), lr=0.5, max_steps=50, batch_size=100,
                            check=check, check_every=2, plateau=Plateau(min_checks=3, min_steps=6), quiet=True)
    # the window of the last quarter holds 3 checks first at step 16 (steps 12, 14, 16)
    assert res.converged and res.steps == 16 and calls == list(range(0, 17, 2))
    res = train_adversarial(_clean_net(), problem, perturb, FullUpdate(W0), lr=0.5, max_steps=7, batch_size=100,
                            check=check, check_every=3, quiet=True)
    assert not res.converged and res.steps == 7 and [c["step"] for c in res.curve] == [0, 3, 6, 7]


@pytest.mark.parametrize("rank", [None, 2])
def test_resumed_run_is_the_uninterrupted_run(rank):
    """A run stopped by its cap and resumed to a larger cap gives the bits (weights, factors,
    checked curve) of one uninterrupted run: batches, draws and the bias depend on the step."""
    W0 = _clean_net().W
    problem = Problem.from_config(SMALL.data)
    perturb = make_perturb("fgm", 0.3, "l2", SMALL.data)

    def check(step, net):
        return {"value": float(np.sum(net.W))}

    def update():
        return FullUpdate(W0) if rank is None else LowRankUpdate(W0, rank, seed_cfg=SMALL.data)

    kw = dict(lr=0.5, batch_size=100, check=check, check_every=4, quiet=True)
    whole = train_adversarial(_clean_net(), problem, perturb, update(), max_steps=16, **kw)
    part = train_adversarial(_clean_net(), problem, perturb, update(), max_steps=8, **kw)
    upd = FullUpdate(part.net.W) if rank is None else update().restore(part.factors["U"], part.factors["V"])
    rest = train_adversarial(_clean_net(), problem, perturb, upd, max_steps=16, resume=part, **kw)
    np.testing.assert_array_equal(rest.net.W, whole.net.W)
    assert [c["step"] for c in rest.curve] == [c["step"] for c in whole.curve] == [0, 4, 8, 12, 16]
    assert [c["value"] for c in rest.curve] == [c["value"] for c in whole.curve]
    for k in whole.factors:
        np.testing.assert_array_equal(rest.factors[k], whole.factors[k])
    with pytest.raises(ValueError, match="resume"):
        train_adversarial(_clean_net(), problem, perturb, update(), max_steps=4, resume=part, **kw)


def test_scaled_gd_is_invariant_to_the_scale_of_the_factors():
    """ScaledGD's trajectory of W does not depend on the scale of the random factor (up to
    rounding and the relative damping); plain GD's does (the control)."""
    W0 = _clean_net().W
    V = np.linalg.qr(np.random.default_rng(5).standard_normal((W0.shape[1], 3)))[0] @ np.diag([1.0, 0.5, 2.0])
    runs = {(scaled, a): _run(LowRankUpdate(W0, 3, V=a * V, scaled=scaled, damping=1e-9), steps=8).net.W
            for scaled in (True, False) for a in (1.0, 4.0)}
    assert rel_err(runs[True, 4.0], runs[True, 1.0]) <= 1e-6
    assert rel_err(runs[True, 1.0], W0) > 1e-2
    assert rel_err(runs[False, 4.0], runs[False, 1.0]) > 1e-2
    s = np.linalg.svd(runs[True, 1.0] - W0, compute_uv=False)
    assert s[3] <= 1e-10 * s[0]
