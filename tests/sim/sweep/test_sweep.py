"""Sweeps: spec validation, hashing, the results table, resuming after a kill, failures,
local processes against a Dask LocalCluster, and the figures."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.cli import add_sweep_commands
from sim.common.validation import ConfigError
from sim.sweep.spec import HASH_NEUTRAL
from sim.sweep import (FAULT_ENV, CellConfig, SweepSpecError, config_hash, load_spec, parse_spec, plan_workers,
                       run_sweep, store)

ROOT = Path(__file__).resolve().parents[3]

# 2 d x 2 labels (k = 2 and k = d^0.25: one config at d = 16) x 2 seeds = 6 cells of ~0.3 s
TINY = """
[sweep]
name = "tiny"
seeds = [0, 1]

[base]
norms = ["l2"]
tau_l2 = 0.3
"run.data.n_train" = 400
"run.data.n_test" = 200
"run.model.init_scale" = 1e-3
"run.train.steps" = 30
adv_steps = 15
adv_batch = {expr = "n_train"}
adv_beta_ramp = 5
n_eval = 100
pgd_steps = 4
pgd_restarts = 1
radii = [0.5, 1.0, 2.0]

[grid]
"run.data.d" = [16, 24]
"run.data.k" = [{value = 2, label = "k=2"}, {expr = "d ** 0.25", label = "k=d^0.25"}]
"""


def spec_file(tmp_path, text=TINY, name="tiny.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def table_bytes(out) -> bytes:
    return (Path(out) / "results.csv").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny sweep run once, uninterrupted, in this process."""
    tmp = tmp_path_factory.mktemp("ref")
    spec = load_spec(spec_file(tmp))
    summary = run_sweep(spec, tmp / "out", workers=0, threads=1, quiet=True)
    return spec, tmp / "out", summary


# ------------------------------------------------------------------------------ specs


def bad(text_or_dict, match):
    raw = text_or_dict
    if isinstance(raw, str):
        import tomllib

        raw = tomllib.loads(raw)
    with pytest.raises(SweepSpecError, match=match):
        parse_spec(raw)


def test_invalid_specs_fail_at_once_naming_the_field():
    bad({"grid": {"run.data.dd": [1, 2]}}, r"unknown field 'run.data.dd' in \[grid\]; did you mean 'run.data.d'")
    bad({"base": {"run": {"modle": {"beta": 0.1}}}}, r"unknown field 'run.modle.beta' in \[base\]")
    bad({"grid": {"run.data.d": []}}, r"\[grid\] run.data.d is an empty list")
    bad({"grid": {"tau_l2": 0.2}}, r"\[grid\] tau_l2 = 0.2: expected a list")
    bad({"grid": {"run.data.d": [64, "abc"]}}, r"run.data.d = 'abc' in \[grid\]: d='abc' is invalid")
    bad({"base": {"tau_l2": -1.0}}, r"tau_l2 = -1.0 in \[base\]: tau_l2=-1.0 is invalid")
    bad({"base": {"certify_method": "exact"}}, r"certify_method = 'exact' in \[base\]")
    bad({"base": {"certify": "interval"}}, r"certify = 'interval' in \[base\]: certify='interval' is invalid")
    bad({"cells": [{"label": "a", "run.model.bias": "learned"}]}, r"run.model.bias = 'learned' in \[\[cells\]\] #1")
    bad({"base": {"run.data.n_test": 300}}, r"n_eval=1000 is invalid.*a default, invalid with the spec's values")
    bad({"sweep": {"seeds": []}}, r"seeds=\[\] is invalid")
    bad({"sweep": {"seeds": [0], "nme": "x"}}, r"unknown key 'nme' in \[sweep\]")
    bad({"swep": {}}, r"unknown section \[swep\]")
    bad({"sweep": {"seeds": [0]}, "grid": {"run.data.seed": [1, 2]}}, r"run.data.seed is set in \[grid\] and by")
    bad({"base": {"run.data.k": {"expr": "d ** "}}}, r"run.data.k in \[base\]: expression 'd \*\* ' is not valid")
    bad({"base": {"run.data.k": {"expr": "__import__('os')"}}}, r"unknown field '__import__'")
    bad({"base": {"run.data.k": {"expr": "[d][0]"}}}, r"is not allowed")
    bad({"base": {"run.data.k": {"expr": "dd / 2"}}}, r"reads unknown field 'dd'")
    bad({"base": {"run.data.k": {"expr": "n_train / 100"}, "run.data.n_train": {"expr": "k * 100"}}}, "cycle")


