"""Properties every attack and the robust-accuracy report must have (hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import attacks
from sim.model.config import ModelConfig
from sim.model.network import TwoLayerNet


@st.composite
def problems(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    n, m, d = draw(st.integers(1, 40)), draw(st.integers(1, 10)), draw(st.integers(1, 8))
    net = TwoLayerNet(rng.standard_normal((m, d)), ModelConfig(bias="fixed", bias_value=draw(st.floats(0, 0.5)),
                                                               activation=draw(st.sampled_from(["relu", "smooth_relu"]))))
    X = rng.standard_normal((n, d))
    y = np.sign(net.forward(X) + 1e-9)
    y[y == 0] = 1.0
    flip = rng.random(n) < 0.1
    y[flip] *= -1
    return net, X, y, draw(st.sampled_from(attacks.NORMS)), draw(st.floats(0.0, 1.5)), rng.standard_normal(d)


def dist(X_adv, X, norm):
    D = X_adv - X
    return np.max(np.abs(D), axis=1) if norm == "linf" else np.linalg.norm(D, axis=1)


@settings(max_examples=30)
@given(problems())
def test_perturbations_stay_in_the_ball(p):
    net, X, y, norm, tau, v = p
    for r in (attacks.fgm(net, X, y, tau, norm), attacks.pgd(net, X, y, tau, norm, steps=5, restarts=2),
              attacks.dense(net, X, y, tau, v, norm), attacks.random_noise(net, X, y, tau, norm, draws=3)):
        assert np.all(dist(r.x_adv, X, norm) <= tau * (1 + 1e-12) + 1e-15), r.name
        np.testing.assert_array_equal(r.success, y * net.forward(r.x_adv) <= 0)


@settings(max_examples=30)
@given(problems())
def test_best_of_attacks_is_at_most_each_attack_and_clean(p):
    net, X, y, norm, tau, v = p
    rep = attacks.evaluate_robustness(net, X, y, tau, norm, direction=v, pgd_steps=5, pgd_restarts=2, random_draws=3)
    assert rep.robust_accuracy <= rep.clean_accuracy + 1e-12
    for name, acc in rep.per_attack.items():
        assert rep.robust_accuracy <= acc + 1e-12, name


@settings(max_examples=30)
@given(problems())
def test_zero_radius_gives_clean_accuracy(p):
    net, X, y, norm, _, v = p
    rep = attacks.evaluate_robustness(net, X, y, 0.0, norm, direction=v, pgd_steps=3, pgd_restarts=2, random_draws=2)
    assert rep.robust_accuracy == rep.clean_accuracy == float(np.mean(y * net.forward(X) > 0))


def test_pgd_at_least_as_strong_as_fgm_on_a_linear_direction():
    """On f(x) = <w, x> (one neuron, zero bias, inputs inside the linear region) the exact
    worst case is known: margin - tau |w|_* ; FGM and PGD both reach it."""
    w = np.array([[0.6, -0.8, 0.0]])
    net = TwoLayerNet(w, ModelConfig(bias="fixed", bias_value=0.0))
    X = np.array([[2.0, 0.0, 1.0], [0.0, -3.0, 0.0]])
    y = np.array([1.0, 1.0])
    for norm, dual in (("l2", 1.0), ("linf", 1.4)):
        tau = 0.5
        exact = y * (X @ w[0]) - tau * dual
        np.testing.assert_allclose(attacks.fgm(net, X, y, tau, norm).margin, exact, atol=1e-12)
        np.testing.assert_allclose(attacks.pgd(net, X, y, tau, norm, steps=10, restarts=2).margin, exact, atol=1e-12)


def test_bad_arguments_are_named():
    net = TwoLayerNet(np.ones((1, 2)), ModelConfig(bias="fixed"))
    with pytest.raises(ValueError, match="norm='l1'"):
        attacks.fgm(net, np.zeros((1, 2)), np.ones(1), 0.1, "l1")
    with pytest.raises(ValueError, match=r"tau=-1"):
        attacks.fgm(net, np.zeros((1, 2)), np.ones(1), -1, "l2")


@settings(max_examples=25, deadline=None)
@given(problems())
def test_pgd_through_the_gram_matrix_equals_pgd(prob):
    """TwoLayerNet.pgd_margins (l2 PGD on the pre-activations, through W W^T) gives the
    margins of attacks.pgd with the same starts, schedule and restarts."""
    net, X, y, _, tau, _ = prob
    ref = attacks.pgd(net, X, y, tau, "l2", steps=6, restarts=3, rng=np.random.default_rng(5)).margin
    got = net.pgd_margins(X, y, tau, steps=6, restarts=3, rng=np.random.default_rng(5))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_attacks_work_in_the_precision_of_the_points():
    rng = np.random.default_rng(0)
    net = TwoLayerNet(rng.standard_normal((20, 12)).astype(np.float32), ModelConfig(beta=0.1))
    X = rng.standard_normal((30, 12)).astype(np.float32)
    y = np.sign(rng.standard_normal(30))
    for norm, tau in (("l2", 0.5), ("linf", 0.1)):
        for r in (attacks.fgm(net, X, y, tau, norm), attacks.pgd(net, X, y, tau, norm, steps=5, restarts=2)):
            assert r.x_adv.dtype == np.float32
            assert np.all(dist(r.x_adv.astype(np.float64), X, norm) <= tau * (1 + 1e-5))
            r64 = attacks.fgm(net.astype(np.float64), X.astype(np.float64), y, tau, norm)
            assert r64.x_adv.dtype == np.float64


class _Plain:
    """The network seen only through forward / output_gradient (no fast paths)."""

    def __init__(self, net):
        self.forward, self.output_gradient = net.forward, net.output_gradient


def test_robust_report_equals_the_generic_attacks():
    """evaluate_robustness takes the W W^T path for PGD (l2, width <= n); the report equals
    the one of the generic attacks on the same model."""
    rng = np.random.default_rng(3)
    net = TwoLayerNet(rng.standard_normal((16, 10)), ModelConfig(bias="fixed", bias_value=0.3))
    X = rng.standard_normal((200, 10))
    y = np.sign(net.forward(X))
    fast = attacks._pgd_for_report(net, X, y, 0.4, "l2", 7, 3, np.random.default_rng(1))
    assert fast.x_adv is None
    ref = attacks.pgd(net, X, y, 0.4, "l2", 7, 3, rng=np.random.default_rng(1))
    np.testing.assert_allclose(fast.margin, ref.margin, rtol=1e-9, atol=1e-9)
    for norm, tau in (("l2", 0.4), ("linf", 0.15)):
        a = attacks.evaluate_robustness(net, X, y, tau, norm, pgd_steps=7, pgd_restarts=3, random_draws=3)
        b = attacks.evaluate_robustness(_Plain(net), X, y, tau, norm, pgd_steps=7, pgd_restarts=3, random_draws=3)
        assert a.per_attack == b.per_attack and np.array_equal(a.broken, b.broken)
        assert 0 < a.robust_accuracy < 1


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_random_starts_by_blocks_are_the_starts_drawn_at_once(norm):
    n, d, tau = 700, 9, 0.3
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    starts = attacks.RandomStarts(rng_a, 3, True, n, d, norm, tau)
    for r in range(3):
        got = np.concatenate([starts.block(r, np.empty((min(n, lo + 97) - lo, d))) for lo in range(0, n, 97)])
        want = np.zeros((n, d)) if r == 0 else attacks.random_in_ball(rng_b, (n, d), norm, tau)
        np.testing.assert_array_equal(got, want)
    assert rng_a.random() == rng_b.random()  # rng left where drawing them at once leaves it


@settings(max_examples=20, deadline=None)
@given(problems(), st.integers(1, 15))
def test_pgd_by_blocks_equals_pgd_at_once(prob, rows):
    net, X, y, norm, tau, _ = prob
    a = attacks.pgd(net, X, y, tau, norm, steps=5, restarts=3, rng=np.random.default_rng(2), block_rows=rows)
    b = attacks.pgd(net, X, y, tau, norm, steps=5, restarts=3, rng=np.random.default_rng(2), block_rows=len(X))
    np.testing.assert_allclose(a.margin, b.margin, rtol=1e-10, atol=1e-10)
    assert np.all(dist(a.x_adv, X, norm) <= tau * (1 + 1e-9) + 1e-12)


def test_pgd_step_schedule():
    """2.5 tau / steps (Madry et al.), halved at 50 % and again at 75 % of the steps; one
    schedule for pgd and the W W^T route."""
    a = attacks.pgd_step_sizes(0.4, 8)
    assert a == pytest.approx([0.125] * 4 + [0.0625] * 2 + [0.03125] * 2)
    assert attacks.pgd_step_sizes(1.0, 4, step_size=0.1) == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert len(attacks.pgd_step_sizes(0.25, 50)) == 50
