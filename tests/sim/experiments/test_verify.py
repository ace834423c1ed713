"""`sim verify` end to end on a tiny problem: the files, the schema, the claims' logic."""
import json
import subprocess
import sys

import pytest

from sim.model.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from sim.experiments.verify import VerifyConfig, run_verify

TINY = VerifyConfig(run=RunConfig(DataConfig(d=32, k=2.0, n_train=800, n_test=400), ModelConfig(init_scale=1e-3),
                                  TrainConfig(lr=1.0, steps=80)),
                    tau_l2=0.3, tau_linf=0.05, adv_steps=40, adv_batch=800, adv_measure_every=20, n_eval=200,
                    pgd_steps=10, pgd_restarts=2, radii=(0.5, 1.0), lower_bound_scale=0.05)


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    return run_verify(TINY, out, quiet=True), out


def test_verify_writes_json_report_and_figures(tiny_doc):
    doc, out = tiny_doc
    on_disk = json.loads((out / "verify.json").read_text())
    assert set(on_disk) >= {"claims", "config", "versions"}
    for c in on_disk["claims"]:
        assert set(c) == {"id", "description", "value", "threshold", "holds"}
    ids = [c["id"] for c in on_disk["claims"]]
    assert "C1-clean" in ids and "C3-robust-l2" in ids and "C3-robust-linf" in ids
    for norm in ("l2", "linf"):
        assert {f"C5-linear-{norm}", f"C5-poly-deg3-{norm}", f"C5-poly-deg5-{norm}", f"C5-poly-deg7-{norm}",
                f"C5-ntk-{norm}"} <= set(ids)
    assert VerifyConfig.from_dict(on_disk["config"]) == TINY
    report = (out / "report.md").read_text()
    assert "| id |" in report and "C3-robust-l2" in report
    # the C5 table by class, robust accuracy as [certified, attacked] columns, for each threat model
    assert report.count("| class | model | training | n_train | clean acc | certified | attacked | kind |") == 2
    assert "C5-poly-deg5-l2" in report and "oracle_step" in report
    for name in ("robust_vs_radius.png", "measures_along_training.png", "weights_dictionary_basis.png"):
        assert (out / "figures" / name).stat().st_size > 1000


def test_claims_follow_their_numbers(tiny_doc):
    doc, _ = tiny_doc
    by_id = {c["id"]: c for c in doc["claims"]}
    tm = doc["results"]["threat_models"]["l2"]
    assert by_id["C3-robust-l2"]["value"] == tm["adv_net"]["robust_acc"]
    assert by_id["C3-robust-l2"]["holds"] == (tm["adv_net"]["robust_acc"] >= 0.90)
    assert by_id["C1-robust-l2"]["holds"] == (tm["clean_net"]["robust_acc"] <= 0.10)
    linear = [r["robust_acc"] for r in tm["lower_bound"] if r["class"] == "linear"]
    assert by_id["C5-linear-l2"]["value"] == max(linear)
    if tm["adv_net"]["robust_acc"] < 0.90:
        assert not any(c["holds"] for c in doc["claims"] if c["id"].startswith("C5-"))
    for net in ("clean_net", "adv_net"):
        r = tm[net]
        assert r["certified_acc"] <= r["robust_acc"]  # sound bound below the attack
        assert r["certified_but_attacked"] == 0
    assert by_id["C3-certified-l2"]["value"] == tm["adv_net"]["certified_acc"]
    for net in ("clean_net", "adv_net", "random_control_net"):
        r = tm[net]
        assert r["robust_acc"] <= r["clean_acc"]
        assert all(r["robust_acc"] <= v for v in r["per_attack"].values())


def test_random_noise_training_adds_no_robustness(tiny_doc):
    """The control: training on random points of the same radius leaves robust accuracy
    where clean training left it (within 10 points), unlike an attack-driven training."""
    doc, _ = tiny_doc
    for tm in doc["results"]["threat_models"].values():
        assert tm["random_control_net"]["robust_acc"] <= tm["clean_net"]["robust_acc"] + 0.10


def test_bad_verify_config_is_named():
    with pytest.raises(ConfigError, match="tau_l2=-0.1"):
        VerifyConfig(tau_l2=-0.1)
    with pytest.raises(ConfigError, match="n_eval=5000"):
        VerifyConfig(n_eval=5000)
    res = subprocess.run([sys.executable, "-m", "sim", "verify", "--set", "adv_kind=cw"], capture_output=True, text=True)
    assert res.returncode == 2 and "adv_kind='cw'" in res.stderr


