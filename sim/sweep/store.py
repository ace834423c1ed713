"""The results store of a sweep: cell directories and the tidy table rebuilt from them.

    OUT/sweep.json                   the spec, its cells (label, hash, seed, assignments), the
                                     commands and commits that ran it
    OUT/cells/HASH/config.json       the cell's full config
    OUT/cells/HASH/metrics_*.jsonl   clean and adversarial training logs
    OUT/cells/HASH/pictures.npz      the weights in the dictionary basis (a few neurons and atoms)
    OUT/cells/HASH/weights.npz       all weights (only with save_weights)
    OUT/cells/HASH/result.json       rows, timings, versions: written last; its presence
                                     (valid, with the cell's hash) is what "finished" means
    OUT/cells/HASH/failed.json       the error of a failed cell (removed when it succeeds)
    OUT/results.csv                  one row per cell, seed, model, metric (and radius), with
                                     the config columns (dotted names)
    OUT/summary.json                 the last run's counts, failures and wall time

A results table committed beside the figures (export_table, e.g. figures/phase_results.csv.gz)
holds every finished cell's rows: restore_cells rebuilds their result.json from it, so that a
fresh clone resumes a long sweep instead of running it again (the logs and pictures are not in the
table and are not restored).

Every file is written atomically (sim.common.files), so a sweep killed at any moment leaves
finished cells whole; anything else in a cell directory is redone.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from sim.common.files import atomic_save_npz, atomic_write_bytes, atomic_write_json

HEAD = ("sweep", "label", "cell", "group", "seed", "model", "metric", "norm", "tau", "value")


def default_out(spec) -> Path:
    """A sweep's directory when none is given: runs/sweeps/NAME (relative to the working directory)."""
    return Path("runs") / "sweeps" / spec.name


def cell_dir(out, h: str) -> Path:
    return Path(out) / "cells" / h


