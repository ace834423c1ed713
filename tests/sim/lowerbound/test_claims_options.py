"""C5 split by class (thresholds from sim.claims), the report's C5 table and the plumbing of
`python -m sim lowerbound options` (validation, the recorded command, resuming a file)."""
import json
import shlex

import pytest

from sim.claims import CLAIMS
from sim.cli import main
from sim.common.validation import ConfigError
from sim.experiments.report import c5_table
from sim.lowerbound import c5_claims
from sim.lowerbound import options as opt


def _row(cls, acc, training="clean", certified=None, kind=None):
    r = {"model": cls, "class": cls, "training": training, "n_train": 100, "clean_acc": 1.0, "robust_acc": acc,
         "robust_kind": kind or ("exact" if cls == "linear" else "attacked"), "note": "n"}
    if certified is not None:
        r["certified_acc"] = certified
    return r


def test_c5_claims_take_their_thresholds_from_the_claims_table():
    lin, other, net = CLAIMS["C5-linear"].threshold, CLAIMS["C5-ntk"].threshold, CLAIMS["C3-robust"].threshold
    rows = [_row("linear", lin), _row("linear", 0.0, "bayes"), _row("poly3", other + 0.01, "oracle", certified=0.1),
            _row("poly3", 0.0), _row("poly5", other, "oracle_step", certified=other), _row("ntk", 0.0)]
    claims = c5_claims(rows, "l2", 0.25, net_robust=net)
    by = {c["id"]: c for c in claims}
    assert list(by) == ["C5-linear-l2", "C5-poly-deg3-l2", "C5-poly-deg5-l2", "C5-ntk-l2"]
    assert by["C5-linear-l2"]["holds"] and by["C5-linear-l2"]["value"] == lin  # at the threshold: holds
    assert not by["C5-poly-deg3-l2"]["holds"] and by["C5-poly-deg3-l2"]["value"] == other + 0.01  # hand-built counts
    assert "certified 0.100" in by["C5-poly-deg3-l2"]["description"]
    assert by["C5-poly-deg5-l2"]["holds"] and by["C5-ntk-l2"]["holds"]
    for c in claims:
        assert c["threshold"] == CLAIMS[c["id"][:-len("-l2")]].text
    below = c5_claims(rows, "l2", 0.25, net_robust=net - 1e-9)  # the network must be robust (C3-robust)
    assert not any(c["holds"] for c in below)
    with pytest.raises(ConfigError, match="poly4"):
        c5_claims([_row("poly4", 0.0)], "l2", 0.25, net_robust=1.0)


def test_report_c5_table_has_certified_and_attacked_columns():
    tm = {"tau": 0.25, "adv_net": {"clean_acc": 0.99, "robust_acc": 0.95, "certified_acc": 0.9},
          "lower_bound": [_row("linear", 0.05), _row("poly5", 0.7, "oracle_step", certified=0.6), _row("ntk", 0.1)]}
    lines = c5_table(tm, "l2", "fgm")
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    rows = {ln.split("|")[2].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in lines[4:]}  # by model
    i_cert, i_att = head.index("certified"), head.index("attacked")
    assert (rows["linear"][i_cert], rows["linear"][i_att]) == ("0.050", "0.050")  # exact: both
    assert (rows["poly5"][i_cert], rows["poly5"][i_att]) == ("0.600", "0.700")
    assert (rows["ntk"][i_cert], rows["ntk"][i_att]) == ("-", "0.100")
    assert rows["poly5"][0] == "poly5" and rows["network"][i_cert] == "0.900"


@pytest.mark.parametrize("args, name", [(["--only", "nope"], "only[]"), (["--d", "0"], "d"),
                                        (["--tau", "-1"], "tau"), (["--norm", "l3"], "norm")])
def test_options_cli_bad_input_is_one_line_exit_2(args, name, capsys, tmp_path):
    assert main(["lowerbound", "options", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {name}=") and "\n" not in err
    assert not list(tmp_path.iterdir())


def _fake_result(name):
    cls = {"linear": {"robust_acc": 0.1, "certified_acc": None, "kind": "exact", "training": "clean", "note": "",
                      "reaches_network": False}}
    return {"data": {}, "network": {"clean_acc": 1.0, "robust_acc": 0.5, "clean_net_robust_acc": 0.0,
                                    "per_attack": {}}, "classes": cls, "rows": [], "seconds": {"total": 1.0}}


def test_options_cli_records_a_command_that_parses_back_and_resumes(monkeypatch, tmp_path, capsys):
    ran = []

    def fake_run_option(data, tau, norm, a):  # the network and the table are measured elsewhere; here the plumbing
        name = next(k for k, v in opt.options(a.d).items() if opt.DataConfig(d=a.d, seed=a.seed, **v) == data)
        ran.append(name)
        return _fake_result(name)

    monkeypatch.setattr(opt, "run_option", fake_run_option)
    out = tmp_path / "c5"
    argv = ["lowerbound", "options", "--d", "64", "--only", "baseline,uniform a_min 0.1, margin 1", "--out", str(out),
            "--quiet"]
    assert main(argv) == 0
    assert ran == ["uniform a_min 0.1, margin 1", "baseline"] or ran == ["baseline", "uniform a_min 0.1, margin 1"]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert set(doc["results"]) == {"baseline", "uniform a_min 0.1, margin 1"}
    cmd = shlex.split(doc["command"])
    assert cmd[:5] == ["python", "-m", "sim", "lowerbound", "options"]
    ran.clear()
    assert main(cmd[3:]) == 0 and ran == []  # the recorded command parses back; both options are in the file
    assert main([*cmd[3:-5], "--only", "noise 0.5", "--out", str(out), "--quiet"]) == 0 and ran == ["noise 0.5"]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert len(doc["commands"]) == 3 and "noise 0.5" in out.with_suffix(".md").read_text()
