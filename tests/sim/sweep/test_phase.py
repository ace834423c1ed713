"""The C6 phase diagram (sim.sweep.phase): the per-atom polynomial rows of the sweep job, the
crossings and the two windows computed from known curves, the figure and its sidecar, the
phase spec, and the sweep's --order."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sim.common.validation import ConfigError
from sim.sweep import CellConfig, load_spec, run_sweep
from sim.sweep.analysis import Results
from sim.sweep.phase import crossings, margin_windows, phase_windows

from .test_sweep import ROOT, TINY, spec_file

PHASE_TINY = TINY.replace('radii = [0.5, 1.0, 2.0]', 'radii = [0.25, 0.5, 1.0, 2.0]\natom_degrees = [3, 5]')


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phase")
    spec = load_spec(spec_file(tmp, PHASE_TINY, "tiny_phase.toml"))
    run_sweep(spec, tmp / "out", workers=0, threads=1, quiet=True, order="shortest")
    return spec, tmp / "out"


def test_atom_rows_are_attacked_and_certified_soundly(phase_run):
    from sim.sweep.analysis import load

    _, out = phase_run
    res = load(out)
    for g in res.groups:
        for P in (3, 5):
            att = res.by_tau(g, f"atom_poly{P}", "robust_acc", "l2")
            cert = res.by_tau(g, f"atom_poly{P}", "certified_acc", "l2")
            assert len(att) == 4 and set(att) == set(cert)
            for t in att:  # a certificate is a lower bound on what the attacks leave standing
                assert all(c <= a + 1e-12 for c, a in zip(cert[t], att[t]))
            assert any(res.get(g, f"atom_poly{P}", f"{m}:{tag}", "l2") for tag in ("m1", "m2", "m3+")
                       for m in ("robust_acc", "certified_acc"))


def _synthetic(curves: dict, clean_acc=1.0, converged=1.0, retried=None, adv_clean_acc=1.0, diverged=None,
               margins: dict | None = None) -> Results:
    rows = []

    def row(model, metric, value, norm="l2", tau=math.nan):
        rows.append({"sweep": "syn", "label": "k = 4", "cell": "c1", "group": "g1", "seed": 0, "model": model,
                     "metric": metric, "norm": norm, "tau": tau, "value": value, "run.data.d": 256,
                     "run.data.k": 4.0, "tau_l2": 0.25})
    row("clean_net", "clean_acc", clean_acc, "", 0.0)
    row("adv_net", "clean_acc", adv_clean_acc, "l2", 0.0)
    row("adv_net", "adv_converged", converged)
    if diverged is not None:  # cells run before the record existed have no adv_diverged row
        row("adv_net", "adv_diverged", diverged)
    row("adv_net", "adv_steps", 500.0)
    if retried is not None:  # cells run before the retry existed have no adv_retried row
        row("adv_net", "adv_retried", retried)
    for model, curve in curves.items():
        for t, v in curve.items():
            row(model, "robust_acc", v, "l2", t)
    for tag, mcurves in (margins or {}).items():  # {"m2": {model: curve}}: rows robust_acc:m2
        row("eval_set", f"n_eval:{tag}", 50.0, "")
        for model, curve in mcurves.items():
            for t, v in curve.items():
                row(model, f"robust_acc:{tag}", v, "l2", t)
    return Results(rows)


CURVES = {"clean_net": {0.1: 0.5, 0.2: 0.05, 0.3: 0.0, 0.4: 0.0},
          "linear_bayes": {0.1: 0.3, 0.2: 0.08, 0.3: 0.0, 0.4: 0.0},
          "adv_net": {0.1: 1.0, 0.2: 0.95, 0.3: 0.92, 0.4: 0.5},
          "atom_poly3": {0.1: 1.0, 0.2: 0.6, 0.3: 0.1, 0.4: 0.0}}


def test_windows_from_known_curves():
    (w,) = phase_windows(_synthetic(CURVES), "l2")
    assert (w["tau_C1"], w["tau_lin"], w["tau_low"], w["tau_high"]) == (0.2, 0.2, 0.2, 0.3)
    assert w["width"] == pytest.approx(0.1) and w["converged"] is True and w["d"] == 256 and w["k"] == 4.0
    assert w["retried"] is False and phase_windows(_synthetic(CURVES, retried=1.0), "l2")[0]["retried"] is True
    assert w["tau_poly"] == 0.3 and w["width_with_poly"] == 0.0  # the polynomial holds to 0.3: no window
    held = dict(CURVES, atom_poly3={0.1: 0.1, 0.2: 0.0, 0.3: 0.0, 0.4: 0.0})
    (w2,) = phase_windows(_synthetic(held), "l2")
    assert w2["tau_poly"] == 0.1 and w2["width_with_poly"] == pytest.approx(0.1)
    (w3,) = phase_windows(_synthetic(CURVES, clean_acc=0.95, converged=0.0), "l2")  # C1 needs clean acc >= 0.99
    assert w3["tau_C1"] == math.inf and w3["width"] == 0.0 and w3["converged"] is False
    # without C1 the window runs from the linear models' edge; it does not need the clean network
    assert w3["width_without_C1"] == pytest.approx(0.1) and w["tau_high_censored"] is False
    slow_clean = dict(CURVES, clean_net={0.1: 1.0, 0.2: 0.9, 0.3: 0.5, 0.4: 0.2})  # C1 never holds
    (w4,) = phase_windows(_synthetic(slow_clean), "l2")
    assert w4["width"] == 0.0 and w4["width_without_C1"] == pytest.approx(0.1)
    strong = dict(CURVES, adv_net={0.1: 1.0, 0.2: 1.0, 0.3: 0.99, 0.4: 0.95})  # holds at the largest radius
    (w5,) = phase_windows(_synthetic(strong), "l2")
    assert w5["tau_high"] == 0.4 and w5["tau_high_censored"] is True and w5["width"] == pytest.approx(0.2)


def test_margin_windows_from_known_curves():
    """Each margin class gets the window of its own points; a class whose linear rows are missing
    (a cell written before linear_rows had them) is left out, not judged on partial curves."""
    lin = {m: {0.1: 0.0, 0.2: 0.0, 0.3: 0.0, 0.4: 0.0} for m in ("linear_clean", "linear_best_robust")}
    m2 = {"clean_net": {0.1: 0.05, 0.2: 0.0, 0.3: 0.0, 0.4: 0.0}, "adv_net": {0.1: 1.0, 0.2: 0.95, 0.3: 0.5, 0.4: 0.1},
          "linear_bayes": {0.1: 0.0, 0.2: 0.0, 0.3: 0.0, 0.4: 0.0}, **lin}
    m4 = {"clean_net": {0.1: 0.9, 0.2: 0.5, 0.3: 0.1, 0.4: 0.0}, "adv_net": {0.1: 1.0, 0.2: 1.0, 0.3: 1.0, 0.4: 0.99},
          "linear_bayes": {0.1: 0.8, 0.2: 0.0, 0.3: 0.0, 0.4: 0.0}, **lin}
    res = _synthetic(CURVES, margins={"m2": m2, "m3+": m4})
    w2, w4 = margin_windows(res, "l2")
    assert (w2["margin"], w2["tau_C1"], w2["tau_lin"], w2["tau_high"]) == ("2", 0.1, 0.1, 0.2)
    assert w2["width"] == pytest.approx(0.1) and w2["tau_high_censored"] is False and w2["n_eval"] == 50
    assert (w4["margin"], w4["tau_low"], w4["tau_high"]) == (">=3", 0.3, 0.4) and w4["tau_high_censored"] is True
    assert w4["width"] == pytest.approx(0.1) and w4["width_without_C1"] == pytest.approx(0.2)
    (w,) = phase_windows(res, "l2")  # the cell's window mixes the classes: C1 from the margin-4 points
    assert w["tau_C1"] == 0.2
    no_lin = {"m2": {k: v for k, v in m2.items() if k != "linear_bayes"}}
    assert margin_windows(_synthetic(CURVES, margins=no_lin), "l2") == []
    # the clean-accuracy gates are the cell's: C1 needs the clean net's clean accuracy >= 0.99
    assert all(x["tau_C1"] == math.inf for x in margin_windows(_synthetic(CURVES, clean_acc=0.95,
                                                                          margins={"m2": m2}), "l2"))


def test_crossings_from_known_curves():
    (c,) = crossings(_synthetic(CURVES), "l2")
    adv = c["radii"]["adv_net"]
    assert adv["r90"] == pytest.approx(math.exp(math.log(0.3) + (0.92 - 0.9) / (0.92 - 0.5)
                                                                  * (math.log(0.4) - math.log(0.3))))
    assert adv["r10"] == math.inf  # never below 10 % within the radii
    assert c["radii"]["clean_net"]["r50"] == pytest.approx(0.1)  # 0.5 at 0.1 is not below 50 %; 0.05 at 0.2 is
    assert c["radii"]["best_linear"]["r90"] == 0.1  # starts below 90 %: the smallest radius


def test_plot_writes_the_phase_figure_with_windows(phase_run, tmp_path):
    from sim.sweep.plot import plot_results

    spec, out = phase_run
    written = {p.name for p in plot_results(out, tmp_path, command="python -m sim plot OUT")}
    assert {"tiny_l2.png", "tiny_l2.svg", "tiny_l2.json"} <= written
    side = json.loads((tmp_path / "tiny_l2.json").read_text())
    assert side["command"] == "python -m sim plot OUT" and side["commit"]
    assert len(side["windows"]) == len(spec.points)  # a cell in two series (d = 16) is in both
    for w in side["windows"]:
        assert {"d", "k", "seed", "tau_low", "tau_high", "width", "converged", "width_with_poly", "width_without_C1",
                "tau_high_censored"} <= set(w)
        assert w["width_with_poly"] <= w["width"] + 1e-12
    assert {"atom_poly3", "atom_poly5", "ideal_net", "adv_net", "clean_net", "best_linear"} <= \
        set(side["crossings"][0]["radii"])
    assert side["margin_windows"] and {w["margin"] for w in side["margin_windows"]} <= {"1", "2", ">=3"}
    assert all({"d", "k", "seed", "margin", "tau_low", "tau_high", "width", "n_eval"} <= set(w)
               for w in side["margin_windows"])


def test_linear_margin_rows_split_the_exact_accuracy(phase_run):
    """linear_rows' margin rows are the exact robust accuracy on each class's points (checked here
    against y (<w, x> + c) > tau ||w||_2 computed directly), and the class counts weight them back
    to the overall row."""
    from sim.model.data import MARGIN_TAGS, Problem, margin_classes
    from sim.sweep.job import linear_rows

    spec, _ = phase_run
    cfg = spec.points[0].config
    prob = Problem.from_config(cfg.run.data)
    train, test = prob.train_set(), prob.test_set()
    taus = [0.1, 0.3]
    rows = linear_rows(train, test, prob.wstar, prob.bayes_direction, taus, "l2")
    cls = margin_classes(test.z, prob.wstar)
    w = np.asarray(prob.bayes_direction, np.float64)
    for t in taus:
        ok = test.y * (np.asarray(test.x, np.float64) @ w) > t * np.linalg.norm(w)
        for i, tag in enumerate(MARGIN_TAGS):
            got = [r["value"] for r in rows if r["model"] == "linear_bayes" and r["metric"] == f"robust_acc:{tag}"
                   and r["tau"] == t]
            assert got == ([pytest.approx(ok[cls == i].mean(), abs=1e-15)] if np.any(cls == i) else [])
        for m in ("linear_clean", "linear_bayes", "linear_best_robust"):
            val = {r["metric"]: r["value"] for r in rows if r["model"] == m and r["tau"] == t}
            split = sum(val.get(f"robust_acc:{tag}", 0.0) * np.sum(cls == i) for i, tag in enumerate(MARGIN_TAGS))
            assert split / len(cls) == pytest.approx(val["robust_acc"], abs=1e-12)


def test_linear_margin_rows_are_added_to_old_cells(phase_run, tmp_path):
    """add_linear_margin_rows gives cells written without the linear margin rows exactly the rows
    a fresh run writes, after checking that their stored linear rows are reproduced; a cell whose
    stored rows differ is reported and left as it was."""
    import shutil

    from sim.sweep.job import add_linear_margin_rows
    from sim.sweep.store import cell_dir, read_result

    spec, out = phase_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    hashes = list(dict.fromkeys(p.hash for p in spec.points))
    fresh = {h: read_result(out, h)["rows"] for h in hashes}

    def is_lin_margin(r):
        return r["model"].startswith("linear_") and ":" in r["metric"]
    assert all(any(is_lin_margin(r) for r in rows) for rows in fresh.values())
    for h in hashes:  # make them old cells: no linear margin rows; one with a tampered linear row
        doc = read_result(old, h)
        doc["rows"] = [r for r in doc["rows"] if not is_lin_margin(r)]
        if h == hashes[0]:
            next(r for r in doc["rows"] if r["model"] == "linear_clean" and r["metric"] == "robust_acc")["value"] += 0.01
        (cell_dir(old, h) / "result.json").write_text(json.dumps(doc))
    report = add_linear_margin_rows(old, spec)
    assert list(report["mismatch"]) == [hashes[0]] and sorted(report["added"]) == sorted(hashes[1:])
    assert not any(is_lin_margin(r) for r in read_result(old, hashes[0])["rows"])
    for h in hashes[1:]:
        doc = read_result(old, h)
        assert sorted(map(json.dumps, doc["rows"])) == sorted(map(json.dumps, fresh[h])) and doc["amended"]
    again = add_linear_margin_rows(old, spec)
    assert sorted(again["present"]) == sorted(hashes[1:]) and not again["added"]


def test_atom_degrees_and_order_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"atom_degrees\[\]=4 .*odd integers >= 3"):
        CellConfig(atom_degrees=(4,))
    spec = load_spec(spec_file(tmp_path))
    with pytest.raises(ConfigError, match="order"):
        run_sweep(spec, tmp_path / "o", workers=0, quiet=True, order="random")


def test_phase_spec_is_valid():
    spec = load_spec(ROOT / "sweeps" / "phase.toml")
    cfgs = [p.config for p in spec.points]
    assert sorted({c.run.data.d for c in cfgs}) == [256, 512, 1024, 2048]
    assert len({p.seed for p in spec.points}) >= 2
    assert all(c.adv_plateau and c.run.data.sparsity == "exact" and c.atom_degrees for c in cfgs)
    assert Path(ROOT / "sweeps" / "phase.toml").read_text().count("--order shortest") >= 1
    # the spec's reason for its bias: the ideal network of that bias holds the training radius
    # through the inactive atoms (tau < 2 beta sqrt(a)), for every cell's number of atoms a
    assert all(c.tau_l2 < 2 * c.adv_beta * math.sqrt(round(c.run.data.k)) for c in cfgs)
    old = load_spec(ROOT / "sweeps" / "phase_beta02.toml")  # the first run, kept as the record
    assert {p.hash for p in old.points}.isdisjoint(p.hash for p in spec.points)


def test_divergence_is_read_from_the_cells_record():
    """A dead network is the training record's verdict (held-out clean accuracy at the run's end),
    one helper for the phase diagram and the claims map; cells without the record fall back to the
    same rule on the test clean accuracy."""
    def div(**kw):
        res = _synthetic(CURVES, **kw)
        return res.adv_diverged(res.groups[0], "l2"), crossings(res, "l2")[0]["diverged"]
    assert div(diverged=1.0) == (True, True)                       # recorded dead, test acc 1.0
    assert div(diverged=0.0, adv_clean_acc=0.85) == (False, False)  # the record decides
    assert div(adv_clean_acc=0.85) == (True, True)                  # no record: the test clean accuracy
    assert div(adv_clean_acc=0.95) == (False, False)
    (c,) = crossings(_synthetic(CURVES, diverged=1.0), "l2")
    assert c["converged"] is False
