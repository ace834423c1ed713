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
