"""Validated settings, free of torch so that the command line can check every parameter
before the slow ``import torch``: threat models, training, evaluation, devices.

Every bad value raises :class:`ConfigError` (a ValueError) naming the parameter and what
is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from sim.common.validation import ConfigError  # noqa: F401  (sim's one error type, re-exported; torch-free)

NORMS = ("linf", "l2")
IMAGE_DIM = 3 * 32 * 32
EPS_LIMITS = {"linf": 1.0, "l2": math.sqrt(IMAGE_DIM)}
MODES = ("clean", "pgd", "fgsm")
PAD_MODES = ("zeros", "reflect")
DEVICES = ("auto", "cpu", "cuda")


def check_threat(norm: str, eps: float) -> None:
    """Raise ConfigError naming the bad parameter and what is allowed."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
    lim = EPS_LIMITS[norm]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps <= lim:
        raise ConfigError(f"eps for norm {norm!r} must be a number in (0, {lim:.4g}], got {eps!r}")


def parse_eps(text: str) -> float:
    """'8/255' or '0.5' -> float (ConfigError naming 'eps' otherwise)."""
    try:
        if "/" in text:
            a, b = text.split("/")
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps must be a number or a fraction such as 8/255, got {text!r}") from None


def check_device(device: str) -> str:
    """The device's spelling ('auto', 'cpu', 'cuda', 'cuda:N'); whether CUDA exists is checked later."""
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ConfigError(f"device must be one of {DEVICES} or cuda:N, got {device!r}")


def check_budget(name: str, value: float | None) -> None:
    """A time budget is None or a positive finite number of seconds."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{name} must be a positive number of seconds or None, got {value!r}")


def check_out(out: Path) -> None:
    """The output folder may exist (as a folder) or not; anything else is a ConfigError."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"out={str(out)!r}: {str(parent)!r} exists and is not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"out={str(out)!r}: {str(parent)!r} is not writable")
            return


@dataclass
class TrainConfig:
    """One training run. ``alpha`` None means the attack's default step.

    ``budget_s``: wall-clock budget of the run (None: none). The one-cycle schedule then
    follows the effective step max(step, elapsed / budget * planned steps), so a run that
    reaches its budget first still ends with the learning rate annealed to zero, and stops
    there (its history says so: ``budget_stopped``)."""

    mode: str = "clean"
    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup: float = 0.2
    norm: str = "linf"
    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 10
    pad: int = 4
    pad_mode: str = "zeros"
    flip: bool = True
    guard: bool = True
    guard_checks_per_epoch: int = 2
    guard_n: int = 512
    guard_steps: int = 10
    guard_drop: float = 0.2
    budget_s: float | None = None

    def validate(self) -> "TrainConfig":
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "clean":
            check_threat(self.norm, self.eps)
        if self.epochs < 1 or self.batch_size < 1 or self.steps < 1:
            raise ConfigError(f"epochs, batch_size and steps must be >= 1 (got {self.epochs}, {self.batch_size}, {self.steps})")
        if not self.lr > 0 or not 0 <= self.warmup < 1:
            raise ConfigError(f"lr must be > 0 and warmup in [0, 1), got lr={self.lr}, warmup={self.warmup}")
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        check_budget("budget_s", self.budget_s)
        return self


@dataclass
class EnsembleConfig:
    n: int = 1000
    apgd_steps: int = 100
    n_targets: int = 9
    square_queries: int = 5000
    seed: int = 0


@dataclass
class MaskingConfig:
    n: int = 200
    pgd_steps: int = 20
    square_queries: int = 1000
    radii: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    zero_grad_tol: float = 1e-12
    zero_grad_share: float = 0.01
    large_radius_acc: float = 0.1
    seed: int = 0
