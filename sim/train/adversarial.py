"""Adversarial training from the clean-trained weights [paper]: gradient descent on
points perturbed at each step by FGM, PGD, or random noise of the same radius (a
control that must not give robustness)."""
from __future__ import annotations

import numpy as np

from sim import attacks
from sim.model.data import STREAM_ATTACK, stream

KINDS = ("fgm", "pgd", "random")


class Perturb:
    """The perturbation of adversarial training: `perturb(net, X, y, step)` gives the
    perturbed points (kind: fgm, pgd or random, radius tau in norm), and
    `perturb.loss_and_grad(net, X, y, step)` the loss and gradient at them, which
    sim.train.gradient_descent calls.

    Random draws come from the config's attack stream, sub-keyed by the step, so
    adversarial training is reproducible and independent of the thread count. FGM in l2
    on the two-layer network takes the fused path (TwoLayerNet.fgm_loss_and_grad: the
    perturbation acts on the pre-activations through W W^T, one product with X instead of
    three, no n x d copy of the points besides the one the gradient needs); it equals the
    plain path up to rounding (tests/test_train.py).
    """

    def __init__(self, kind: str, tau: float, norm: str, data_cfg, pgd_steps: int = 10, fused: bool = True):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is invalid: allowed {', '.join(map(repr, KINDS))}")
        attacks._check(norm, tau)
        if pgd_steps < 1:
            raise ValueError(f"pgd_steps={pgd_steps!r} is invalid: allowed integers >= 1")
        self.kind, self.tau, self.norm, self.data_cfg, self.pgd_steps, self.fused = \
            kind, float(tau), norm, data_cfg, int(pgd_steps), bool(fused)

    def __call__(self, net, X, y, step):
        kind, tau, norm = self.kind, self.tau, self.norm
        if kind == "fgm":
            return attacks.fgm(net, X, y, tau, norm).x_adv
        rng = stream(self.data_cfg, STREAM_ATTACK, 1, step)
        if kind == "pgd":
            return attacks.pgd(net, X, y, tau, norm, steps=self.pgd_steps, restarts=1, rng=rng).x_adv
        if norm == "linf":
            return X + tau * rng.choice(np.array([-1.0, 1.0]), size=X.shape)
        return X + tau * attacks.steepest(rng.standard_normal(X.shape), "l2")

    def loss_and_grad(self, net, X, y, step):
        """(loss, grad_W, grad_b, f) of net at the perturbed points of (X, y)."""
        if self.fused and self.kind == "fgm" and self.norm == "l2" and hasattr(net, "fgm_loss_and_grad"):
            return net.fgm_loss_and_grad(X, y, self.tau)
        Xa = np.ascontiguousarray(self(net, X, y, step), dtype=net.W.dtype)
        return net.loss_and_grad(Xa, y)


def make_perturb(kind: str, tau: float, norm: str, data_cfg, pgd_steps: int = 10, fused: bool = True) -> Perturb:
    """A Perturb for sim.train.gradient_descent (see Perturb)."""
    return Perturb(kind, tau, norm, data_cfg, pgd_steps, fused)
