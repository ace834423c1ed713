"""Compact airbench-style training loop: data stays on the device as one uint8 tensor, each
batch is augmented there, one-cycle (linear warm-up, linear decay) SGD-Nesterov.

Modes: 'clean'; 'pgd' (Madry et al.); 'fgsm' (FGSM with random start, Wong et al. 2020)
with their guard against catastrophic overfitting: a PGD check on a fixed training batch
at regular intervals, and if robust accuracy collapses the best weights so far are
restored and training stops.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cifar.attacks import fgsm, pgd
from cifar.augment import augment, to_float
from cifar.config import MODES, TrainConfig  # noqa: F401  (re-exported)


def one_cycle(step: float, total: int, warmup: float) -> float:
    """LR multiplier: linear 0 -> 1 over the warm-up share of steps, then linear 1 -> 0.
    ``step`` may be fractional (the effective step of a run with a time budget)."""
    w = max(int(round(warmup * total)), 1) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(total - w, 1))


class Clock:
    """Wall seconds since start, synchronising a CUDA device every ``every`` reads so that
    queued GPU work is counted (a read in between returns the last synchronised value)."""

    def __init__(self, device: torch.device, every: int = 10):
        self.cuda = device.type == "cuda"
        self.device, self.every, self.reads = device, every, 0
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self) -> float:
        if not self.cuda or self.reads % self.every == 0:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.last = time.perf_counter() - self.t0
        self.reads += 1
        return self.last


def adversarial_batch(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The training inputs for ``cfg.mode`` (x itself for clean training)."""
    if cfg.mode == "clean":
        return x
    if cfg.mode == "fgsm":
        return fgsm(model, x, y, cfg.norm, cfg.eps, cfg.alpha)
    return pgd(model, x, y, cfg.norm, cfg.eps, cfg.steps, cfg.alpha, track=False)


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> tuple[float, float]:
    """One optimiser step on (adversarial) inputs; returns (loss, accuracy) on those inputs."""
    model.train()
    xa = adversarial_batch(model, x, y, cfg)
    logits = model(xa)
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (logits.detach().argmax(1) == y).float().mean()


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


class OverfitGuard:
    """Catastrophic-overfitting guard (Wong et al. 2020, sec. 5): PGD accuracy on a fixed batch;
    when it falls more than ``drop`` below its best, restore the best weights and stop."""

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
        self.model, self.x, self.y, self.cfg = model, x, y, cfg
        self.best_acc = -1.0
        self.best_state = None
        self.events: list[dict] = []

    def robust_accuracy(self) -> float:
        was = self.model.training
        self.model.eval()
        xa = pgd(self.model, self.x, self.y, self.cfg.norm, self.cfg.eps, self.cfg.guard_steps, track=False, seed=0)
        with torch.no_grad():
            acc = (self.model(xa).argmax(1) == self.y).float().mean().item()
        self.model.train(was)
        return acc

    def update(self, acc: float, step: int) -> bool:
        """Record ``acc``; returns True (after restoring the best weights) on a collapse."""
        self.events.append({"step": step, "pgd_acc": acc})
        if acc > self.best_acc:
            self.best_acc = acc
            self.best_state = copy.deepcopy(self.model.state_dict())
            return False
        if acc < self.best_acc - self.cfg.guard_drop:
            self.model.load_state_dict(self.best_state)
            self.events[-1]["restored_best"] = self.best_acc
            return True
        return False

    def check(self, step: int) -> bool:
        return self.update(self.robust_accuracy(), step)


def train(
    model,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    params=None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    clock=None,
) -> dict:
    """Train ``model`` (a runtime.Forward) in place on device-resident uint8 images.

    ``params``: the parameters to optimise (default: all with requires_grad).  Returns the
    history: per-epoch loss/accuracy on the training inputs, guard checks, seconds, steps
    done and planned, and whether the time budget ``cfg.budget_s`` stopped the run.
    ``clock``: seconds since the start (default a :class:`Clock`; tests pass a fake one).
    """
    cfg.validate()
    n = x_u8.shape[0]
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    total = per_epoch * cfg.epochs
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = make_optimizer(params, cfg)
    gen = torch.Generator(device=x_u8.device).manual_seed(seed)
    torch.manual_seed(seed)
    clock = clock or Clock(x_u8.device)

    guard = None
    if cfg.mode != "clean" and cfg.guard:
        gi = torch.randperm(n, generator=gen, device=x_u8.device)[: min(cfg.guard_n, n)]
        guard = OverfitGuard(model, to_float(x_u8[gi]), y[gi], cfg)
        guard.check(0)
    checks = set()
    if guard is not None:
        every = max(per_epoch // max(cfg.guard_checks_per_epoch, 1), 1)
        checks = {s for s in range(every, total + 1, every)} | {total}

    history = {"config": asdict(cfg), "epochs": [], "stopped_early": False, "budget_stopped": False, "steps": 0, "steps_planned": total}
    t0 = time.perf_counter()
    step = 0
    bar = tqdm(total=total, desc=desc, disable=None if progress else True, leave=False)  # None: off unless a terminal
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen, device=x_u8.device)
        sum_loss = torch.zeros((), device=x_u8.device)
        sum_acc = torch.zeros((), device=x_u8.device)
        done = 0
        for b in range(per_epoch):
            effective = step
            if cfg.budget_s is not None:
                effective = max(step, clock() / cfg.budget_s * total)
                if effective >= total and step > 0:  # the budget is spent: the schedule has reached its end
                    history["budget_stopped"] = True
                    break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * one_cycle(effective, total, cfg.warmup)
            idx = perm[b * bs : (b + 1) * bs]
            xb = augment(x_u8[idx], cfg.pad, cfg.flip, cfg.pad_mode, gen)
            loss, acc = train_step(model, opt, xb, y[idx], cfg)
            sum_loss += loss
            sum_acc += acc
            step += 1
            done += 1
            bar.update(1)
            if step in checks and guard.check(step):
                history["stopped_early"] = True
                break
        if done:
            history["epochs"].append({
                "epoch": epoch + 1,
                "steps": done,
                "loss": sum_loss.item() / done,
                "train_acc": sum_acc.item() / done,
                "lr_last": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            })
            if progress:
                bar.set_postfix(loss=f"{history['epochs'][-1]['loss']:.3f}", acc=f"{history['epochs'][-1]['train_acc']:.3f}")
        if history["stopped_early"] or history["budget_stopped"]:
            break
    bar.close()
    if history["budget_stopped"] and guard is not None and step not in checks and guard.check(step):
        history["stopped_early"] = True  # the last check found a collapse: best weights restored
    history["steps"] = step
    history["seconds"] = time.perf_counter() - t0
    if guard is not None:
        history["guard"] = guard.events
    history["trainable_params"] = int(sum(p.numel() for p in params))
    if not math.isfinite(history["epochs"][-1]["loss"]):
        raise FloatingPointError(f"{desc}: training loss is not finite ({history['epochs'][-1]['loss']})")
    return history