def read_result(out, h: str) -> dict | None:
    """The finished result of cell h, or None (missing, cut short, or another cell's)."""
    try:
        res = json.loads((cell_dir(out, h) / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(res, dict) or res.get("hash") != h or res.get("status") != "ok":
        return None
    return res


def read_failure(out, h: str) -> dict:
    try:
        return json.loads((cell_dir(out, h) / "failed.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def cell_state(out, h: str) -> str:
    """'done', 'failed' or 'todo'."""
    if read_result(out, h) is not None:
        return "done"
    if (cell_dir(out, h) / "failed.json").exists():
        return "failed"
    return "todo"


def _clean_tmp(d: Path) -> None:
    for tmp in d.glob(".*.tmp"):  # left by a write that was killed half-way
        try:
            tmp.unlink()
        except OSError:
            pass


def write_cell(out, point, res: dict) -> None:
    """Write a finished cell: everything else first, result.json last."""
    d = cell_dir(out, point.hash)
    d.mkdir(parents=True, exist_ok=True)
    _clean_tmp(d)
    atomic_write_json(d / "config.json", point.config.to_dict())
    for name, rows in res.get("logs", {}).items():
        atomic_write_bytes(d / f"metrics_{name}.jsonl",
                           "".join(json.dumps(r, default=float) + "\n" for r in rows).encode())
    if res.get("pictures"):
        atomic_save_npz(d / "pictures.npz", **res["pictures"])
    if res.get("weights"):
        atomic_save_npz(d / "weights.npz", **res["weights"])
    doc = {k: v for k, v in res.items() if k not in ("logs", "pictures", "weights")}
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(d / "result.json", doc)
    try:
        (d / "failed.json").unlink()
    except FileNotFoundError:
        pass


def write_failure(out, point, res: dict) -> None:
    d = cell_dir(out, point.hash)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "config.json", point.config.to_dict())
    atomic_write_json(d / "failed.json", {"hash": point.hash, "error": res.get("error"),
                                          "traceback": res.get("traceback"), "host": res.get("host"),
                                          "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def write_sweep_json(out, spec, command=None, commit=None) -> None:
    from sim.common.meta import versions

    path = Path(out) / "sweep.json"
    history = []
    try:
        history = json.loads(path.read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    history.append({"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **(commit or {}),
                    "versions": versions()})
    atomic_write_json(path, {
        "name": spec.name, "description": spec.description, "spec_path": spec.path, "spec": spec.raw,
        "varying": spec.varying_fields(),
        "points": [{"index": p.index, "label": p.label, "hash": p.hash, "group": p.group, "seed": p.seed,
                    "assignments": json.loads(json.dumps(p.assignments, default=str))} for p in spec.points],
        "runs": history})


def finish_run(out, summary: dict) -> None:
    """Record a finished run's summary (wall time, cells run, failures) in sweep.json."""
    path = Path(out) / "sweep.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if doc.get("runs"):
        doc["runs"][-1].update({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                **{k: summary[k] for k in ("seconds", "ran", "skipped", "total", "cell_seconds",
                                                           "cell_cpu_seconds") if k in summary},
                                "failed": [f["hash"] for f in summary.get("failed", [])]})
        atomic_write_json(path, doc)


def _config_columns(config: dict) -> dict:
    from sim.common.overrides import flatten

    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(config).items()}


def table_rows(out, spec) -> list[dict]:
    """The tidy rows of every finished cell of the spec, in the spec's order."""
    rows, cache = [], {}
    for p in spec.points:
        if p.hash not in cache:
            cache[p.hash] = read_result(out, p.hash)
        res = cache[p.hash]
        if res is None:
            continue
        cfg = _config_columns(res["config"])
        for r in res["rows"]:
            rows.append({"sweep": spec.name, "label": p.label, "cell": p.hash, "group": p.group, "seed": p.seed,
                         **r, **cfg})
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_table(out, spec) -> Path:
    """Rebuild OUT/results.csv from the finished cells (atomically)."""
    rows = table_rows(out, spec)
    cfg_cols = sorted({k for r in rows for k in r if k not in HEAD})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(HEAD) + cfg_cols)
    for r in rows:
        w.writerow([_fmt(r.get(k)) for k in HEAD] + [_fmt(r.get(k)) for k in cfg_cols])
    path = Path(out) / "results.csv"
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _parse(key: str, text: str):
    if key in ("tau", "value"):
        return float(text) if text != "" else math.nan
    if key == "seed":
        return int(text)
    if key in HEAD:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_table(path) -> list[dict]:
    """The rows of a results.csv or results.csv.gz (or OUT/results.csv of a sweep directory), typed."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        return [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]


def export_table(out, dest) -> Path:
    """A copy of OUT/results.csv, gzip-compressed if dest ends in .gz (reproducibly: no
    time stamp), e.g. to commit a sweep's results beside its figures."""
    data = (Path(out) / "results.csv").read_bytes()
    dest = Path(dest)
    if dest.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
            gz.write(data)
        data = buf.getvalue()
    atomic_write_bytes(dest, data)
    return dest


def read_pictures(out, h: str) -> dict | None:
    try:
        with np.load(cell_dir(out, h) / "pictures.npz") as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None


def restore_cells(out, spec, table) -> dict:
    """Rebuild the finished cells of `spec` in OUT from a results table (read_table's input):
    every cell of the spec that has rows in the table and no valid result.json in OUT is written
    by write_cell, marked "restored_from". The table's config columns must be the cell's config
    (else SweepSpecError naming the cell: the table is another spec's). Cells already finished in
    OUT are left as they are. Returns {"restored": [hashes], "kept": [hashes], "missing": [hashes]}."""
    from .spec import CELL_SCHEMA, SweepSpecError

    by_cell: dict[str, list[dict]] = {}
    first_label: dict[str, str] = {}  # a cell drawn in two series is in the table once per label
    for r in read_table(table):
        h = str(r["cell"])
        if first_label.setdefault(h, r["label"]) == r["label"]:
            by_cell.setdefault(h, []).append(r)
    report = {"restored": [], "kept": [], "missing": []}
    seen = set()
    for p in spec.points:
        if p.hash in seen:
            continue
        seen.add(p.hash)
        if read_result(out, p.hash) is not None:
            report["kept"].append(p.hash)
            continue
        rows = by_cell.get(p.hash)
        if not rows:
            report["missing"].append(p.hash)
            continue
        # read_table parsed the table's columns; parse the cell's own the same way
        want = {k: _parse(k, v) for k, v in _config_columns(p.config.to_dict()).items()}
        diff = sorted(k for k, v in want.items() if k not in rows[0] or rows[0][k] != v)
        if diff:
            raise SweepSpecError(f"table {str(table)!r} is invalid for cell {p.hash}: its config differs in "
                                 f"{', '.join(diff[:5])}; allowed a table written by this spec's sweep")
        cell_rows = [{"model": r["model"], "metric": r["metric"], "norm": r["norm"],
                      "tau": None if math.isnan(r["tau"]) else r["tau"], "value": r["value"]} for r in rows]
        write_cell(out, p, {"status": "ok", "schema": CELL_SCHEMA, "hash": p.hash, "config": p.config.to_dict(),
                            "rows": cell_rows, "timings": {}, "restored_from": str(table)})
        report["restored"].append(p.hash)
    return report


def restore_record(out, spec, table, command: str | None = None) -> None:
    """OUT/sweep.json after a restore: the runs recorded in the sweep record committed beside the
    table (NAME_sweep.json beside NAME_results.csv.gz, as `python -m sim plot` writes them), if
    OUT has none, then this restore as one more run."""
    from sim.common.meta import git_commit

    path = Path(out) / "sweep.json"
    table = Path(table)
    stem = table.name.removesuffix(".gz").removesuffix(".csv").removesuffix("results")
    sibling = table.with_name(stem + "sweep.json")
    if not path.exists() and stem.endswith("_") and sibling.is_file():
        try:
            runs = json.loads(sibling.read_text()).get("runs", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            runs = []
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"runs": runs})
    write_sweep_json(out, spec, command=command, commit=git_commit())
