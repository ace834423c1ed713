"""Gradient descent: learning, thread-count independence, run directories, interruption."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sim.model.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from sim.train.rundir import read_jsonl
from sim.train.clean import load_net, train_clean

SMALL = RunConfig(DataConfig(d=32, k=2.0, n_train=600, n_test=400),
                  ModelConfig(beta=0.1), TrainConfig(lr=1.0, steps=60, eval_every=20, snapshots=(0, 30)))


def test_clean_training_learns_small_problem(tmp_path):
    run = train_clean(SMALL, tmp_path / "run", quiet=True)
    final = run.log.rows[-1]
    assert final["final"] and final["test_acc"] >= 0.97
    losses = [r["loss"] for r in run.log.rows if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "data.json", "metrics.jsonl", "weights.npz", "summary.json", "snapshots"} <= files
    snaps = sorted((tmp_path / "run" / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["step_0000000.npz", "step_0000030.npz", "step_0000060.npz"]
    np.testing.assert_array_equal(load_net(snaps[0], SMALL).W, run.W_init)
    # the config regenerates the exact data
    cfg = RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    from sim.model.data import Problem
    from sim.train.rundir import array_digest
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert array_digest(Problem.from_config(cfg.data).train_set().x) == data["train_x_sha256"]


@pytest.mark.parametrize("bias", ["fixed", "relative", "trained", "schedule"])
@pytest.mark.parametrize("activation", ["relu", "smooth_relu"])
def test_every_bias_mode_and_activation_trains(bias, activation):
    cfg = SMALL.replace(model=ModelConfig(bias=bias, activation=activation, beta=0.05, beta_end=0.2,
                                          ramp_steps=30, bias_value=0.0, rho=0.01),
                        train=TrainConfig(lr=1.0, steps=60, eval_every=20))
    run = train_clean(cfg, None, quiet=True)
    assert run.log.rows[-1]["test_acc"] >= 0.9


def test_online_mode_uses_fresh_batches():
    cfg = SMALL.replace(train=TrainConfig(lr=1.0, steps=40, mode="online", batch_size=200, eval_every=20))
    run = train_clean(cfg, None, quiet=True)
    assert run.train is None
    assert run.log.rows[-1]["test_acc"] >= 0.9


def test_divergence_is_reported():
    cfg = SMALL.replace(train=TrainConfig(lr=1e300, steps=20), model=ModelConfig(bias="fixed"))  # overflows float32
    with pytest.raises(FloatingPointError, match="lower lr"):
        train_clean(cfg, None, quiet=True)


SCRIPT = """
import hashlib, sys, numpy as np
from sim.model.config import *
from sim.train.clean import train_clean
cfg = RunConfig(DataConfig(d=48, k=3.0, n_train=1000, n_test=50), ModelConfig(bias=sys.argv[1], bias_value=0.01),
                TrainConfig(lr=1.0, steps=50, dtype=sys.argv[2], eval_every=1000))