def test_expressions_labels_and_hashes(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    assert spec.name == "tiny" and len(spec.points) == 8 and len({p.hash for p in spec.points}) == 6
    ks = {(p.config.run.data.d, p.label): p.config.run.data.k for p in spec.points}
    assert ks[(16, "k=2")] == ks[(16, "k=d^0.25")] == 2.0 and ks[(24, "k=d^0.25")] == pytest.approx(24 ** 0.25)
    assert all(p.config.adv_batch == 400 and p.config.run.data.D == p.config.run.data.d for p in spec.points)
    # ints given for float fields are the same config (one hash); seeds share a group, not a hash
    a, b = (parse_spec({"base": {"run.data.k": v}}).points[0] for v in (4, 4.0))
    assert a.hash == b.hash == config_hash(CellConfig(run=a.config.run))
    s = parse_spec({"sweep": {"seeds": [0, 1]}})
    assert s.points[0].hash != s.points[1].hash and s.points[0].group == s.points[1].group
    assert sorted(spec.varying_fields()) == ["run.data.D", "run.data.d", "run.data.k"]
    # a field added after sweeps ran leaves the hash alone at its neutral value, not when set
    base = CellConfig(run=a.config.run)
    assert base.adv_tau_ramp == HASH_NEUTRAL["adv_tau_ramp"]
    assert config_hash(base.replace(adv_tau_ramp=100)) != config_hash(base)


def test_plan_workers_never_exceeds_the_cores():
    assert plan_workers(10, None, None, cores=2) == (2, 1)
    assert plan_workers(1, None, None, cores=2) == (1, 2)
    assert plan_workers(10, 1, None, cores=2) == (1, 2)
    with pytest.raises(ConfigError, match="workers=2 x threads=2"):
        plan_workers(10, 2, 2, cores=2)


# ------------------------------------------------------------------------------ running


def test_table_is_tidy_and_a_rerun_skips_everything(reference, tmp_path):
    spec, out, summary = reference
    assert summary.failed == [] and summary.ran == 6 and summary.total == 6
    rows = store.read_table(out)
    assert {r["cell"] for r in rows} == {p.hash for p in spec.points}
    assert {r["label"] for r in rows} == {"k=2", "k=d^0.25"}
    one = [r for r in rows if r["cell"] == spec.points[0].hash and r["label"] == "k=2"]
    keys = [(r["model"], r["metric"], r["norm"], r["tau"]) for r in one]
    assert len(keys) == len(set(keys))  # one row per cell, seed, model, metric, radius
    models = {r["model"] for r in one}
    assert {"clean_net", "adv_net", "linear_clean", "linear_best_robust", "linear_bayes"} <= models
    assert {r["tau"] for r in one if r["metric"] == "robust_acc"} == {0.15, 0.3, 0.6}
    assert all(r["run.data.d"] in (16, 24) and r["norms"] == ["l2"] for r in rows)
    res = json.loads((out / "cells" / spec.points[0].hash / "result.json").read_text())
    assert CellConfig.from_dict(res["config"]) == spec.points[0].config
    # the adversarial training record, curve included, is one line of its log
    rec = json.loads((out / "cells" / spec.points[0].hash / "metrics_adv_curve_l2.jsonl").read_text())
    assert rec["curve"] and rec["steps"] == rec["curve"][-1]["step"] and "converged" in rec
    before = table_bytes(out)
    again = run_sweep(spec, out, workers=0, quiet=True)
    assert again.ran == 0 and again.skipped == 6 and table_bytes(out) == before


def test_killed_sweep_resumes_to_the_same_table(reference, tmp_path):
    spec, ref_out, _ = reference
    path = spec_file(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sim", "sweep", str(path), "--out", str(out), "--workers", "1", "--threads",
           "1", "--quiet"]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    t0 = time.time()
    try:
        while not list(out.glob("cells/*/result.json")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() - t0 < 600  # a guard against a hang (a cold Numba cache on a busy machine is slow)
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [p for p in spec.points if store.cell_state(out, p.hash) == "done"]
    assert 1 <= len({p.hash for p in done}) < 6
    # a cell cut short half-way: its files but no result (or a broken one) -> redone
    todo = next(p for p in spec.points if store.cell_state(out, p.hash) == "todo")
    d = out / "cells" / todo.hash
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics_clean.jsonl").write_text('{"step": 0, "loss"')
    (d / "result.json").write_text('{"status": "ok", "rows": [')
    (d / ".result.json.abc.tmp").write_text("{")
    res = subprocess.run(cmd[:-1], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "6 of 6 cells finished" in res.stdout and "already done" in res.stdout
    assert table_bytes(out) == table_bytes(ref_out)
    assert not list(d.glob(".*.tmp"))


def test_only_runs_a_slice_first_and_the_rest_resumes(reference, tmp_path):
    from sim.sweep.spec import parse_only, select_points

    spec, ref_out, _ = reference
    assert {p.label for p in select_points(spec.points, parse_only(["label=k=2"]))} == {"k=2"}
    assert len(select_points(spec.points, parse_only(["run.data.d=16,24", "seed=1"]))) == 4
    out = tmp_path / "out"
    part = run_sweep(spec, out, workers=0, quiet=True, only=["d=24", "seed=0"])
    chosen = {p.hash for p in spec.points if p.config.run.data.d == 24 and p.seed == 0}
    assert part.ran == len(chosen) == 2 and part.total == 6 and part.finished == 2
    assert "2 of 6 cells finished" in part.text()
    assert {p.hash for p in spec.points if store.cell_state(out, p.hash) == "done"} == chosen
    assert {r["cell"] for r in store.read_table(out)} == chosen  # the table holds what is finished
    rest = run_sweep(spec, out, workers=0, quiet=True)
    assert rest.skipped == 2 and rest.ran == 4 and table_bytes(out) == table_bytes(ref_out)
    with pytest.raises(ConfigError, match="--only 'd=99' is invalid: it matches none"):
        run_sweep(spec, out, workers=0, quiet=True, only=["d=99"])
    with pytest.raises(ConfigError, match="unknown field 'dd'"):
        run_sweep(spec, out, workers=0, quiet=True, only=["dd=1"])
    with pytest.raises(ConfigError, match="allowed FIELD=VALUE"):
        run_sweep(spec, out, workers=0, quiet=True, only=["d"])


def test_restore_from_the_committed_table_resumes_without_rerunning(reference, tmp_path):
    """A fresh clone has the exported table but no cells: restore rebuilds the finished cells
    (the same table, byte for byte), the sweep then runs only what the table lacks, and a table
    whose rows are another config's is refused naming the cell."""
    spec, ref_out, _ = reference
    part = tmp_path / "part"
    run_sweep(spec, part, workers=0, quiet=True, only=["d=16"])  # the k=2 and k=d^0.25 labels share these cells
    table = store.export_table(part, tmp_path / "tiny_results.csv.gz")
    out = tmp_path / "clone"
    rep = store.restore_cells(out, spec, table)
    done = {p.hash for p in spec.points if p.config.run.data.d == 16}
    assert set(rep["restored"]) == done and not rep["kept"] and len(rep["missing"]) == 6 - len(done)
    store.write_table(out, spec)
    assert table_bytes(out) == table_bytes(part)
    assert store.restore_cells(out, spec, table)["kept"] == rep["restored"]  # a second restore keeps them
    rest = run_sweep(spec, out, workers=0, quiet=True)
    assert rest.skipped == len(done) and rest.ran == 6 - len(done) and table_bytes(out) == table_bytes(ref_out)
    other = tmp_path / "other.csv"
    text = table_bytes(part).decode().replace(",400,", ",401,")  # n_train (and adv_batch = n_train) changed
    other.write_text(text)
    with pytest.raises(SweepSpecError, match=r"table .* is invalid for cell [0-9a-f]{16}: its config differs in "
                                             r"adv_batch, run.data.n_train"):
        store.restore_cells(tmp_path / "clone2", spec, other)


def test_failures_are_recorded_and_the_sweep_goes_on(reference, tmp_path, monkeypatch):
    spec, ref_out, _ = reference
    victims = [spec.points[1].hash, spec.points[5].hash]
    monkeypatch.setenv(FAULT_ENV, f"{victims[0]}:raise,{victims[1]}:exit")
    out = tmp_path / "out"
    summary = run_sweep(spec, out, workers=2, threads=1, quiet=True)
    failed = {f["hash"]: f["error"] for f in summary.failed}
    assert set(failed) == set(victims)
    assert "injected fault" in failed[victims[0]] and "worker process died" in failed[victims[1]]
    assert "2 failed" in summary.text() and victims[0] in summary.text()
    assert store.cell_state(out, victims[0]) == "failed"
    assert "RuntimeError" in store.read_failure(out, victims[0])["traceback"]
    assert summary.total - len(summary.failed) == 4
    monkeypatch.delenv(FAULT_ENV)
    again = run_sweep(spec, out, workers=0, quiet=True)  # failed cells are retried
    assert again.failed == [] and again.ran == 2 and table_bytes(out) == table_bytes(ref_out)


def small_scaling_spec():
    """The default scaling spec (sweeps/scaling.toml) with small d, two seeds and a small budget."""
    import tomllib

    raw = tomllib.loads((ROOT / "sweeps" / "scaling.toml").read_text())
    raw["sweep"]["seeds"] = [0, 1]
    raw["grid"]["run.data.d"] = [16, 32]
    raw["base"].update({"run.data.n_train": 400, "run.data.n_test": 200, "run.train.batch_size": 200,
                        "run.train.steps": 30, "adv_steps": 10, "adv_batch": 200, "adv_beta_ramp": 5, "n_eval": 100,
                        "pgd_steps": 3, "run.model.init_scale": 1e-3})
    return parse_spec(raw, name="scaling_small")


def test_dask_local_cluster_gives_the_same_table_as_the_local_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = small_scaling_spec()
    assert len({p.hash for p in spec.points}) == 8
    local = run_sweep(spec, tmp_path / "local", workers=0, quiet=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        with distributed.Client(cluster) as client:  # the Python API, with a Client
            summary = run_sweep(spec, tmp_path / "dask", scheduler=client, quiet=True)
        # the command line, with the scheduler's address (the tiny spec)
        path = spec_file(tmp_path)
        res = subprocess.run([sys.executable, "-m", "sim", "sweep", str(path), "--out", str(tmp_path / "cli"),
                              "--scheduler", cluster.scheduler_address, "--quiet"], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert local.failed == [] and summary.failed == [] and summary.ran == 8
    rows = store.read_table(tmp_path / "dask")
    assert {"certified_acc", "robust_acc", "purified_share"} <= {r["metric"] for r in rows}
    assert table_bytes(tmp_path / "dask") == table_bytes(tmp_path / "local")
    assert res.returncode == 0, res.stderr
    assert "6 of 6 cells finished" in res.stdout

    def same(a, b):  # the tiny spec's table, up to the sweep directory
        return table_bytes(a) == table_bytes(b)

    ref = tmp_path / "ref"
    run_sweep(load_spec(path), ref, workers=0, quiet=True)
    assert same(tmp_path / "cli", ref)


# ------------------------------------------------------------------------------ figures and CLI


def test_plot_writes_png_svg_and_sidecars(reference, tmp_path):
    from sim.sweep.plot import plot_results

    spec, out, _ = reference
    figs = tmp_path / "figures"
    written = plot_results(out, figs, command="python -m sim plot OUT")
    names = {p.name for p in written}
    for stem in ("robust_vs_radius_l2", "c6_window_l2", "purification_vs_d", "weights_dictionary_basis"):
        for ext in ("png", "svg", "json"):
            assert f"tiny_{stem}.{ext}" in names
            assert (figs / f"tiny_{stem}.{ext}").stat().st_size > 500
        side = json.loads((figs / f"tiny_{stem}.json").read_text())
        assert side["command"] == "python -m sim plot OUT" and "commit" in side["commit"]
        assert side["config_hashes"] and set(side["config_hashes"]) <= {p.hash for p in spec.points}
    assert "| k=d^0.25 | 24 | 2 |" in (figs / "tiny_summary.md").read_text()


def test_cli_bad_spec_exits_2_naming_the_field(tmp_path):
    path = spec_file(tmp_path, '[grid]\n"run.model.betta" = [0.1]\n', "bad.toml")
    res = subprocess.run([sys.executable, "-m", "sim", "sweep", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "run.model.betta" in res.stderr and "run.model.beta" in res.stderr
    import argparse

    parser = argparse.ArgumentParser()
    add_sweep_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", "x.toml", "--workers", "2", "--scheduler", "tcp://h:8786", "--quiet"])
    assert args.workers == 2 and args.scheduler == "tcp://h:8786" and args.func.__name__ == "_cmd_sweep"
    assert parser.parse_args(["plot", "runs/sweeps/x"]).out == "figures"


def test_default_scaling_spec_is_valid():
    spec = load_spec(ROOT / "sweeps" / "scaling.toml")
    ds = sorted({p.config.run.data.d for p in spec.points})
    assert ds[-1] >= 2048 and len({p.seed for p in spec.points}) >= 3
