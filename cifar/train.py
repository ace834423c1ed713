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


def one_cycle(step: int, total: int, warmup: float) -> float:
    """LR multiplier: linear 0 -> 1 over the warm-up share of steps, then linear 1 -> 0."""
    w = max(int(round(warmup * total)), 1) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(total - w, 1))


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
) -> dict:
    """Train ``model`` (a runtime.Forward) in place on device-resident uint8 images.

    ``params``: the parameters to optimise (default: all with requires_grad).  Returns the
    history: per-epoch loss/accuracy on the training inputs, guard checks, seconds.
    """
    cfg.validate()
    n = x_u8.shape[0]
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    total = per_epoch * cfg.epochs
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total, cfg.warmup))
    gen = torch.Generator(device=x_u8.device).manual_seed(seed)
    torch.manual_seed(seed)

    guard = None
    if cfg.mode != "clean" and cfg.guard:
        gi = torch.randperm(n, generator=gen, device=x_u8.device)[: min(cfg.guard_n, n)]
        guard = OverfitGuard(model, to_float(x_u8[gi]), y[gi], cfg)
        guard.check(0)
    checks = set()
    if guard is not None:
        every = max(per_epoch // max(cfg.guard_checks_per_epoch, 1), 1)
        checks = {s for s in range(every, total + 1, every)} | {total}

    history = {"config": asdict(cfg), "epochs": [], "stopped_early": False, "steps": 0}
    t0 = time.perf_counter()
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen, device=x_u8.device)
        sum_loss = torch.zeros((), device=x_u8.device)
        sum_acc = torch.zeros((), device=x_u8.device)
        for b in range(per_epoch):
            idx = perm[b * bs : (b + 1) * bs]
            xb = augment(x_u8[idx], cfg.pad, cfg.flip, cfg.pad_mode, gen)
            loss, acc = train_step(model, opt, xb, y[idx], cfg)
            sched.step()
            sum_loss += loss
            sum_acc += acc
            step += 1
            bar.update(1)
            if step in checks and guard.check(step):
                history["stopped_early"] = True
                break
        done = b + 1
        history["epochs"].append({
            "epoch": epoch + 1,
            "loss": sum_loss.item() / done,
            "train_acc": sum_acc.item() / done,
            "lr_end": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        })
        if progress:
            bar.set_postfix(loss=f"{history['epochs'][-1]['loss']:.3f}", acc=f"{history['epochs'][-1]['train_acc']:.3f}")
        if history["stopped_early"]:
            break
    bar.close()
    history["steps"] = step
    history["seconds"] = time.perf_counter() - t0
    if guard is not None:
        history["guard"] = guard.events
    history["trainable_params"] = int(sum(p.numel() for p in params))
    if not math.isfinite(history["epochs"][-1]["loss"]):
        raise FloatingPointError(f"{desc}: training loss is not finite ({history['epochs'][-1]['loss']})")
    return history