def test_saved_networks_reload_to_the_same_outputs(tiny_doc):
    """weights_{norm}.npz rebuilds every network (W, bias state, model config): its clean
    accuracy on the attacked points is verify.json's, and masks_{norm}.npz holds the per-point
    outcomes behind the robust and certified accuracies."""
    import numpy as np

    from sim.experiments.verify import load_nets
    from sim.model.data import Problem
    from sim.train.clean import load_net

    doc, out = tiny_doc
    te = Problem.from_config(TINY.run.data).test_set()
    X, y = te.x[:TINY.n_eval], te.y[:TINY.n_eval]
    clean_w = load_net(out / "clean" / "weights.npz", TINY.run)
    for norm in TINY.norms:
        nets = load_nets(out / f"weights_{norm}.npz")
        assert set(nets) == {"clean", "adv", "control"}
        np.testing.assert_array_equal(nets["clean"].forward(X), clean_w.forward(X))
        tm = doc["results"]["threat_models"][norm]
        masks = np.load(out / f"masks_{norm}.npz")
        np.testing.assert_array_equal(masks["index"], np.arange(TINY.n_eval))
        for name, key in (("clean", "clean_net"), ("adv", "adv_net"), ("control", "random_control_net")):
            assert nets[name].accuracy(X, y) == tm[key]["clean_acc"]
            broken = masks[f"broken_{name}"]
            assert np.mean(~broken) == tm[key]["robust_acc"]
            assert np.all(y[~broken] * nets[name].forward(X[~broken]) > 0)  # unbroken points are classified right
            if "certified_acc" in tm[key]:
                cert = masks[f"certified_{name}"]
                assert np.mean(cert) == tm[key]["certified_acc"] and not np.any(cert & broken)
        assert nets["adv"].model.bias == "schedule" and nets["adv"].beta > TINY.run.model.beta


def test_verify_refuses_a_folder_holding_a_run(tiny_doc):
    doc, out = tiny_doc
    with pytest.raises(ConfigError, match="--resume"):
        run_verify(TINY, out, quiet=True)
    with pytest.raises(ConfigError, match="another config"):
        run_verify(TINY.replace(tau_l2=0.2), out, quiet=True, resume=True)


def test_verify_records_convergence_and_margin_classes(tiny_doc):
    """verify.json: adv_training / control_training per threat model and clean training's
    record, by_margin (attacked and certified) beside every robust accuracy, the ideal
    purified network, the readable C4 measures; the report shows them."""
    doc, out = tiny_doc
    res = json.loads((out / "verify.json").read_text())["results"]
    assert set(res["clean"]["training"]) >= {"steps", "converged", "curve", "criterion"}
    n_eval = TINY.n_eval
    assert sum(res["margin_classes"].values()) == n_eval
    for norm, tm in res["threat_models"].items():
        for key in ("adv_training", "control_training"):
            rec = tm[key]
            assert set(rec) >= {"steps", "converged", "curve", "criterion"}
            assert 1 <= rec["steps"] <= TINY.adv_steps and rec["curve"][-1]["step"] == rec["steps"]
        for key in ("clean_net", "adv_net", "random_control_net", "ideal_net"):
            bm = tm[key]["by_margin"]
            assert set(bm) == {"attacked", "certified"}
            for kind in ("attacked", "certified"):
                assert sum(c["n"] for c in bm[kind].values()) == n_eval
                # the classes' accuracies recombine into the overall one
                total = sum(c["acc"] * c["n"] for c in bm[kind].values() if c["n"])
                overall = tm[key]["robust_acc"] if kind == "attacked" else tm[key]["certified_acc"]
                assert abs(total / n_eval - overall) < 1e-9
        assert {"principal_kept_share", "purified_share_kept", "clean_top_atom_share_median"} <= set(tm["purification"])
    report = (out / "report.md").read_text()
    assert "By margin class" in report and "ideal purified network" in report and "C4 read per neuron" in report
    assert "converged" in report.lower() or "NOT CONVERGED" in report
    assert (out / "figures" / "convergence.png").stat().st_size > 1000


def test_plateau_fields_are_validated():
    with pytest.raises(ConfigError, match="adv_check_every"):
        TINY.replace(adv_check_every=0)
    with pytest.raises(ConfigError, match="adv_plateau_tol"):
        TINY.replace(adv_plateau_tol=-0.1)
    with pytest.raises(ConfigError, match="n_eval"):
        TINY.replace(n_eval=350)


def _strip_times(o):
    """The document without what depends on the wall clock (timings, time-limited exact checks)."""
    if isinstance(o, dict):
        return {k: _strip_times(v) for k, v in o.items()
                if "seconds" not in k and k not in ("timings", "gap_diagnosis", "versions")}
    if isinstance(o, list):
        return [_strip_times(v) for v in o]
    return o


def test_threat_models_side_by_side_give_the_numbers_of_one_process(tiny_doc, tmp_path):
    """The default runs l2 and l_inf in two worker processes; workers=1 runs them here, one
    after the other: the same claims, results and weights, bit for bit."""
    import numpy as np

    doc, out = tiny_doc
    one = run_verify(TINY, tmp_path / "one", quiet=True, workers=1)
    def text(d):
        return json.dumps(_strip_times(d), sort_keys=True, default=lambda a: np.asarray(a).tolist())
    assert text(one) == text(doc)
    for norm in ("l2", "linf"):
        with np.load(out / f"weights_{norm}.npz") as a, np.load(tmp_path / "one" / f"weights_{norm}.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
