"""The claims map of a sweep (sim.sweep.regime): C1-C4 judged per cell as verify judges them,
from known rows, and the figure and table written by `python -m sim plot`."""
import math

import pytest

from sim.sweep import load_spec, run_sweep
from sim.sweep.analysis import Results
from sim.sweep.regime import claims_map

from .test_sweep import spec_file

REGIME_TINY = """
[sweep]
name = "rtiny"
seeds = [0]
[base]
norms = ["l2"]
tau_l2 = 0.3
"run.data.d" = 16
"run.data.n_train" = 400
"run.data.n_test" = 1200
"run.model.init_scale" = 1e-3
"run.train.steps" = 30
adv_steps = 15
adv_batch = 200
adv_beta_ramp = 5
adv_holdout = 200
n_eval = 100
pgd_steps = 4
pgd_restarts = 1
radii = [1.0]
linear_models = false
[grid]
"run.model.beta" = [0.1, 0.2]
adv_beta = [0.2, 0.3]
[[cells]]
label = "exact k = 2"
"run.data.sparsity" = "exact"
"run.data.k" = 2.0
"""


def _rows(over=None):
    vals = {("clean_net", "clean_acc", "", 0.0): 1.0, ("clean_net", "robust_acc", "l2", 0.25): 0.05,
            ("clean_net", "dense_cos_mean", "", math.nan): 0.5, ("adv_net", "clean_acc", "l2", 0.0): 0.99,
            ("adv_net", "robust_acc", "l2", 0.25): 0.95, ("adv_net", "certified_acc", "l2", 0.25): 0.85,
            ("adv_net", "dense_cos_mean", "l2", math.nan): 0.05, ("adv_net", "purified_share", "l2", math.nan): 0.9,
            ("adv_net", "init_corr_clean", "l2", math.nan): 0.1, ("adv_net", "init_corr_adv", "l2", math.nan): 0.15,
            ("adv_net", "adv_converged", "l2", math.nan): 1.0, ("adv_net", "adv_steps", "l2", math.nan): 400.0}
    vals.update(over or {})
    return Results([{"sweep": "s", "label": "a", "cell": "c", "group": "g", "seed": 0, "model": m, "metric": k,
                     "norm": n, "tau": t, "value": v, "tau_l2": 0.25, "run.model.beta": 0.1}
                    for (m, k, n, t), v in vals.items()])


def test_verdicts_follow_the_claims_table():
    (r,) = claims_map(_rows(), "l2")
    assert r["C1"] and r["C2"] and r["C3"] and r["C4"] and r["all"] and r["converged"]
    assert r["align_ratio"] == pytest.approx(10.0) and r["init_corr"] == 0.15
    for key, value, claim in ((("clean_net", "robust_acc", "l2", 0.25), 0.11, "C1"),
                              (("clean_net", "clean_acc", "", 0.0), 0.98, "C1"),
                              (("clean_net", "dense_cos_mean", "", math.nan), 0.29, "C2"),
                              (("adv_net", "robust_acc", "l2", 0.25), 0.89, "C3"),
                              (("adv_net", "certified_acc", "l2", 0.25), 0.79, "C3"),
                              (("adv_net", "purified_share", "l2", math.nan), 0.79, "C4"),
                              (("adv_net", "init_corr_adv", "l2", math.nan), 0.21, "C4")):
        (r,) = claims_map(_rows({key: value}), "l2")
        assert not r[claim] and not r["all"], (key, value)
    (r,) = claims_map(_rows({("adv_net", "adv_converged", "l2", math.nan): 0.0}), "l2")
    assert not r["converged"]


def test_plot_writes_the_claims_map(tmp_path):
    from sim.sweep.plot import plot_results

    spec = load_spec(spec_file(tmp_path, REGIME_TINY, "rtiny.toml"))
    run_sweep(spec, tmp_path / "out", workers=0, quiet=True)
    names = {p.name for p in plot_results(tmp_path / "out", tmp_path / "fig")}
    assert {"rtiny_claims_map_l2.png", "rtiny_claims_map_l2.json", "rtiny_claims_map_l2.md"} <= names
    assert "rtiny_c6_window_l2.png" not in names  # no d axis: no C6 window
    md = (tmp_path / "fig" / "rtiny_claims_map_l2.md").read_text()
    assert md.count("| exact k = 2 |") == 4 and "cells have C1, C2, C3 and C4 together" in md
