"""The strategies experiment (sim.experiments.strategies): FGM-RS perturbations, the update-shape
measures on planted updates, reproducibility bit for bit, resuming, claims and CLI."""
import json

import numpy as np
import pytest

from sim.cli import main
from sim.experiments import strategies as S
from sim.model.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from sim.model.network import TwoLayerNet
from sim.train.adversarial import make_perturb

TINY = S.StrategiesConfig(
    run=RunConfig(DataConfig(d=16, k=2.0, n_train=300, n_test=200), ModelConfig(init_scale=1e-3),
                  TrainConfig(lr=1.0, steps=40)),
    tau=0.3, strategies=("fgm", "fgm_rs", "pgd3"), adv_batch=150, adv_beta_ramp=10, max_steps=24, check_every=4,
    min_steps=10, lowrank_max_steps=None,
    n_check=50, n_eval=50, pgd_steps=5, pgd_restarts=1, ranks=(2,))


@pytest.mark.parametrize("norm,tau", [("l2", 0.3), ("linf", 0.05)])
def test_fgm_rs_stays_in_the_ball_is_seeded_and_differs_from_fgm(norm, tau):
    rng = np.random.default_rng(0)
    cfg = DataConfig(d=10, k=2.0)
    net = TwoLayerNet(rng.standard_normal((20, 10)) * 0.3, ModelConfig(beta=0.1))
    X, y = rng.standard_normal((50, 10)), np.where(rng.random(50) < 0.5, -1.0, 1.0)
    p = make_perturb("fgm_rs", tau, norm, cfg)
    a, b, c = p(net, X, y, 3), p(net, X, y, 3), p(net, X, y, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    delta = a - X
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= tau * (1 + 1e-9)
    assert size.min() > 0.5 * tau  # the step of 1.25 tau from inside the ball reaches far out
    fgm = make_perturb("fgm", tau, norm, cfg)(net, X, y, 3)
    assert np.abs(fgm - a).max() > 1e-3
    # the step ascends the margin loss on average: the margin drops below that of the start
    margin = lambda Z: y * net.forward(Z)  # noqa: E731
    start = X + S.attacks.random_in_ball(np.random.default_rng(0), X.shape, norm, tau)
    assert margin(a).mean() < margin(start).mean()
    with pytest.raises(ValueError, match="rs_step"):
        make_perturb("fgm_rs", tau, norm, cfg, rs_step=0.0)


def test_update_shape_on_planted_updates():
    """A rank-1 update along M w* has all its energy in one direction, |cos| 1; the
    dictionary-basis spectrum equals the plain one for an orthogonal M; a Gaussian update
    spreads its energy."""
    rng = np.random.default_rng(1)
    d, m = 16, 32
    M, _ = np.linalg.qr(rng.standard_normal((d, d)))
    wstar = np.where(rng.random(d) < 0.5, -1.0, 1.0)
    W0 = rng.standard_normal((m, d))
    a = rng.standard_normal(m)
    sh = S.update_shape(W0, W0 + np.outer(a, M @ wstar), M, wstar)
    assert sh["energy_top"]["1"] == pytest.approx(1.0)
    assert sh["cos_top_right"] == pytest.approx(1.0)
    assert sh["cos_top_right_dict"] == pytest.approx(1.0)
    assert sh["along_wstar_share"] == pytest.approx(1.0)
    # removing each neuron's own component along M w* is "against the clean weights"
    v = M @ wstar / np.linalg.norm(M @ wstar)
    purify = S.update_shape(W0, W0 - 0.5 * np.outer(W0 @ v, v), M, wstar)
    assert purify["against_clean_share"] == pytest.approx(1.0)
    assert S.update_shape(W0, W0 + 0.5 * np.outer(W0 @ v, v), M, wstar)["against_clean_share"] == 0.0
    np.testing.assert_allclose(sh["singular_values"], sh["singular_values_dict"], rtol=1e-10, atol=1e-10)
    noise = S.update_shape(W0, W0 + rng.standard_normal((m, d)), M, wstar)
    assert noise["energy_top"]["1"] < 0.3 and noise["energy_top"]["4"] < 0.6
    assert noise["cos_top_right"] < 0.9


def test_margin_classes_reach_and_grad_evals():
    np.testing.assert_array_equal(S.margin_class(np.array([0.5, 1.0, 1.99, 2.0, 3.0, 7.0])),
                                  ["<1", "1", "1", "2", ">=3", ">=3"])
    curve = [{"step": 0, "value": 0.1, "seconds": 0.0}, {"step": 10, "value": 0.5, "seconds": 1.0},
             {"step": 20, "value": 0.9, "seconds": 2.0}]
    assert S.reach(curve, 0.5, 4) == {"step": 10, "grad_evals": 40, "seconds": 1.0}
    assert S.reach(curve, 0.95, 4)["step"] is None
    assert [S.grad_evals_per_step(k) for k in ("fgm", "fgm_rs", "pgd3", "pgd10", "random")] == [2, 2, 4, 11, 1]


def test_config_is_validated():
    with pytest.raises(ConfigError, match="strategies"):
        TINY.replace(strategies=("fgm_rs", "pgd3"))  # no FGM reference
    with pytest.raises(ConfigError, match="strategies"):
        TINY.replace(strategies=("fgm", "pgd0"))
    with pytest.raises(ConfigError, match="ranks"):
        TINY.replace(ranks=(1, 17))  # > min(m, d) = 16
    with pytest.raises(ConfigError, match="lowrank_methods"):
        TINY.replace(lowrank_methods=("adam",))
    with pytest.raises(ConfigError, match="n_check"):
        TINY.replace(n_check=151)  # n_eval + n_check > n_test
    assert S.config_with_sets(TINY, ["run.data.d=12", "max_steps=30"]).run.data.d == 12
    with pytest.raises(ConfigError, match="unknown parameter"):
        S.config_with_sets(TINY, ["nope=1"])


def _summary(robust, smallest, energy, control_energy):
    row = {"certified_acc": None, "robust_acc": robust, "converged": True, "steps": 100,
           "reach": {"step": 10, "grad_evals": 40, "seconds": 1.0}}
    return {"reach_level_cheap": 0.8, "full_gain": 0.5,
            "strategies": {"fgm": {**row, "energy_top": {"2": energy}, "cos_top_right": 0.9},
                           "fgm_rs": {**row, "reach": {"step": 20, "grad_evals": 40, "seconds": 2.0}},
                           "pgd3": row},
            "control": {"energy_top": {"2": control_energy}},
            "ranks": {"scaled": {"4": {"gain_share": 0.95, "converged": True}}},
            "smallest_rank_reaching": {"scaled": smallest}}


def test_claims_read_their_thresholds_from_the_table():
    from sim.claims import CLAIMS

    t_robust, t_rank, t_energy = (CLAIMS[k].threshold for k in ("C7-robust", "C8-rank", "C8-spectrum"))
    got = {c["id"]: c for c in S.claims(_summary(t_robust, int(t_rank), t_energy, t_energy - 0.1), TINY)}
    assert set(got) == {"C7-robust-fgm_rs", "C7-robust-pgd3", "C7-steps-pgd3", "C8-spectrum", "C8-rank"}
    assert all(c["holds"] for c in got.values())
    assert got["C7-steps-pgd3"]["value"] == 0.5
    for c in got.values():
        assert c["threshold"] == CLAIMS[c["id"].rsplit("-", 1)[0] if c["id"].startswith("C7") else c["id"]].text
    eps = 1e-9
    bad = {c["id"]: c["holds"] for c in S.claims(_summary(t_robust - eps, int(t_rank) + 1, t_energy, t_energy), TINY)}
    assert bad == {"C7-robust-fgm_rs": False, "C7-robust-pgd3": False, "C7-steps-pgd3": True,
                   "C8-spectrum": False, "C8-rank": False}  # the control as concentrated as FGM: no C8-spectrum
    assert not {c["id"]: c["holds"] for c in S.claims(_summary(1.0, None, 1.0, 0.0), TINY)}["C8-rank"]


def _weights(out):
    return {p.name: dict(np.load(p)) for p in sorted((out / "pieces").glob("*.npz"))}


def test_experiment_is_reproducible_bit_for_bit_and_resumes(tmp_path, monkeypatch):
    """Same config twice -> identical weights of every strategy, the control and every rank;
    the JSON carries C7 and C8 and the figures are written with sidecars; a rerun of a
    finished directory trains nothing."""
    doc = S.run_strategies(TINY, tmp_path / "a", quiet=True, command="test")
    S.run_strategies(TINY.replace(certify=False), tmp_path / "b", quiet=True)  # the weights do not depend on it
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert set(wa) == {"clean.npz", "clean_eval.npz", "strategy_fgm.npz", "strategy_fgm_rs.npz", "strategy_pgd3.npz",
                       "control_random.npz", "lowrank_r2.npz", "lowrank_scaled_r2.npz"}
    for name in wa:
        for key in wa[name]:
            np.testing.assert_array_equal(wa[name][key], wb[name][key], err_msg=f"{name}:{key}")
    assert not np.array_equal(wa["strategy_fgm.npz"]["W"], wa["strategy_pgd3.npz"]["W"])
    ids = [c["id"] for c in doc["claims"]]
    assert {"C7-robust-fgm_rs", "C7-robust-pgd3", "C7-steps-pgd3", "C8-spectrum", "C8-rank", "C8-rank-gd"} <= set(ids)
    assert doc["lowrank"]["scaled"]["2"]["method"] == "scaled" and doc["lowrank"]["gd"]["2"]["method"] == "gd"
    for r in doc["strategies"].values():
        assert r["curve"][0]["step"] == 0 and r["steps"] <= TINY.max_steps
        assert set(r["final"]["by_margin"]) <= set(S.MARGIN_CLASSES)
        assert sum(v["n"] for v in r["final"]["by_margin"].values()) == TINY.n_eval
    assert doc["control_random"]["steps"] == doc["strategies"]["fgm"]["steps"]
    for stem in ("strategies_robust_vs_compute", "strategies_update_spectrum", "strategies_robust_vs_rank"):
        side = json.loads((tmp_path / "a" / "figures" / f"{stem}.json").read_text())
        assert side["command"] == "test" and "commit" in side["commit"] and side["claims"] == doc["claims"]
        assert (tmp_path / "a" / "figures" / f"{stem}.png").stat().st_size > 1000

    def refuse(*a, **k):
        raise AssertionError("a finished piece was trained again")

    monkeypatch.setattr(S, "train_adversarial", refuse)
    monkeypatch.setattr("sim.train.clean.train_clean", refuse)
    again = S.run_strategies(TINY, tmp_path / "a", quiet=True)
    assert again["summary"] == json.loads(json.dumps(doc["summary"]))


@pytest.mark.heavy
def test_raising_the_cap_resumes_to_the_uninterrupted_result(tmp_path):
    """Pieces stopped by a cap of 16 steps, rerun with 24: the weights of a direct 24-step
    run (the low-rank runs, whose step follows the FGM update, are redone when it moved)."""
    S.run_strategies(TINY, tmp_path / "a", quiet=True)
    S.run_strategies(TINY.replace(max_steps=16), tmp_path / "c", quiet=True)
    doc = S.run_strategies(TINY, tmp_path / "c", quiet=True)
    wa, wc = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    for name in wa:
        for key in wa[name]:
            np.testing.assert_array_equal(wa[name][key], wc[name][key], err_msg=f"resumed {name}:{key}")
    assert any(r.get("resumed_from") == 16 for r in doc["strategies"].values())


def test_cli_rejects_bad_values_with_exit_2(tmp_path, capsys):
    assert main(["experiments", "strategies", "--quick", "--set", "tau=-1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tau=-1" in err and "allowed" in err
