"""Gradient descent on the logistic loss: exact full-batch, or online with fresh samples.

One loop serves clean and adversarial training: an optional `perturb(net, X, y, step)`
replaces the batch by perturbed points before each gradient step (adversarial
training), the gradient is otherwise the exact gradient of the mean loss.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from sim.common.progress import progress
from sim.model.config import TrainConfig
from sim.model.data import Dataset, Problem
from sim.model.network import TwoLayerNet

from .rundir import MetricsLog

Perturb = Callable[[TwoLayerNet, np.ndarray, np.ndarray, int], np.ndarray]


def beta_at(model, step: int) -> float:
    """The relative bias factor of the 'schedule' mode after `step` updates (linear ramp)."""
    t = min(1.0, step / model.ramp_steps)
    return float(model.beta + t * (model.beta_end - model.beta))


def lr_at(tcfg: TrainConfig, step: int) -> float:
    """The learning rate of update `step`: a linear warm-up from lr / warmup to lr over the
    first `warmup` updates, then lr / (1 + lr_decay * (step - warmup)) (inverse-time decay;
    lr_decay = 0: constant)."""
    lr = tcfg.lr * min(1.0, (step + 1) / tcfg.warmup) if tcfg.warmup else tcfg.lr
    return float(lr / (1.0 + tcfg.lr_decay * max(0, step - tcfg.warmup)))


def evaluate(net: TwoLayerNet, data: Dataset) -> dict:
    """Clean loss and accuracy of net on a data set."""
    f = net.forward(data.x)
    margin = data.y * f
    return {"loss": float(np.mean(np.logaddexp(0.0, -margin))), "acc": float(np.mean(margin > 0))}


def gradient_descent(net: TwoLayerNet, problem: Problem, train: Dataset | None, test: Dataset | None,
                     tcfg: TrainConfig, *, perturb: Perturb | None = None, log: MetricsLog | None = None,
                     on_snapshot: Callable[[int, TwoLayerNet], None] | None = None,
                     on_check: Callable[[int, TwoLayerNet], bool] | None = None, check_every: int = 0,
                     quiet: bool = False, desc: str = "train", start: int = 0) -> TwoLayerNet:
    """Run tcfg.steps steps of gradient descent on net (in place) and return it.

    full_batch: every step uses the exact gradient on the whole `train` set.
    online: step t uses a fresh batch from the problem's online stream (sub-key t).
    Snapshots of the weights are handed to on_snapshot at the steps in tcfg.snapshots
    (step s = the weights after s updates), every tcfg.snapshot_every steps, and after
    the last step. start: the number of updates net has already had (resuming a run from
    its snapshot at that step: the steps before it are skipped, the rest are exactly those of
    an uninterrupted run, and the snapshot at `start` is not written again).
    on_check(step, net) is called every check_every steps (before the update of that step)
    and at the last step; when it returns True training stops there (a plateau criterion,
    sim.train.plateau). The number of updates made is stored in `net.steps_run`. The
    learning rate follows lr_at (warm-up, decay).
    """
    log = log if log is not None else MetricsLog(None)
    dtype = np.dtype(tcfg.dtype)
    if net.W.dtype != dtype:
        net.W = net.W.astype(dtype)
    if tcfg.mode == "full_batch":
        if train is None:
            raise ValueError("train: a training set is required in mode='full_batch'")
        X_full = np.ascontiguousarray(train.x, dtype=dtype)
        y_full = train.y.astype(np.float64)
    snaps = set(tcfg.snapshots)
    t0 = time.perf_counter()
    bar = progress(desc=desc, quiet=quiet, total=tcfg.steps, initial=start, leave=False, mininterval=0.5)
    last = tcfg.steps
    for step in range(start, tcfg.steps + 1):
        if net.model.bias == "schedule":
            net.beta = beta_at(net.model, step)
        if on_check is not None and check_every and (step % check_every == 0 or step == tcfg.steps):
            if on_check(step, net) and step < tcfg.steps:
                last = step
                break
        if on_snapshot is not None and (step > start or start == 0) and (
                step in snaps or (tcfg.snapshot_every and step % tcfg.snapshot_every == 0)):
            on_snapshot(step, net)
        if step == tcfg.steps:
            break
        if tcfg.mode == "full_batch":
            X, y = X_full, y_full
        else:
            batch = problem.online_batch(step, tcfg.batch_size)
            X, y = np.ascontiguousarray(batch.x, dtype=dtype), batch.y.astype(np.float64)
        row = {"step": step}
        if test is not None and step % tcfg.eval_every == 0:
            ev = evaluate(net, test)  # before the update: every field of a row refers to one W
            row["test_loss"], row["test_acc"] = ev["loss"], ev["acc"]
            bar.set_postfix(test_acc=f"{ev['acc']:.4f}")
        if perturb is None:
            loss, gW, gb, f = net.loss_and_grad(X, y)
        elif hasattr(perturb, "loss_and_grad"):  # sim.train.adversarial.Perturb: may fuse attack and step
            loss, gW, gb, f = perturb.loss_and_grad(net, X, y, step)
        else:
            loss, gW, gb, f = net.loss_and_grad(np.ascontiguousarray(perturb(net, X, y, step), dtype=dtype), y)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}: lower lr (now {tcfg.lr})")
        row.update(loss=loss, train_acc=float(np.mean(y * f > 0)),
                   grad_norm=float(np.sqrt(np.sum(gW.astype(np.float64) ** 2) + np.sum(gb ** 2))),
                   bias_mean=float(np.mean(net.bias())))
        lr = lr_at(tcfg, step)
        row["lr"] = lr
        with np.errstate(over="ignore"):  # an overflow is caught and reported just below
            net.W -= dtype.type(lr) * gW
            if net.model.bias == "trained":
                net.b -= lr * gb
        if not (np.isfinite(net.W).all() and np.isfinite(net.b).all()):
            raise FloatingPointError(f"weights overflowed at step {step}: lower lr (now {tcfg.lr})")
        row["seconds"] = time.perf_counter() - t0
        log.write(row)
        bar.update(1)
    if test is not None:
        ev = evaluate(net, test)
        bar.set_postfix(test_acc=f"{ev['acc']:.4f}")
        log.write({"step": last, "test_loss": ev["loss"], "test_acc": ev["acc"],
                   "seconds": time.perf_counter() - t0, "final": True})
    bar.close()
    if on_snapshot is not None and (last < tcfg.steps or tcfg.steps not in snaps):
        on_snapshot(last, net)  # the final weights (a run stopped early: where it stopped)
    net.steps_run = last
    return net
