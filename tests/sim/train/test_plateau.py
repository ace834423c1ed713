"""The plateau criterion that ends training, the learning-rate schedule, and early stopping."""
import numpy as np
import pytest

from sim.model.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from sim.train.loop import lr_at
from sim.train.plateau import Plateau, plateaued


def test_plateau_on_synthetic_curves():
    steps = list(range(0, 1001, 25))
    flat = [0.9 - 0.5 * np.exp(-s / 80) for s in steps]  # rises, then flattens out
    rising = [0.2 + 0.0006 * s for s in steps]  # still rising by 0.15 over the last quarter
    assert plateaued(steps, flat)
    assert not plateaued(steps, rising)
    # a curve that oscillates by more than 2 tol within the window is not converged either
    assert not plateaued(steps, [0.8 + (0.012 if i % 2 else 0.0) for i in range(len(steps))])
    assert not plateaued([0, 25], [0.5, 0.5])  # too few checks in the last quarter


def test_plateau_stops_only_after_min_steps_and_before_the_cap():
    p = Plateau("x", every=10, min_steps=50, max_steps=200)
    stop_at = next(s for s in range(0, 201, 10) if p.update(s, 0.7))
    # a flat curve: the first check from min_steps on whose last quarter holds >= 3 checks (60, 70, 80)
    assert stop_at == 80 and p.stopped_at == 80
    rec = p.record(80)
    assert rec["converged"] and rec["steps"] == 80 and len(rec["curve"]) == 9 and "moved by" in rec["criterion"]
    q = Plateau("x", every=10, min_steps=0, max_steps=100)
    for s in range(0, 101, 10):
        assert not q.update(s, s / 100)
    assert not q.record(100)["converged"] and q.stopped_at is None
    off = Plateau("x", every=10, min_steps=0, max_steps=100, enabled=False)
    assert not any(off.update(s, 0.5) for s in range(0, 101, 10)) and off.record(100)["converged"]


def test_checks_before_the_origin_never_count():
    """A radius ramp: the curve at the full radius sits flat (0.1) until the ramp ends at step 200,
    then rises to 0.2 at step 300. Without an origin the flat stretch passes as a plateau at step
    200; with it the first stop is where the last quarter (all after the ramp) is flat again."""
    curve = {s: 0.1 if s <= 200 else 0.1 + 0.001 * (s - 200) if s <= 300 else 0.2 for s in range(0, 601, 25)}
    assert plateaued([150, 175, 200], [0.1] * 3)
    assert not plateaued([150, 175, 200], [0.1] * 3, origin=200)
    p = Plateau("x", every=25, min_steps=200, max_steps=600, origin=200)
    stop_at = next(s for s in curve if p.update(s, curve[s]))
    assert stop_at == 375 and "from step 200 (the end of the radius ramp)" in p.criterion()
    naive = Plateau("x", every=25, min_steps=200, max_steps=600)
    assert next(s for s in curve if naive.update(s, curve[s])) == 200


def test_lr_schedule():
    t = TrainConfig(lr=1.0, warmup=4, lr_decay=0.5)
    assert [lr_at(t, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(t, 6) == pytest.approx(1.0 / (1 + 0.5 * 2))
    assert lr_at(TrainConfig(lr=0.3), 100) == 0.3
    with pytest.raises(ConfigError, match="warmup"):
        TrainConfig(warmup=-1)
    with pytest.raises(ConfigError, match="plateau_tol"):
        TrainConfig(plateau_tol=0)


def test_clean_training_stops_at_its_plateau():
    from sim.train.clean import train_clean

    cfg = RunConfig(DataConfig(d=16, k=2.0, n_train=300, n_test=100), ModelConfig(init_scale=1e-2),
                    TrainConfig(lr=1.0, steps=400, plateau_every=10, plateau_min_steps=20))
    run = train_clean(cfg, None, quiet=True)
    rec = run.convergence
    assert rec["converged"] and rec["steps"] < 400 and rec["curve"][-1]["step"] == rec["steps"]
    assert run.log.rows[-1]["step"] == rec["steps"]
    fixed = train_clean(cfg.replace(train=cfg.train.replace(steps=30, plateau_every=0)), None, quiet=True)
    assert fixed.convergence["steps"] == 30 and fixed.convergence["curve"][-1]["step"] == 30
