"""C6 scaling: the window logic, the exact linear bound, and a tiny end-to-end run."""
import numpy as np

from sim.model.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from sim.experiments.scaling import ScalingConfig, linear_robust, scaling_claims, scaling_rows
from sim.experiments.verify import VerifyConfig


def _rows(widths):
    return [{"d": d, "k_mode": mode, "window": w} for mode in ("fixed", "power") for d, w in zip((64, 128, 256), widths)]


def test_window_claim_logic():
    assert all(c.holds for c in scaling_claims(_rows([0.0, 0.1, 0.2])))
    assert not any(c.holds for c in scaling_claims(_rows([0.2, 0.1, 0.3])))
    assert not any(c.holds for c in scaling_claims(_rows([0.0, 0.0, 0.0])))


def test_linear_robust_is_the_exact_worst_case():
    rng = np.random.default_rng(0)
    X, v = rng.standard_normal((200, 5)), rng.standard_normal(5)
    y = np.sign(X @ v)
    for tau in (0.0, 0.3, 1.0):
        worst = X - tau * y[:, None] * v / np.linalg.norm(v)  # the minimiser of y<v, x + delta> on the ball
        assert linear_robust(X, y, v, tau) == np.mean(y * (worst @ v) > 0)


def test_tiny_scaling_run():
    vc = VerifyConfig(run=RunConfig(DataConfig(d=32, k=2.0, n_train=600, n_test=300), ModelConfig(init_scale=1e-3),
                                    TrainConfig(lr=1.0, steps=40)), adv_steps=20, adv_batch=600, n_eval=100,
                      lower_bound=False)
    rows = scaling_rows(vc, ScalingConfig(ds=(16, 32), radii=(0.1, 0.5), n_eval=100), quiet=True)
    assert [(r["d"], r["k_mode"]) for r in rows] == [(16, "fixed"), (16, "power"), (32, "fixed"), (32, "power")]
    for r in rows:
        assert r["window"] >= 0 and len(r["curve"]) == 2
        for c in r["curve"]:
            assert 0 <= c["adv_net"] <= 1 and 0 <= c["clean_net"] <= 1
