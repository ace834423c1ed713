"""Models: PreActResNet-18 (the usual robustness baseline) and a small fast CNN.

Inputs are images in [0, 1]; normalisation is the first layer, so attacks work in pixel
space and epsilons mean what they say (8/255 is eight grey levels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sim.common.validation import ConfigError  # bad parameters: one error type with sim

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a layer, so models take [0, 1] pixels."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, identity/1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """PreActResNet-18 for 32x32 inputs (as in Wong et al. 2020, Rice et al. 2020)."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        w = width
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers, each of the first three followed by a 2x2 max-pool (so only
    the 3-channel stem runs at full resolution), global max-pool and a linear head: quick
    GPU runs and CPU tests."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        a, b, c = widths
        self.normalize = Normalize()

        def block(cin, cout, pool):
            mods = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*mods, nn.MaxPool2d(2)) if pool else nn.Sequential(*mods)

        self.features = nn.Sequential(block(3, a, True), block(a, b, True), block(b, c, True), block(c, c, False))
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.features(self.normalize(x))
        return self.linear(F.adaptive_max_pool2d(out, 1).flatten(1))


MODELS = {"preact_resnet18": PreActResNet18, "small_cnn": SmallCNN}


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate a model by name (one of MODELS)."""
    if name not in MODELS:
        raise ConfigError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers, in definition order (the ones whose neurons we measure)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> the weight actually used in the forward pass (low-rank updates included),
    detached, fp32, on the CPU, in contiguous (out, in, kh, kw) layout."""
    out = {}
    with torch.no_grad():
        for name, m in weight_layers(unwrap(model)):
            out[name] = m.weight.detach().float().cpu().contiguous().clone()
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a runtime.Forward wrapper (or the model itself)."""
    return getattr(model, "net", model)


def first_conv_name(model: nn.Module) -> str:
    return weight_layers(unwrap(model))[0][0]
