"""Matplotlib figures (PNG, Agg backend, written atomically): first-layer filters clean vs
adversarial, purification share per layer, low-rank accuracy against rank, and the
robust-accuracy-vs-radius curves of the masking check."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sim.common.figures import save_figure  # noqa: E402


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path)[0]  # PNG, 110 dpi, written atomically (sim's one figure saver)


def filter_grid(w: torch.Tensor, max_filters: int = 64) -> np.ndarray:
    """First-layer filters (out, 3, k, k) -> one RGB mosaic, each filter scaled to [0, 1]
    on its own (symmetric around zero, so grey means zero weight)."""
    w = w[:max_filters].detach().float().cpu()
    n, _, k, _ = w.shape
    scale = w.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    w = (w / scale + 1) / 2
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (k + 1) + 1, cols * (k + 1) + 1, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        grid[1 + r * (k + 1) : 1 + r * (k + 1) + k, 1 + c * (k + 1) : 1 + c * (k + 1) + k] = w[i].permute(1, 2, 0).numpy()
    return grid


def plot_filters(weights: dict[str, torch.Tensor], path: Path, max_filters: int = 64) -> Path:
    """Side-by-side mosaics of first-layer filters, one panel per model (same neuron order)."""
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3.6), squeeze=False)
    for ax, (label, w) in zip(axes[0], weights.items()):
        ax.imshow(filter_grid(w, max_filters), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle("First-layer filters (each scaled to its own max |w|; grey = 0)", fontsize=9)
    return _save(fig, path)


def plot_share(tables: dict[str, list[dict]], path: Path) -> Path:
    """Share of neurons with |beta w'| > |v|, per layer, one line per adversarial model."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for label, layers in tables.items():
        ax.plot([r["share_dominated"] for r in layers], marker="o", ms=3, label=label)
    if tables:
        names = [r["layer"] for r in next(iter(tables.values()))]
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=70, fontsize=6)
    ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share |beta w'| > |v|")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_lowrank(rows: list[dict], reference: dict | None, path: Path) -> Path:
    """Clean and robust accuracy of low-rank fine-tuning against rank (full fine-tuning dashed)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ranks = [r["rank"] for r in rows]
    ax.plot(ranks, [r["clean_acc"] for r in rows], marker="o", label="clean acc")
    ax.plot(ranks, [r["robust_acc"] for r in rows], marker="s", label="robust acc (PGD)")
    if reference:
        ax.axhline(reference["clean_acc"], color="C0", ls="--", lw=0.8, label="full FT clean")
        ax.axhline(reference["robust_acc"], color="C1", ls="--", lw=0.8, label="full FT robust")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("rank r of every update U V^T")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_radius(curves: dict[str, list[dict]], path: Path, norm: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, curve in curves.items():
        ax.plot([c["radius"] for c in curve], [c["acc"] for c in curve], marker="o", ms=3, label=label)
    ax.set_xlabel(f"{norm} radius")
    ax.set_ylabel("PGD accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return _save(fig, path)
