"""sim.claims: one table of thresholds, read by verify, scaling and the sweep figures; the C6 window."""
import math

import pytest

from sim.claims import C5_KEYS, C5_POLY_DEGREES, CLAIMS, c6_window, judge


def test_the_table_is_well_formed():
    for key, c in CLAIMS.items():
        assert key == c.key and c.source in ("paper", "ours") and c.measured
        assert c.text.startswith(f"{c.comparator} {c.threshold_text}")
        assert math.isfinite(c.threshold)
    # C5: one claim per class, linear <= 0.10, every other class <= 0.20, all gated on the network (C3-robust)
    assert C5_KEYS == ("C5-linear", *(f"C5-poly-deg{p}" for p in C5_POLY_DEGREES), "C5-ntk")
    assert C5_POLY_DEGREES == (2, 3, 5, 7) and "C5-other" not in CLAIMS
    assert [CLAIMS[k].threshold for k in C5_KEYS] == [0.10] + [0.20] * (len(C5_KEYS) - 1)
    for k in C5_KEYS:
        assert CLAIMS[k].comparator == "<=" and CLAIMS[k].text.endswith(f"(network {CLAIMS['C3-robust'].text})")


@pytest.mark.parametrize("key", sorted(CLAIMS))
def test_holds_follows_the_comparator_at_the_threshold(key):
    c = CLAIMS[key]
    t, eps = c.threshold, 1e-9
    inside = {"<=": t - eps, ">=": t + eps, "==": t, ">": t + eps, "<": t - eps}[c.comparator]
    outside = {"<=": t + eps, ">=": t - eps, "==": t + 1, ">": t, "<": t}[c.comparator]
    assert c.holds(inside) and not c.holds(outside)
    claim = judge(key, "-l2", "desc", inside)
    assert claim.id == f"{key}-l2" and claim.threshold == c.text and claim.holds


def test_verify_and_the_figures_read_the_table():
    from sim.experiments.verify import threat_claims
    from sim.experiments.verify import VerifyConfig
    from sim.sweep.analysis import Thresholds

    th = Thresholds()
    assert (th.c1_robust, th.c3_robust, th.c3_clean) == (CLAIMS["C1-robust"].threshold, CLAIMS["C3-robust"].threshold,
                                                         CLAIMS["C3-clean"].threshold)
    net = {"robust_acc": 0.95, "clean_acc": 0.99, "masking_flag": False}
    tm = {"clean_net": {**net, "robust_acc": 0.05}, "adv_net": net, "random_control_net": {**net, "robust_acc": 0.1},
          "purification": {"purified_share": 0.9, "init_corr_clean": 0.1, "init_corr_adv": 0.1},
          "adv_dense": {"dense_cos_mean": 0.01}}
    claims = threat_claims("l2", 0.25, tm, {"dense_cos_mean": 0.5}, VerifyConfig())
    assert all(c.holds for c in claims) and {c.threshold for c in claims} <= {c.text for c in CLAIMS.values()}
    tm["adv_net"] = {**net, "robust_acc": 0.89}
    assert [c.id for c in threat_claims("l2", 0.25, tm, {"dense_cos_mean": 0.5}, VerifyConfig())
            if not c.holds] == ["C3-robust-l2"]


def test_c6_window():
    taus = [0.1, 0.2, 0.3, 0.4]
    clean = {0.1: 0.5, 0.2: 0.05, 0.3: 0.0, 0.4: 0.0}
    linear = [{0.1: 0.8, 0.2: 0.3, 0.3: 0.05, 0.4: 0.0}]
    adv = {0.1: 0.99, 0.2: 0.95, 0.3: 0.93, 0.4: 0.5}
    w = c6_window(taus, clean, linear, adv, 1.0, 0.99)
    assert (w["tau_C1"], w["tau_lin"], w["tau_C3"], w["lo"]) == (0.2, 0.3, 0.3, 0.3) and w["width"] == 0.0
    adv[0.4] = 0.95
    assert c6_window(taus, clean, linear, adv, 1.0, 0.99)["width"] == pytest.approx(0.1)
    # tau_C3 holds from the smallest radius on: a dip ends it
    assert c6_window(taus, clean, linear, {**adv, 0.2: 0.5}, 1.0, 0.99)["tau_C3"] == 0.1
    # clean accuracy below C1-clean: the clean network never counts as broken; below C3-clean: no tau_C3
    assert c6_window(taus, clean, linear, adv, 0.9, 0.99)["tau_C1"] == math.inf
    assert c6_window(taus, clean, linear, adv, 1.0, 0.9)["tau_C3"] == 0.0
    assert math.isnan(c6_window(taus, clean, [], adv, 1.0, 0.99)["tau_lin"])


def test_docs_model_states_every_claim_with_its_threshold():
    """docs/MODEL.md (the repository's statement of the claims) names every claim of the table
    with the threshold sim.claims judges it by."""
    from pathlib import Path

    from sim.claims import CLAIMS

    text = (Path(__file__).resolve().parents[2] / "docs" / "MODEL.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| C") or
            line.startswith("| control")}
    for key, c in CLAIMS.items():
        row = rows.get(key) or rows["C5-poly-degP"]  # the polynomial degrees share a row
        assert c.threshold_text in row.split("|")[3], (key, row)
    for n in range(1, 9):
        assert f"C{n} " in text
