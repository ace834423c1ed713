"""Adversarial training from the clean weights until it converges, in two parametrisations:
W itself ('full'), or a low-rank update W = W_clean + U V^T (U m x r, V d x r).

Low-rank adversarial training [paper, CIFAR, last version; here in the simulator]: the
loss L(W) is evaluated at W = W_clean + U V^T and the factors follow its exact gradient,
by the chain rule through the product,

    dL/dU = G V,    dL/dV = G^T U,    G = dL/dW (the network's exact gradient),

gradient descent on both factors at once (both updates use the factors before the step).
One factor starts at zero (U = 0, so the run starts exactly at W_clean) and the other
random (V_ij ~ N(0, init_scale^2 / d): columns of norm about init_scale). The
perturbation of each step is computed at the current W, as in full adversarial training,
and held fixed for the gradient (the usual Danskin step). The relative bias b_i = beta
|w_i| is not differentiated, in either parametrisation (SPEC section 2).

GD on (U, V) is not GD on W: W moves by -lr (G V V^T + U U^T G) + O(lr^2), a
preconditioned step confined to rank r, whose size grows with the factors. ScaledGD
(LowRankUpdate(scaled=True)) preconditions each factor's gradient by the other's Gram
matrix and makes the step independent of the factors' scale. What holds exactly, and what the tests check:
- the factor gradients are the chain rule (against torch autograd, float64);
- with V frozen at an orthonormal basis Q of R^d (r = d) and only U trained, W_t = W_0 +
  U_t Q^T moves by -lr G Q Q^T = -lr G: the same trajectory as full training, up to
  rounding; the loop below then reproduces sim.train.loop.gradient_descent.

Stopping: a `check(step, net)` callback (e.g. a cheap held-out robust accuracy) runs every
check_every steps; the run stops at the first check at which the Plateau rule says
converged (the value moved less than tol over the last quarter of the run), or at
max_steps (converged False). Everything is a pure function of the inputs and seeds: the
same call twice gives the same bits (online batches and the perturbation's draws come from
the data config's streams, keyed by step).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from sim.model.data import STREAM_INIT, Dataset, Problem, stream
from sim.model.linalg import matmul
from sim.model.network import TwoLayerNet

from .loop import beta_at

STREAM_LOWRANK = 11  # sub-key of the init stream for the random factor (fixed: old runs regenerate)


def factor_gradients(G: np.ndarray, U: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dU, dL/dV) = (G V, G^T U) for L(W_0 + U V^T), G = dL/dW at that point."""
    return matmul(G, V), matmul(G.T, U)


class FullUpdate:
    """Train W itself: W <- W - lr G (as sim.train.loop.gradient_descent does)."""

    rank = None

    def __init__(self, W0: np.ndarray):
        self.W0 = np.array(W0)

    def start(self, net: TwoLayerNet) -> None:
        net.W = np.array(self.W0)

    def step(self, net: TwoLayerNet, G: np.ndarray, lr: float) -> None:
        net.W -= net.W.dtype.type(lr) * G

    def state(self) -> dict:
        return {}


def _damped_inverse(A: np.ndarray, damping: float) -> np.ndarray:
    """(A^T A + lam I)^-1 (float64, r x r), lam = damping * trace(A^T A) / r (+ 1e-30): a
    relative damping, so that the step is invariant to the scale of the factors."""
    A = A.astype(np.float64)
    g = A.T @ A
    r = len(g)
    lam = damping * np.trace(g) / r + 1e-30
    return np.linalg.inv(g + lam * np.eye(r))


