"""Adversarial training from the clean-trained weights [paper]: gradient descent on
points perturbed at each step by FGM, PGD, or random noise of the same radius (a
control that must not give robustness)."""
from __future__ import annotations

import numpy as np

from . import attacks
from .data import STREAM_ATTACK, stream

KINDS = ("fgm", "pgd", "random")


def make_perturb(kind: str, tau: float, norm: str, data_cfg, pgd_steps: int = 10):
    """A `perturb(net, X, y, step)` for sim.train.gradient_descent.

    Random draws come from the config's attack stream, sub-keyed by the step, so
    adversarial training is reproducible and independent of the thread count.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is invalid: allowed {', '.join(map(repr, KINDS))}")
    attacks._check(norm, tau)

    def perturb(net, X, y, step):
        if kind == "fgm":
            return attacks.fgm(net, X, y, tau, norm).x_adv
        rng = stream(data_cfg, STREAM_ATTACK, 1, step)
        if kind == "pgd":
            return attacks.pgd(net, X, y, tau, norm, steps=pgd_steps, restarts=1, rng=rng).x_adv
        if norm == "linf":
            return X + tau * rng.choice(np.array([-1.0, 1.0]), size=X.shape)
        return X + tau * attacks.steepest(rng.standard_normal(X.shape), "l2")

    return perturb
