"""Adversarial training from the clean-trained weights [paper]: gradient descent on
points perturbed at each step by FGM, FGM with a random start (FGSM-RS style), PGD, or
random noise of the same radius (a control that must not give robustness).
Perturb/make_perturb give the perturbation, run_adversarial runs it from a clean run until
a plateau criterion holds (as verify, scaling and the sweep job do; adversarial_training is
its tuple form)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim import attacks, measures
from sim.common.validation import _check_int
from sim.model.config import TrainConfig
from sim.model.data import STREAM_ATTACK, stream

from .loop import gradient_descent
from .plateau import Plateau
from .rundir import MetricsLog

KINDS = ("fgm", "fgm_rs", "pgd", "random")


class Perturb:
    """The perturbation of adversarial training: `perturb(net, X, y, step)` gives the
    perturbed points (kind: fgm, fgm_rs, pgd or random, radius tau in norm), and
    `perturb.loss_and_grad(net, X, y, step)` the loss and gradient at them, which
    sim.train.loop.gradient_descent calls.

    Random draws come from the config's attack stream, sub-keyed by the step, so
    adversarial training is reproducible and independent of the thread count. FGM in l2
    on the two-layer network takes the fused path (TwoLayerNet.fgm_loss_and_grad: the
    perturbation acts on the pre-activations through W W^T, one product with X instead of
    three, no n x d copy of the points besides the one the gradient needs); it equals the
    plain path up to rounding (tests/test_train.py).

    tau_ramp: the radius grows linearly from tau / tau_ramp to tau over the first tau_ramp
    steps (radius at step t: tau * min(1, (t + 1) / tau_ramp)), as practitioners ramp the
    radius of adversarial training; 0: the full radius from the first step.
    """

    def __init__(self, kind: str, tau: float, norm: str, data_cfg, pgd_steps: int = 10, fused: bool = True,
                 rs_step: float = 1.25, tau_ramp: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is invalid: allowed {', '.join(map(repr, KINDS))}")
        attacks._check(norm, tau)
        if pgd_steps < 1:
            raise ValueError(f"pgd_steps={pgd_steps!r} is invalid: allowed integers >= 1")
        if not (np.isfinite(rs_step) and rs_step > 0):
            raise ValueError(f"rs_step={rs_step!r} is invalid: allowed values in (0, inf)")
        _check_int("tau_ramp", tau_ramp, lo=0)
        self.rs_step = float(rs_step)
        self.tau_ramp = int(tau_ramp)
        self.kind, self.tau, self.norm, self.data_cfg, self.pgd_steps, self.fused = \
            kind, float(tau), norm, data_cfg, int(pgd_steps), bool(fused)

    def radius(self, step: int) -> float:
        """The radius of the perturbations of step `step` (see tau_ramp)."""
        if self.tau_ramp and step + 1 < self.tau_ramp:
            return self.tau * (step + 1) / self.tau_ramp
        return self.tau

    def __call__(self, net, X, y, step):
        kind, tau, norm = self.kind, self.radius(step), self.norm
        if kind == "fgm":
            return attacks.fgm(net, X, y, tau, norm).x_adv
        rng = stream(self.data_cfg, STREAM_ATTACK, 1, step)
        if kind == "pgd":
            return attacks.pgd(net, X, y, tau, norm, steps=self.pgd_steps, restarts=1, rng=rng).x_adv
        if kind == "fgm_rs":
            delta = attacks.random_in_ball(rng, X.shape, norm, tau).astype(X.dtype)
            J, _ = net.output_gradient(X + delta)
            delta += attacks._ascend_(np.asarray(J, X.dtype), np.asarray(y, np.float64), self.rs_step * tau, norm)
            return X + attacks._project_(delta, norm, tau)
        if norm == "linf":
            return X + tau * rng.choice(np.array([-1.0, 1.0]), size=X.shape)
        return X + tau * attacks.steepest(rng.standard_normal(X.shape), "l2")

    def loss_and_grad(self, net, X, y, step):
        """(loss, grad_W, grad_b, f) of net at the perturbed points of (X, y)."""
        if self.fused and self.kind == "fgm" and self.norm == "l2" and hasattr(net, "fgm_loss_and_grad"):
            return net.fgm_loss_and_grad(X, y, self.radius(step))
        Xa = np.ascontiguousarray(self(net, X, y, step), dtype=net.W.dtype)
        return net.loss_and_grad(Xa, y)


def make_perturb(kind: str, tau: float, norm: str, data_cfg, pgd_steps: int = 10, fused: bool = True,
                 rs_step: float = 1.25, tau_ramp: int = 0) -> Perturb:
    """A Perturb for sim.train.loop.gradient_descent (see Perturb)."""
    return Perturb(kind, tau, norm, data_cfg, pgd_steps, fused, rs_step, tau_ramp)


def light_robust_accuracy(net, X, y, tau: float, norm: str, direction) -> float:
    """The cheap robust accuracy of the plateau criterion: the share of points that are
    classified correctly and that neither FGM (FGSM in l_inf) nor the dense attack along
    `direction` breaks."""
    ok = y * net.forward(X) > 0
    ok &= ~attacks.fgm(net, X, y, tau, norm).success
    ok &= ~attacks.dense(net, X, y, tau, direction, norm).success
    return float(np.mean(ok))


def holdout_slice(vc, n_test: int) -> slice:
    """The held-out test points of the plateau criterion: test[n_eval : n_eval + adv_holdout]
    (fewer where the test set ends first), never among the n_eval points of the final evaluation."""
    return slice(vc.n_eval, min(n_test, vc.n_eval + vc.adv_holdout))


@dataclass
class AdvRun:
    """An adversarial training run: the net, its metrics log, the purification trace and the
    convergence record {"steps", "converged", "stopped_early", "curve", "criterion"}."""

    net: object
    log: MetricsLog
    trace: list
    convergence: dict


# Below this clean accuracy on the held-out points the run has diverged (chance is 0.5): seen at
# d = 256, k = 4, seed 1 of sweeps/phase.toml, where the loss spikes of the lr warm-up killed all
# but 26 of 512 neurons by step ~55 and the held-out robust accuracy then sat flat at 0.26.
DIVERGED_CLEAN_ACC = 0.9


def run_adversarial(clean, vc, norm: str, kind: str, quiet: bool = True, track: bool = True,
                    cap: int | None = None) -> AdvRun:
    """Adversarial training from the clean net (run_adversarial_once), and, where that run
    diverged and vc.adv_retry_tau_ramp exceeds vc.adv_tau_ramp, once more from the clean net with
    the radius ramped over adv_retry_tau_ramp steps (what a practitioner does when a run dies:
    at d = 256, k = 4 a 200-step ramp rescued every diverged seed; README, 'Adversarial training
    can kill the network'). The second run is the result; its convergence record says so:
    "retry": {"reason": "diverged", "tau_ramp", "first_steps", "first_held_out_clean_acc"}."""
    run = run_adversarial_once(clean, vc, norm, kind, quiet, track, cap)
    retry = vc.adv_retry_tau_ramp
    if not run.convergence.get("diverged") or retry <= vc.adv_tau_ramp:
        return run
    first = run.convergence
    run = run_adversarial_once(clean, vc.replace(adv_tau_ramp=retry), norm, kind, quiet, track, cap)
    run.convergence["retry"] = {"reason": "diverged", "tau_ramp": retry, "first_steps": first["steps"],
                                "first_held_out_clean_acc": first["held_out_clean_acc"]}
    return run


def run_adversarial_once(clean, vc, norm: str, kind: str, quiet: bool = True, track: bool = True,
                         cap: int | None = None) -> AdvRun:
    """Train a copy of the clean net (a sim.train.clean.CleanRun) on perturbed points until the
    plateau criterion (sim.train.plateau) holds or the cap (vc.adv_steps, or `cap`) is hit.

    vc: a sim.experiments.verify.VerifyConfig (its tau(norm), adv_* fields, n_eval and
    principal_threshold are read). The criterion's measure is light_robust_accuracy at the
    training radius on the held-out points holdout_slice(vc), checked every adv_check_every
    steps; stopping is allowed from max(adv_min_steps, adv_beta_ramp, adv_tau_ramp) on (the bias
    schedule and the radius ramp done), and the checks during the radius ramp do not count in the
    plateau window (measured at the full radius, the curve can sit flat while the training radius
    is still small); adv_plateau=False runs to the cap and judges the curve at its end. The learning
    rate warms up linearly over adv_warmup steps and decays as 1 / (1 + adv_lr_decay t).

    trace (track=True): the purification measures and the held-out light robust accuracy
    every adv_measure_every steps and at the end. The convergence record also holds the clean
    accuracy on the held-out points; below DIVERGED_CLEAN_ACC the run is recorded as diverged
    and not converged, whatever its curve did, and training does not stop on a plateau while
    the network is below it (a flat robust accuracy of a network that does not classify).
    """
    p, te = clean.problem, clean.test
    tau = vc.tau(norm)
    cap = vc.adv_steps if cap is None else cap
    net = clean.net.copy()
    if vc.adv_beta is not None:
        net.model = net.model.replace(bias="schedule", beta=net.beta, beta_end=vc.adv_beta,
                                      ramp_steps=vc.adv_beta_ramp)
    tcfg = TrainConfig(lr=vc.adv_lr, steps=cap, mode=vc.adv_mode, batch_size=vc.adv_batch,
                       dtype=clean.cfg.train.dtype, eval_every=max(1, cap // 10), warmup=vc.adv_warmup,
                       lr_decay=vc.adv_lr_decay)
    trace = []
    Xs = te.x[:300]
    hold = holdout_slice(vc, len(te.y))
    Xh, yh = te.x[hold], te.y[hold]
    min_steps = max(vc.adv_min_steps, vc.adv_beta_ramp if vc.adv_beta is not None else 0, vc.adv_tau_ramp)
    plateau = Plateau(f"robust accuracy (FGM + dense, {norm} tau={tau:g}) on {len(yh)} held-out test points",
                      vc.adv_check_every, min(min_steps, cap), cap, vc.adv_plateau_tol, enabled=vc.adv_plateau,
                      origin=vc.adv_tau_ramp)

    def measure(step, n, light):
        dm = measures.summarize_dense(n, p.M, p.wstar, Xs, vc.principal_threshold)
        pm = measures.summarize_purification(clean.net.W, n.W, clean.W_init, p.M, vc.principal_threshold)
        trace.append({"step": step, "dense_cos_mean": dm["dense_cos_mean"], "dense_ratio_mean": dm["dense_ratio_mean"],
                      "purified_share": pm["purified_share"], "robust_acc_fgm_dense": light})

    def held_out_clean_acc(n):
        return float(np.mean(np.asarray(yh) * n.forward(Xh) > 0))

    def on_check(step, n):
        check = step % vc.adv_check_every == 0 or step == cap
        tr = track and step % vc.adv_measure_every == 0
        if not (check or tr):
            return False
        light = light_robust_accuracy(n, Xh, yh, tau, norm, p.bayes_direction)
        if tr:
            measure(step, n, light)
        if not check:
            return False
        # a flat curve of a network that does not classify (early in training, or dead) is no plateau
        classifies = held_out_clean_acc(n) >= DIVERGED_CLEAN_ACC
        return plateau.update(step, light, may_stop=classifies)

    log = MetricsLog(None)
    data = clean.train if vc.adv_mode == "full_batch" else None
    perturb = make_perturb(kind, tau, norm, clean.cfg.data, tau_ramp=vc.adv_tau_ramp)
    gradient_descent(net, p, data, te, tcfg, perturb=perturb, log=log,
                     on_check=on_check, check_every=math.gcd(vc.adv_check_every, vc.adv_measure_every), quiet=quiet,
                     desc=f"{kind} training ({norm})")
    steps_run = net.steps_run
    if track and (not trace or trace[-1]["step"] != steps_run):
        measure(steps_run, net, plateau.values[-1])
    rec = plateau.record(steps_run)
    rec["held_out_clean_acc"] = held_out_clean_acc(net)
    if rec["held_out_clean_acc"] < DIVERGED_CLEAN_ACC:  # a flat curve of a dead network is not convergence
        rec.update(converged=False, diverged=True)
    return AdvRun(net, log, trace, rec)


def adversarial_training(clean, vc, norm: str, kind: str, steps: int | None = None, quiet: bool = True,
                         track: bool = True):
    """run_adversarial as a tuple (net, log, trace); steps: the cap (None: vc.adv_steps)."""
    r = run_adversarial(clean, vc, norm, kind, quiet, track, cap=steps)
    return r.net, r.log, r.trace
