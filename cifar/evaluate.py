"""Evaluation: clean accuracy, PGD robust accuracy, an AutoAttack-style ensemble of our own
(APGD-CE, then APGD-DLR targeted, then Square, each on the points that survived), and
gradient-masking checks.  Every adversarial point is re-checked: inside the ball, inside
[0, 1], and misclassified on a fresh forward pass, before it counts.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch

from cifar.attacks import EPS_LIMITS, apgd, apgd_targeted, check_threat, perturbation_norms, pgd, square
from cifar.augment import to_float
from cifar.config import EnsembleConfig, MaskingConfig  # noqa: F401  (re-exported)


class Deadline:
    """A wall-clock deadline ``budget_s`` seconds from now (None: never). Evaluations check it
    between chunks of points: the first chunk always runs, later ones only before the
    deadline, so a budget truncates the number of points, never the strength of an attack."""

    def __init__(self, budget_s: float | None = None, clock=time.perf_counter):
        self.budget_s, self.clock = budget_s, clock
        self.end = None if budget_s is None else clock() + budget_s
        self.hit = False

    def expired(self) -> bool:
        if self.end is not None and self.clock() >= self.end:
            self.hit = True
        return self.hit


@contextmanager
def eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield slice(i, min(i + bs, n))


def predict(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes for float images x."""
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x[s]).argmax(1) for s in _batches(len(x), batch_size)])


def clean_accuracy(model, x_u8: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    with eval_mode(model), torch.no_grad():
        correct = sum((model(to_float(x_u8[s])).argmax(1) == y[s]).sum().item() for s in _batches(len(y), batch_size))
    return correct / max(len(y), 1)


def check_adversarial(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float, name: str = "attack") -> None:
    """Raise if an attack left the threat model (a bug, never a result)."""
    d = perturbation_norms(x_adv, x, norm).max().item() if len(x) else 0.0
    if d > eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"{name}: perturbation of {norm} norm {d:.6g} exceeds eps={eps:.6g}")
    if len(x) and (x_adv.min() < 0 or x_adv.max() > 1):
        raise RuntimeError(f"{name}: adversarial image outside [0, 1]")


def robust_mask(model, attack, x_u8: torch.Tensor, y: torch.Tensor, norm: str, eps: float, batch_size: int, name: str,
                deadline: Deadline | None = None) -> torch.Tensor:
    """Per-point bool: correctly classified before and after ``attack(model, x, y)``.
    With a ``deadline``, only the points of the chunks begun before it (a prefix)."""
    out = []
    with eval_mode(model):
        for i, s in enumerate(_batches(len(y), batch_size)):
            if i and deadline is not None and deadline.expired():
                break
            x, yy = to_float(x_u8[s]), y[s]
            ok = predict(model, x) == yy
            idx = ok.nonzero().squeeze(1)
            if idx.numel():
                xa = attack(model, x[idx], yy[idx])
                check_adversarial(xa, x[idx], norm, eps, name)
                ok[idx] = predict(model, xa) == yy[idx]
            out.append(ok)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def pgd_eval(model, x_u8, y, norm: str, eps: float, steps: int = 50, restarts: int = 1, batch_size: int = 1000, seed: int = 0,
             deadline: Deadline | None = None) -> dict:
    """Robust accuracy under PGD-``steps`` with ``restarts`` random restarts, with the number
    of points it was measured on (fewer than asked when ``deadline`` cut it short)."""
    check_threat(norm, eps)
    attack = lambda m, x, yy: pgd(m, x, yy, norm, eps, steps, restarts=restarts, seed=seed)  # noqa: E731
    mask = robust_mask(model, attack, x_u8, y, norm, eps, batch_size, f"pgd-{steps}", deadline)
    return {"acc": mask.float().mean().item(), "n": len(mask), "n_planned": len(y), "budget_stopped": len(mask) < len(y)}


def pgd_accuracy(model, x_u8, y, norm: str, eps: float, steps: int = 50, restarts: int = 1, batch_size: int = 1000, seed: int = 0) -> float:
    """Robust accuracy under PGD-``steps`` with ``restarts`` random restarts."""
    return pgd_eval(model, x_u8, y, norm, eps, steps, restarts, batch_size, seed)["acc"]


