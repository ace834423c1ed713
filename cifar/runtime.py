"""Where and how models run: device auto-detection, bf16 autocast and channels_last.

Attacks, training and evaluation call a :class:`Forward` wrapper, so they need not know
whether they run on an H100 in bf16 or on a laptop CPU in fp32.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sim.common.meta import versions
from sim.common.validation import ConfigError  # bad parameters: one error type with sim

from cifar.config import DEVICES, check_device  # noqa: F401  (DEVICES re-exported)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; anything else must be one of DEVICES (or 'cuda:N')."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return torch.device(device)


class Forward(nn.Module):
    """Wraps a network: channels_last input and bf16 autocast when asked; always returns fp32 logits."""

    def __init__(self, net: nn.Module, amp: bool = False, channels_last: bool = False):
        super().__init__()
        self.net = net
        self.amp = amp
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.net(x).float()


@dataclass
class Runtime:
    """Device plus precision settings; ``amp``/``channels_last`` default to on for CUDA only."""

    device: torch.device
    amp: bool
    channels_last: bool

    @classmethod
    def create(cls, device: str = "auto", amp: bool | None = None, channels_last: bool | None = None) -> "Runtime":
        dev = resolve_device(device)
        cuda = dev.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return cls(dev, cuda if amp is None else amp, cuda if channels_last is None else channels_last)

    def wrap(self, net: nn.Module, amp: bool | None = None) -> Forward:
        """Move ``net`` to the device (channels_last on request) and wrap it."""
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return Forward(net, self.amp if amp is None else amp, self.channels_last)

    @contextmanager
    def autotune(self, enabled: bool):
        """cuDNN autotuning (benchmark mode) on or off inside the block. Training keeps one
        batch shape and gains from it; attacks shrink their batches to the surviving points,
        and autotuning every new shape would cost more than it saves."""
        if self.device.type != "cuda":
            yield
            return
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        info = {
            "device": str(self.device),
            "amp_bf16": self.amp,
            "channels_last": self.channels_last,
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "versions": versions(),  # Python, NumPy, Numba, SciPy, the machine and the code's commit (as sim records)
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(gpu=torch.cuda.get_device_name(self.device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                        peak_memory_gib=round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2))
        return info


class StageTimer:
    """Records wall seconds per named stage (synchronising the device so GPU work is counted)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        self.runtime.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.runtime.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