class LowRankUpdate:
    """W = W_0 + U V^T with U (m x r) starting at 0 and V (d x r) random of column norm about
    init_scale (or given); train_V=False freezes V (only U follows its gradient).

    scaled=False: plain gradient descent on the factors, U -= lr G V, V -= lr G^T U.
    scaled=True: ScaledGD (Tong, Ma & Chi, JMLR 2021), the same exact gradients
    right-preconditioned by the other factor's Gram matrix, U -= lr G V (V^T V + lam)^-1,
    V -= lr G^T U (U^T U + lam)^-1 (relative damping, see _damped_inverse): W then moves by
    -lr (G P_V + P_U G) + O(lr^2), P the projections onto the factors' spans, whatever the
    factors' scale, and V turns towards the top right singular space of G at a rate set
    by lr (a power iteration), where plain GD turns it at a rate lr^2 |G|^2.
    """

    def __init__(self, W0: np.ndarray, rank: int, init_scale: float = 1.0, seed_cfg=None, V: np.ndarray | None = None,
                 train_V: bool = True, scaled: bool = False, damping: float = 1e-3):
        m, d = W0.shape
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"rank={rank!r} is invalid: allowed integers >= 1")
        if not (np.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale={init_scale!r} is invalid: allowed values in (0, inf)")
        self.W0 = np.array(W0)
        self.rank = int(rank)
        dtype = self.W0.dtype
        self.U = np.zeros((m, rank), dtype)
        if V is None:
            rng = stream(seed_cfg, STREAM_INIT, STREAM_LOWRANK, rank) if seed_cfg is not None \
                else np.random.default_rng(rank)
            V = rng.standard_normal((d, rank)) * (init_scale / np.sqrt(d))
        V = np.asarray(V)
        if V.shape != (d, rank):
            raise ValueError(f"V of shape {V.shape} is invalid: expected ({d}, {rank})")
        self.V = np.array(V, dtype=dtype)
        self.V0 = self.V.copy()
        self.train_V = bool(train_V)
        if not (np.isfinite(damping) and damping > 0):
            raise ValueError(f"damping={damping!r} is invalid: allowed values in (0, inf)")
        self.scaled, self.damping = bool(scaled), float(damping)

    def weights(self) -> np.ndarray:
        return self.W0 + matmul(self.U, self.V.T)

    def start(self, net: TwoLayerNet) -> None:
        net.W = np.ascontiguousarray(self.weights())

    def restore(self, U: np.ndarray, V: np.ndarray) -> "LowRankUpdate":
        """Set the factors (e.g. those of a run to resume); V0 stays the initial V."""
        if U.shape != self.U.shape or V.shape != self.V.shape:
            raise ValueError(f"U, V of shapes {U.shape}, {V.shape} are invalid: "
                             f"expected {self.U.shape}, {self.V.shape}")
        self.U, self.V = np.array(U, dtype=self.U.dtype), np.array(V, dtype=self.V.dtype)
        return self

    def step(self, net: TwoLayerNet, G: np.ndarray, lr: float) -> None:
        gU, gV = factor_gradients(G, self.U, self.V)
        if self.scaled:  # ScaledGD: right-precondition by the other factor's (damped) Gram matrix
            gU = matmul(gU.astype(np.float64), _damped_inverse(self.V, self.damping)).astype(gU.dtype)
            gV = matmul(gV.astype(np.float64), _damped_inverse(self.U, self.damping)).astype(gV.dtype)
        lr = self.U.dtype.type(lr)
        self.U -= lr * gU
        if self.train_V:
            self.V -= lr * gV
        net.W = np.ascontiguousarray(self.weights())

    def state(self) -> dict:
        return {"U": self.U, "V": self.V}


@dataclass(frozen=True)
class Plateau:
    """Converged at check step t >= min_steps when the checked values at steps >= (1 - window) t
    (at least min_checks of them) span less than tol."""

    tol: float = 0.005
    window: float = 0.25
    min_checks: int = 4
    min_steps: int = 0

    def converged(self, curve: list[dict], key: str = "value") -> bool:
        if not curve:
            return False
        t = curve[-1]["step"]
        if t < self.min_steps:
            return False
        vals = [c[key] for c in curve if c["step"] >= (1 - self.window) * t]
        return len(vals) >= self.min_checks and max(vals) - min(vals) < self.tol

    def plateau_value(self, curve: list[dict], key: str = "value") -> float:
        """Mean of the values in the last window of the curve."""
        t = curve[-1]["step"]
        vals = [c[key] for c in curve if c["step"] >= (1 - self.window) * t]
        return float(np.mean(vals))


@dataclass
class AdvRun:
    """The outcome of train_adversarial: the net (weights at the last step), the checked
    curve [{step, value, seconds, ...}], steps done, whether the plateau rule stopped it,
    the training seconds (checks excluded) and the factors (low rank)."""

    net: TwoLayerNet
    curve: list = field(default_factory=list)
    steps: int = 0
    converged: bool = False
    seconds: float = 0.0
    factors: dict = field(default_factory=dict)


def train_adversarial(net: TwoLayerNet, problem: Problem, perturb, update, *, lr: float, max_steps: int,
                      batch_size: int = 6000, train: Dataset | None = None,
                      check: Callable[[int, TwoLayerNet], dict] | None = None, check_every: int = 25,
                      plateau: Plateau | None = None, quiet: bool = False, desc: str = "adversarial",
                      resume: AdvRun | None = None) -> AdvRun:
    """Gradient descent from the update's weights on points perturbed by `perturb` (a
    sim.train.adversarial.Perturb), through `update` (FullUpdate or LowRankUpdate).

    train None: online mode (step t uses problem.online_batch(t, batch_size)); else the
    full batch of `train`. check(step, net) -> dict with a 'value' is called at step 0 and
    every check_every steps (and at the last step); with a plateau rule the run stops at
    the first converged check. The net is modified in place and returned in the AdvRun.

    resume: a run that stopped at its cap (steps, curve, seconds), with `update` holding
    its state at that step: training goes on from there to the new max_steps. Batches,
    perturbation draws and the bias schedule depend on the step only, so the weights are
    those of one uninterrupted run (tests/sim/train/test_lowrank.py); the curve keeps the old cap's
    check row even if it is off the check grid.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps={max_steps!r} is invalid: allowed integers >= 0")
    if check_every < 1:
        raise ValueError(f"check_every={check_every!r} is invalid: allowed integers >= 1")
    if net.model.bias == "trained":
        raise ValueError("net.model.bias='trained' is invalid here: allowed 'fixed', 'relative', 'schedule' "
                         "(only W, or its factors, is trained)")
    dtype = net.W.dtype
    update.start(net)
    if train is not None:
        X_full = np.ascontiguousarray(train.x, dtype=dtype)
        y_full = train.y.astype(np.float64)
    curve: list[dict] = [] if resume is None else [dict(c) for c in resume.curve]
    seconds = 0.0 if resume is None else resume.seconds
    first = 0 if resume is None else resume.steps
    if resume is not None and (resume.converged or first > max_steps):
        raise ValueError(f"resume: a run of {first} steps (converged: {resume.converged}) cannot go on to "
                         f"max_steps={max_steps}")
    converged = False
    step = first
    bar = tqdm(total=max_steps, initial=first, desc=desc, disable=quiet, leave=False, mininterval=0.5)
    try:
        for step in range(first, max_steps + 1):
            if net.model.bias == "schedule":
                net.beta = beta_at(net.model, step)
            done = bool(curve) and curve[-1]["step"] == step  # the resumed run's last check
            if check is not None and not done and (step % check_every == 0 or step == max_steps):
                row = {"step": step, "seconds": seconds, **check(step, net)}
                curve.append(row)
                bar.set_postfix(value=f"{row['value']:.4f}")
                if plateau is not None and plateau.converged(curve):
                    converged = True
                    break
            if step == max_steps:
                break
            t0 = time.perf_counter()
            if train is not None:
                X, y = X_full, y_full
            else:
                batch = problem.online_batch(step, batch_size)
                X, y = np.ascontiguousarray(batch.x, dtype=dtype), batch.y.astype(np.float64)
            loss, gW, _, _ = perturb.loss_and_grad(net, X, y, step)
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}: lower lr (now {lr})")
            update.step(net, gW, lr)
            if not np.isfinite(net.W).all():
                raise FloatingPointError(f"weights overflowed at step {step}: lower lr (now {lr})")
            seconds += time.perf_counter() - t0
            bar.update(1)
    finally:
        bar.close()
    return AdvRun(net, curve, step, converged, seconds, update.state())
