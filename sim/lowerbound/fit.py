"""Shared pieces of the lower-bound models: argument checks and one trainer.

Every trainable model here is linear in its parameters, f(x) = <theta, phi(x)> (+ a
fixed offset for the NTK), and exposes

    theta                      1-D float64 array, updated in place by the trainer
    loss_grad(X, y)         -> (mean logistic loss, d loss / d theta, f)
    forward(X)              -> f                  (what sim.attacks needs)
    output_gradient(X)      -> (df/dx, f)         (what sim.attacks needs)

`adam_fit` trains such a model on the mean logistic loss + ridge/2 |theta|^2 by
mini-batch Adam; with `adversarial` set, every batch is first replaced by its PGD
perturbation computed through the model's own input gradient (sim.attacks.pgd), i.e.
Madry-style adversarial training with a few PGD steps. The loss is convex in theta
for every model here, so the optimiser only decides how close to the (regularised)
minimiser a fixed budget of steps gets, never which local minimum is found.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

from sim import attacks
from sim.common.norms import NORMS, check_norm  # noqa: F401 - NORMS re-exported
from sim.common.progress import progress
from sim.common.validation import _fail as fail

PARITIES = ("odd", "full")


def check_norm_tau(norm, tau):
    check_norm(norm)
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or not (math.isfinite(tau) and tau >= 0):
        fail("tau", tau, "finite values in [0, inf)")


def check_parity(parity):
    if parity not in PARITIES:
        fail("parity", parity, "'odd' (f(-x) = -f(x), like the network) or 'full'")


def check_int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        fail(name, value, f"integers >= {lo}")


def check_pos(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (math.isfinite(value) and value > 0):
        fail(name, value, "finite values in (0, inf)")


def logistic(margin: np.ndarray):
    """(loss_n, dloss_n/dmargin_n) of log(1 + exp(-margin)), stable for any margin."""
    return np.logaddexp(0.0, -margin), -expit(-margin)


def dual_norm(w: np.ndarray, norm: str) -> float:
    """|w|_* for the threat ball: l2 -> |w|_2, linf -> |w|_1."""
    return float(np.abs(w).sum()) if norm == "linf" else float(np.linalg.norm(w))


def adam_fit(model, X, y, *, steps: int, batch: int = 256, lr: float = 1e-2, ridge: float = 1e-4,
             adversarial: dict | None = None, rng: np.random.Generator, quiet: bool = True,
             desc: str = "fit"):
    """Mini-batch Adam on mean logistic + ridge/2 |theta|^2, cosine-decayed step size.

    Batches walk through random permutations of the training set (epochs). adversarial:
    None (clean training) or dict(tau=, norm=, steps=) -> each batch is replaced by
    sim.attacks.pgd(model, Xb, yb, tau, norm, steps, restarts=1) (random start) before
    the gradient step. Returns the list of per-step batch losses.
    """
    n = len(y)
    batch = min(batch, n)
    theta = model.theta
    m1 = np.zeros_like(theta)
    m2 = np.zeros_like(theta)
    b1, b2, eps = 0.9, 0.999, 1e-8
    perm, pos = rng.permutation(n), 0
    losses = []
    bar = progress(range(steps), desc=desc, quiet=quiet, leave=False, mininterval=0.5)
    for t in bar:
        if pos + batch > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos:pos + batch]
        pos += batch
        Xb, yb = X[idx], y[idx]
        if adversarial is not None:
            Xb = attacks.pgd(model, Xb, yb, adversarial["tau"], adversarial["norm"], steps=adversarial["steps"],
                             restarts=1, rng=rng).x_adv
        loss, g, _ = model.loss_grad(Xb, yb)
        g = g + ridge * theta
        m1 *= b1
        m1 += (1 - b1) * g
        m2 *= b2
        m2 += (1 - b2) * g * g
        step = lr * 0.5 * (1 + math.cos(math.pi * t / steps))
        theta -= step * (m1 / (1 - b1 ** (t + 1))) / (np.sqrt(m2 / (1 - b2 ** (t + 1))) + eps)
        losses.append(loss)
        if t % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
    return losses