def ensemble_attack(model, x_u8, y, norm: str, eps: float, cfg: EnsembleConfig, batch_size: int = 1000, deadline: Deadline | None = None) -> dict:
    """AutoAttack-style: APGD-CE, APGD-T (DLR), Square in turn, each on the survivors, chunk
    by chunk of ``batch_size`` points (a ``deadline`` stops between chunks). Returns clean
    and robust accuracy, the accuracy after each attack and who broke what."""
    check_threat(norm, eps)
    x_u8, y = x_u8[: cfg.n], y[: cfg.n]
    attacks = [
        ("apgd-ce", lambda m, x, yy: apgd(m, x, yy, norm, eps, cfg.apgd_steps, "ce", seed=cfg.seed)),
        ("apgd-t", lambda m, x, yy: apgd_targeted(m, x, yy, norm, eps, cfg.apgd_steps, cfg.n_targets, seed=cfg.seed)),
        ("square", lambda m, x, yy: square(m, x, yy, norm, eps, cfg.square_queries, seed=cfg.seed)),
    ]
    n_planned = len(y)
    clean, after = [], {name: [] for name, _ in attacks}
    broken = {name: 0 for name, _ in attacks}
    with eval_mode(model):
        for i, s in enumerate(_batches(n_planned, batch_size)):
            if i and deadline is not None and deadline.expired():
                break
            xs, ys = x_u8[s], y[s]
            robust = predict(model, to_float(xs), batch_size) == ys
            clean.append(robust.clone())
            for name, attack in attacks:
                idx = robust.nonzero().squeeze(1)
                if idx.numel():
                    still = robust_mask(model, attack, xs[idx], ys[idx], norm, eps, batch_size, name)
                    broken[name] += int((~still).sum().item())
                    robust[idx] = still
                after[name].append(robust.clone())
    n = sum(len(c) for c in clean)
    acc = lambda parts: torch.cat(parts).float().mean().item() if n else float("nan")  # noqa: E731
    result = {"n": n, "n_planned": n_planned, "budget_stopped": n < n_planned, "norm": norm, "eps": eps,
              "clean_acc": acc(clean), "after": {k: acc(v) for k, v in after.items()}, "broken_by": broken}
    result["robust_acc"] = result["after"]["square"]
    return result


def zero_gradient_share(model, x_u8, y, tol: float = 1e-12, batch_size: int = 1000) -> float:
    """Share of points whose input gradient of the cross-entropy has l2 norm <= tol."""
    from cifar.attacks import _loss_fn, loss_and_grad

    zeros = 0
    with eval_mode(model):
        for s in _batches(len(y), batch_size):
            g, _, _ = loss_and_grad(model, to_float(x_u8[s]), y[s], _loss_fn("ce"))
            zeros += (g.flatten(1).norm(dim=1) <= tol).sum().item()
    return zeros / max(len(y), 1)


def masking_checks(model, x_u8, y, norm: str, eps: float, cfg: MaskingConfig, batch_size: int = 1000) -> dict:
    """Signs of gradient masking (Athalye et al. 2018; Carlini et al. 2019):
    black-box Square beating white-box PGD, zero input gradients, robust accuracy that does
    not fall as the radius grows or stays high at a huge radius."""
    check_threat(norm, eps)
    x_u8, y = x_u8[: cfg.n], y[: cfg.n]
    n = len(y)
    tol = max(0.02, 2.0 / max(n, 1))
    pgd_attack = lambda m, x, yy: pgd(m, x, yy, norm, eps, cfg.pgd_steps, seed=cfg.seed)  # noqa: E731
    sq_attack = lambda m, x, yy: square(m, x, yy, norm, eps, cfg.square_queries, seed=cfg.seed)  # noqa: E731
    white = robust_mask(model, pgd_attack, x_u8, y, norm, eps, batch_size, "pgd")
    black = robust_mask(model, sq_attack, x_u8, y, norm, eps, batch_size, "square")
    zero_share = zero_gradient_share(model, x_u8, y, cfg.zero_grad_tol, batch_size)
    curve = [{"radius": 0.0, "acc": clean_accuracy(model, x_u8, y, batch_size)}]
    for r in cfg.radii:
        e = min(r * eps, EPS_LIMITS[norm])
        curve.append({"radius": e, "acc": pgd_accuracy(model, x_u8, y, norm, e, cfg.pgd_steps, 1, batch_size, cfg.seed)})
    accs = [c["acc"] for c in curve]
    flags = {
        "blackbox_beats_whitebox": black.float().mean().item() < white.float().mean().item() - tol,
        "zero_gradients": zero_share > cfg.zero_grad_share,
        "accuracy_rises_with_radius": any(b > a + tol for a, b in zip(accs, accs[1:])),
        "large_radius_not_broken": accs[-1] > cfg.large_radius_acc,
    }
    return {
        "n": n,
        "tolerance": tol,
        "whitebox_pgd_acc": white.float().mean().item(),
        "blackbox_square_acc": black.float().mean().item(),
        "broken_only_by_square": int((white & ~black).sum().item()),
        "zero_gradient_share": zero_share,
        "radius_curve": curve,
        "flags": flags,
        "suspicious": any(flags.values()),
    }


def threat_key(norm: str, eps: float) -> str:
    """'linf 8/255' style label (eps shown as k/255 when it is one)."""
    if norm == "linf" and math.isclose(eps * 255, round(eps * 255), abs_tol=1e-6):
        return f"linf {round(eps * 255)}/255"
    return f"{norm} {eps:g}"
