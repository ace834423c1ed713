"""Margin classes and the ideal purified network (the reference of what is reachable)."""
import numpy as np
import pytest

from sim import attacks
from sim.certify import certify
from sim.model.config import DataConfig
from sim.model.data import MARGIN_CLASSES, Problem, margin_classes
from sim.model.network import ideal_network, ideal_radius


def test_margin_classes():
    wstar = np.array([1.0, -1.0, 1.0, 1.0])
    z = np.array([[1, 0, 0, 0], [1, -1, 0, 0], [1, -1, 1, 0], [1, -1, 1, 1], [1, 1, 0, 0], [0.6, 0, 0, 0]], float)
    assert MARGIN_CLASSES == ("1", "2", ">=3")
    np.testing.assert_array_equal(margin_classes(z, wstar), [0, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(margin_classes(-z, wstar), [0, 1, 2, 2, 0, 0])


@pytest.mark.parametrize("beta", [0.2, 0.3])
def test_ideal_network_holds_exactly_up_to_its_radius(beta):
    """Exact sparsity k = 3, no noise: every margin-1 point has 3 atoms, so the ideal network
    is certified at 0.95 (1 - beta) / sqrt(3) and broken beyond 1.05 (1 - beta) / sqrt(3) on
    every margin-1 point (by the attack along its atoms), while margin-3 points still hold."""
    cfg = DataConfig(d=64, k=3.0, sparsity="exact", noise=0.0, n_train=10, n_test=400, seed=1)
    p = Problem.from_config(cfg)
    te = p.test_set()
    net = ideal_network(p.M, p.wstar, beta)
    np.testing.assert_allclose(net.forward(te.x), (1 - beta) * (te.z @ p.wstar), atol=1e-9)
    cls = margin_classes(te.z, p.wstar)
    r = ideal_radius(beta, 3)
    assert r == pytest.approx((1 - beta) / np.sqrt(3))
    cert = certify(net, te.x, te.y, 0.95 * r, "l2")
    assert cert.certified_accuracy == 1.0
    # above the radius: the theory's attack (along the point's own atoms) breaks every margin-1 point
    tau = 1.05 * r
    delta = -te.y[:, None] * tau / np.sqrt(3) * ((te.z != 0) * p.wstar) @ p.M.T
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), tau)
    broken = te.y * net.forward(te.x + delta) <= 0
    assert broken[cls == 0].all() and not broken[cls == 2].any()
    # and a generic attack (PGD) finds it as well: the ideal net is not robust there
    rep = attacks.evaluate_robustness(net, te.x, te.y, tau, "l2", direction=p.bayes_direction, pgd_steps=20,
                                      pgd_restarts=1)
    assert np.all(rep.broken[cls == 0])