run = train_clean(cfg, None, quiet=True)
import numba
print(numba.get_num_threads(), hashlib.sha256(run.net.W.tobytes() + run.net.b.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("bias,dtype", [("trained", "float64"), ("relative", "float32")])
def test_bit_identical_whatever_the_thread_count(bias, dtype):
    """50 steps with 1 and with 2 threads (Numba and BLAS) give the same bits."""
    out = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", SCRIPT, bias, dtype], env=env, capture_output=True, text=True,
                             check=True)
        out.append(res.stdout.split())
    assert out[0][0] == "1" and out[1][0] == "2"
    assert out[0][1] == out[1][1]


def test_killed_run_leaves_finished_snapshots_readable(tmp_path):
    """SIGKILL a training run part-way: every snapshot on disk loads, the log parses."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sim", "train", "--quiet", "--out", str(out), "--set", "data.d=64",
           "--set", "data.n_train=2000", "--set", "train.steps=100000", "--set", "train.eval_every=1000000",
           "--set", "train.snapshot_every=5"]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            snaps = list((out / "snapshots").glob("step_*.npz")) if (out / "snapshots").exists() else []
            if len(snaps) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    snaps = sorted((out / "snapshots").glob("step_*.npz"))
    assert len(snaps) >= 4
    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    for p in snaps:
        assert load_net(p, cfg).W.shape == (128, 64)
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) >= 15 and [r["step"] for r in rows] == list(range(len(rows)))


@pytest.mark.parametrize("route", ["gram", "points"])
@pytest.mark.parametrize("bias", ["relative", "trained"])
@pytest.mark.parametrize("activation", ["relu", "smooth_relu"])
def test_fused_fgm_training_equals_the_plain_path(bias, activation, route, monkeypatch):
    """Perturb.loss_and_grad (FGM l2 in one pass, through W W^T or through the points, in
    row blocks) equals attack-then-step."""
    from sim.model import tuning
    from sim.train.adversarial import make_perturb

    monkeypatch.setattr(tuning, "FGM_GRAM_MAX_DENSITY", 1.0 if route == "gram" else -1.0)
    from sim.model.data import Problem
    from sim.model.network import TwoLayerNet
    from sim.train.loop import gradient_descent

    cfg = SMALL.replace(data=DataConfig(d=32, k=2.0, n_train=1500, n_test=200),
                        model=ModelConfig(bias=bias, activation=activation, beta=0.1, bias_value=0.01, rho=0.05),
                        train=TrainConfig(lr=0.5, steps=8, eval_every=4, dtype="float64"))
    p = Problem.from_config(cfg.data)
    tr, te = p.train_set(), p.test_set()
    start = gradient_descent(TwoLayerNet.init(cfg, np.float64), p, tr, None, cfg.train.replace(steps=30), quiet=True)
    nets = []
    for fused in (True, False):
        perturb = make_perturb("fgm", 0.3, "l2", cfg.data, fused=fused)
        nets.append(gradient_descent(start.copy(), p, tr, te, cfg.train, perturb=perturb, quiet=True))
    scale = np.abs(nets[1].W).max()
    assert np.abs(nets[0].W - nets[1].W).max() <= 1e-9 * scale
    np.testing.assert_allclose(nets[0].b, nets[1].b, rtol=1e-9, atol=1e-12)
    # one step by hand: the loss and gradient at the FGM points
    from sim import attacks
    net = nets[0]
    Xa = attacks.fgm(net, tr.x, tr.y, 0.3, "l2").x_adv
    ref = net.loss_and_grad(Xa, tr.y)
    got = net.fgm_loss_and_grad(tr.x, tr.y, 0.3)
    assert abs(got[0] - ref[0]) <= 1e-12 * max(1.0, ref[0])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-9, atol=1e-12 * np.abs(ref[1]).max())
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-9, atol=1e-12)


def _crash_copy(src: Path, dst: Path, snapshot_step: int, extra_rows: int) -> None:
    """The state a run killed a few steps after its snapshot at snapshot_step leaves: the
    snapshots up to it, the log a few steps further, no weights.npz / summary.json."""
    import shutil

    dst.mkdir()
    for name in ("run.json", "config.json", "data.json"):  # no data.json in online mode
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    (dst / "snapshots").mkdir()
    for p in (src / "snapshots").iterdir():
        if int(p.stem.split("_")[1]) <= snapshot_step:
            shutil.copy(p, dst / "snapshots" / p.name)
    lines = (src / "metrics.jsonl").read_text().splitlines(keepends=True)
    (dst / "metrics.jsonl").write_text("".join(lines[:snapshot_step + extra_rows]) + '{"step": 9')  # cut mid-line


def _rows_without_time(path: Path) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(path)]


@pytest.mark.parametrize("bias,dtype,mode", [("trained", "float64", "full_batch"), ("schedule", "float32", "full_batch"),
                                             ("relative", "float32", "online")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, bias, dtype, mode):
    cfg = SMALL.replace(model=ModelConfig(bias=bias, beta=0.05, beta_end=0.2, ramp_steps=30, bias_value=0.01),
                        train=TrainConfig(lr=1.0, steps=50, eval_every=7, snapshot_every=20, dtype=dtype, mode=mode,
                                          batch_size=300))
    full = train_clean(cfg, tmp_path / "full", quiet=True)
    _crash_copy(tmp_path / "full", tmp_path / "cut", snapshot_step=20, extra_rows=6)
    resumed = train_clean(cfg, tmp_path / "cut", quiet=True, resume=True)
    for name in ("W", "b", "beta"):
        a, b = np.load(tmp_path / "full" / "weights.npz")[name], np.load(tmp_path / "cut" / "weights.npz")[name]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert resumed.net.W.tobytes() == full.net.W.tobytes()
    assert _rows_without_time(tmp_path / "cut" / "metrics.jsonl") == _rows_without_time(tmp_path / "full" / "metrics.jsonl")
    assert sorted(p.name for p in (tmp_path / "cut" / "snapshots").iterdir()) == \
        sorted(p.name for p in (tmp_path / "full" / "snapshots").iterdir())
    for p in (tmp_path / "full" / "snapshots").iterdir():
        assert np.load(p)["W"].tobytes() == np.load(tmp_path / "cut" / "snapshots" / p.name)["W"].tobytes()
    assert sorted(resumed.snapshots) == sorted(full.snapshots) and resumed.W_init.tobytes() == full.W_init.tobytes()


def test_resume_from_the_command_line_after_a_kill(tmp_path):
    """SIGKILL `sim train` after a few snapshots, then `--resume`: the final weights are those
    of an uninterrupted run, bit for bit."""
    flags = ["--quiet", "--set", "data.d=48", "--set", "data.n_train=1000", "--set", "train.steps=200",
             "--set", "train.eval_every=1000", "--set", "train.snapshot_every=5"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "sim", "train", "--out", str(out), *flags], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / "snapshots").exists() and len(list((out / "snapshots").glob("step_*.npz"))) >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_early = not (out / "weights.npz").exists()
    subprocess.run([sys.executable, "-m", "sim", "train", "--out", str(out), *flags, "--resume"], env=env, check=True)
    subprocess.run([sys.executable, "-m", "sim", "train", "--out", str(tmp_path / "full"), *flags], env=env, check=True)
    a, b = np.load(out / "weights.npz"), np.load(tmp_path / "full" / "weights.npz")
    assert a["W"].tobytes() == b["W"].tobytes() and a["b"].tobytes() == b["b"].tobytes()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(200)) + [200]
    assert killed_early, "the run finished before it was killed: make it longer"


def test_a_dead_adversarial_run_is_recorded_diverged_not_converged(monkeypatch):
    """The plateau rule alone would call a flat curve of a dead network converged: the record
    also checks the held-out clean accuracy (sim.train.adversarial.DIVERGED_CLEAN_ACC)."""
    import sim.train.adversarial as adv_mod
    from sim.experiments.verify import VerifyConfig

    vc = VerifyConfig(run=RunConfig(DataConfig(d=16, k=2.0, n_train=400, n_test=1200), ModelConfig(init_scale=1e-3),
                                    TrainConfig(lr=1.0, steps=40)), norms=("l2",), tau_l2=0.3, adv_steps=30,
                      adv_batch=200, adv_beta_ramp=5, adv_min_steps=10, adv_check_every=5, adv_holdout=200,
                      n_eval=100, lower_bound=False)
    clean = train_clean(vc.run, None, quiet=True)
    rec = adv_mod.run_adversarial(clean, vc, "l2", "fgm", track=False).convergence
    assert 0.5 <= rec["held_out_clean_acc"] <= 1.0 and not rec.get("diverged")
    monkeypatch.setattr(adv_mod, "DIVERGED_CLEAN_ACC", 1.01)  # every run now counts as dead
    rec = adv_mod.run_adversarial(clean, vc, "l2", "fgm", track=False).convergence
    assert rec["diverged"] is True and rec["converged"] is False
    # a retry with a radius ramp only where a run diverged: here every run does, so both ran
    assert "retry" not in rec  # no retry unless asked for
    rec = adv_mod.run_adversarial(clean, vc.replace(adv_retry_tau_ramp=20), "l2", "fgm", track=False).convergence
    assert rec["retry"]["tau_ramp"] == 20 and rec["retry"]["reason"] == "diverged"
    assert rec["retry"]["first_steps"] == 30 and "from step 20 (the end of the radius ramp)" in rec["criterion"]
    monkeypatch.setattr(adv_mod, "DIVERGED_CLEAN_ACC", 0.9)
    rec = adv_mod.run_adversarial(clean, vc.replace(adv_retry_tau_ramp=20), "l2", "fgm", track=False).convergence
    assert "retry" not in rec and not rec.get("diverged")  # a run that did not diverge is kept as it is


@pytest.mark.parametrize("fused", [True, False])
def test_radius_ramp_perturbs_at_the_ramped_radius(fused):
    """tau_ramp: step t of adversarial training perturbs at radius tau * min(1, (t + 1) / tau_ramp),
    in the fused FGM path and the plain one alike; tau_ramp = 0 is the full radius at every step."""
    from sim import attacks
    from sim.model.data import Problem
    from sim.model.network import TwoLayerNet
    from sim.train.adversarial import make_perturb

    cfg = SMALL.replace(data=DataConfig(d=16, k=2.0, n_train=300, n_test=50),
                        train=TrainConfig(lr=0.5, steps=5, dtype="float64"))
    p = Problem.from_config(cfg.data)
    tr = p.train_set()
    net = TwoLayerNet.init(cfg, np.float64)
    ramp = make_perturb("fgm", 0.4, "l2", cfg.data, fused=fused, tau_ramp=4)
    assert [ramp.radius(t) for t in (0, 1, 3, 10)] == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert make_perturb("fgm", 0.4, "l2", cfg.data).radius(0) == 0.4
    for step, tau in ((0, 0.1), (2, 0.3), (7, 0.4)):
        got = ramp.loss_and_grad(net, tr.x, tr.y, step)
        ref = net.loss_and_grad(attacks.fgm(net, tr.x, tr.y, tau, "l2").x_adv, tr.y)
        assert abs(got[0] - ref[0]) <= 1e-12 * max(1.0, ref[0])
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-9, atol=1e-12 * np.abs(ref[1]).max())
    with pytest.raises(ValueError, match=r"tau_ramp=-1 is invalid: allowed integers >= 0"):
        make_perturb("fgm", 0.4, "l2", cfg.data, tau_ramp=-1)


def test_radius_ramp_delays_the_plateau_stop():
    """With adv_tau_ramp the plateau rule may not stop before the ramp is done, and its window holds
    only checks from the ramp's end on (the first stop: the third check from step 50)."""
    from sim.experiments.verify import ConfigError, VerifyConfig
    from sim.train.adversarial import run_adversarial

    vc = VerifyConfig(run=RunConfig(DataConfig(d=16, k=2.0, n_train=400, n_test=1200), ModelConfig(init_scale=1e-3),
                                    TrainConfig(lr=1.0, steps=40)), norms=("l2",), tau_l2=0.3, adv_steps=80,
                      adv_batch=200, adv_beta_ramp=5, adv_min_steps=10, adv_check_every=5, adv_holdout=200,
                      n_eval=100, lower_bound=False, adv_plateau_tol=1.0)
    clean = train_clean(vc.run, None, quiet=True)
    free = run_adversarial(clean, vc, "l2", "fgm", track=False).convergence
    ramped = run_adversarial(clean, vc.replace(adv_tau_ramp=50), "l2", "fgm", track=False).convergence
    assert free["converged"] and free["steps"] < 50 and ramped["converged"] and ramped["steps"] == 60
    with pytest.raises(ConfigError, match="adv_tau_ramp"):
        vc.replace(adv_tau_ramp=-3)
