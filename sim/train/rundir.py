"""Run directories: an interrupted run loses no finished result.

A run directory holds config.json, metrics.jsonl (one JSON object a line, appended
and flushed as training goes), snapshots/step_NNNNNNN.npz (each written to a temporary
file and renamed into place), weights.npz and data.json (acceptance rates and
checksums that prove the data regenerate exactly from the config).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sim.common.files import atomic_write_text
from sim.common.files import jsonable as _jsonable


def array_digest(a: np.ndarray) -> str:
    """sha256 of an array's float64 bytes: a fingerprint of the data."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


class MetricsLog:
    """Append-only JSONL log, flushed each line (a killed run keeps every logged step)."""

    def __init__(self, path: Path | None, keep: list[dict] | None = None):
        """keep: rows of an earlier part of the run (resuming): the file is rewritten with
        them (atomically), and new rows are appended after them."""
        self.path = Path(path) if path is not None else None
        self.rows: list[dict] = list(keep or [])
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in self.rows))
            self._fh = open(self.path, "a")

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            self._fh.write(json.dumps(row, default=_jsonable) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self.path is not None:
            self._fh.close()


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL log, ignoring a last line cut short by an interruption."""
    rows = []
    with open(path) as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows
