"""Saving a matplotlib figure: PNG (and SVG), written atomically, with a JSON sidecar that
names the command and the commit that made it.

The SVG carries no date, so a figure remade from the same data is the same file.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

from .files import atomic_write_bytes, atomic_write_json

FORMAT_OPTIONS = {"png": {"dpi": 110}, "svg": {"metadata": {"Date": None}}}


def save_figure(fig, path, formats=("png",), sidecar: dict | None = None) -> list[Path]:
    """Write fig to path (its suffix is replaced by each format), close it, and, when a sidecar
    dict is given, write STEM.json with it plus the figure's name and files. Returns the paths."""
    import matplotlib.pyplot as plt

    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".png", ".svg", ".json") else path
    paths = []
    try:
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, bbox_inches="tight", **FORMAT_OPTIONS[fmt])
            target = stem.parent / f"{stem.name}.{fmt}"
            atomic_write_bytes(target, buf.getvalue())
            paths.append(target)
    finally:
        plt.close(fig)
    if sidecar is not None:
        side = stem.parent / f"{stem.name}.json"
        atomic_write_json(side, {**sidecar, "figure": stem.name, "files": [p.name for p in paths]})
        paths.append(side)
    return paths


def sidecar(command: str, **extra) -> dict:
    """The sidecar's common part: the command, the commit of the checkout and the time."""
    from .meta import git_commit

    return {"command": command, "commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
