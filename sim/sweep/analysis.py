"""Reading a sweep's results and what is derived from them: the rows indexed by group, model,
metric, norm (Results, load), the C6 window per cell (windows, by sim.claims.c6_window), the
radius of 50 % robust accuracy, and the summary table (summary_markdown). No matplotlib here.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.claims import CLAIMS, c6_window

from . import store
from .spec import LINEAR_MODELS

NETS = ("clean_net", "adv_net", "control_net")
LINEAR = LINEAR_MODELS  # the linear rows of a cell (sim.sweep.job.linear_rows)


@dataclass(frozen=True)
class Thresholds:
    """The claims' thresholds used by the figures, from the one table sim.claims.CLAIMS."""

    c1_clean: float = CLAIMS["C1-clean"].threshold
    c1_robust: float = CLAIMS["C1-robust"].threshold
    c3_clean: float = CLAIMS["C3-clean"].threshold
    c3_robust: float = CLAIMS["C3-robust"].threshold
    c5_robust: float = CLAIMS["C5-linear"].threshold


# --------------------------------------------------------------------------------------------
# Reading and grouping


class Results:
    """The rows of a sweep's table, indexed for plotting."""

    def __init__(self, rows: list[dict], sweep_dir: Path | None = None, meta: dict | None = None):
        for r in rows:  # a cell listed under two labels (two series) is drawn in both
            r["_g"] = f"{r['label']}\x1f{r['group']}"
        self.rows = rows
        self.dir = sweep_dir
        self.meta = meta or {}
        self.name = rows[0]["sweep"] if rows else self.meta.get("name", "sweep")
        self.groups = list(dict.fromkeys(r["_g"] for r in rows))
        self.config = {}
        for r in rows:
            self.config.setdefault(r["_g"], {k: v for k, v in r.items() if k not in store.HEAD})
        self.label = {}
        for r in rows:
            self.label.setdefault(r["_g"], r["label"])
        self.norms = [n for n in dict.fromkeys(r["norm"] for r in rows) if n]
        self.x = self._x_field()
        self.series = self._series()
        self.index = defaultdict(list)
        for r in rows:
            self.index[(r["_g"], r["model"], r["metric"], r["norm"])].append(r)

    def _varying(self) -> list[str]:
        keys = list(self.config[self.groups[0]]) if self.groups else []
        return [k for k in keys if k != "run.data.seed"
                and len({json.dumps(c[k], sort_keys=True) for c in self.config.values()}) > 1]

    def _x_field(self):
        var = self._varying()
        if "run.data.d" in var:
            return "run.data.d"
        for k in var:
            if all(isinstance(c[k], (int, float)) and not isinstance(c[k], bool) for c in self.config.values()):
                return k
        return None

    def _series(self) -> dict:
        """group -> series name: its label, or the varying fields not fixed by x."""
        if any(self.label.values()):
            return {g: self.label[g] or "(unlabelled)" for g in self.groups}
        out = {}
        keys = []
        for k in self._varying():
            if k == self.x:
                continue
            by_x = defaultdict(set)
            for c in self.config.values():
                by_x[json.dumps(c.get(self.x))].add(json.dumps(c[k], sort_keys=True))
            if any(len(v) > 1 for v in by_x.values()):
                keys.append(k)
        for g in self.groups:
            c = self.config[g]
            out[g] = ", ".join(f"{k.split('.')[-1]}={_short(c[k])}" for k in keys) or "all"
        return out

    def xval(self, g):
        return self.config[g].get(self.x) if self.x else None

    def get(self, g, model, metric, norm) -> list[dict]:
        return self.index.get((g, model, metric, norm), [])

    def by_tau(self, g, model, metric, norm) -> dict:
        """tau -> list of values over seeds."""
        out = defaultdict(list)
        for r in self.get(g, model, metric, norm):
            if not math.isnan(r["tau"]):
                out[r["tau"]].append(r["value"])
        return dict(sorted(out.items()))

    def cell_value(self, g, cell, model, metric, norm) -> float:
        """The value of one row of one cell (its hash) of group g; nan if the cell has no such row."""
        v = [r["value"] for r in self.get(g, model, metric, norm) if r["cell"] == cell]
        return v[0] if v else math.nan

    def adv_diverged(self, g, norm, cell=None) -> bool:
        """Whether adversarial training killed the network, in one cell of group g (cell: its hash)
        or in any seed of g (cell=None). The cell's own record decides: its adv_diverged row (the
        held-out clean accuracy below sim.train.adversarial.DIVERGED_CLEAN_ACC at the run's end);
        a cell recorded before that row existed is judged by the same rule on its test clean
        accuracy."""
        from sim.train.adversarial import DIVERGED_CLEAN_ACC

        cells = [cell] if cell is not None else list(dict.fromkeys(r["cell"] for r in self.rows if r["_g"] == g))
        for c in cells:
            rec = self.cell_value(g, c, "adv_net", "adv_diverged", norm)
            if math.isnan(rec):  # recorded before the row existed (a cell with no clean_acc row: not dead)
                rec = self.cell_value(g, c, "adv_net", "clean_acc", norm) < DIVERGED_CLEAN_ACC
            if rec:
                return True
        return False

    def seeds_of(self, g) -> list[int]:
        return sorted({r["seed"] for r in self.rows if r["_g"] == g})

    def cells_of(self, groups) -> list[str]:
        gs = set(groups)
        return sorted({r["cell"] for r in self.rows if r["_g"] in gs})

    def train_tau(self, g, norm) -> float:
        return float(self.config[g]["tau_l2" if norm == "l2" else "tau_linf"])

    def ordered_series(self) -> list[str]:
        return list(dict.fromkeys(self.series[g] for g in self.groups))


def _gname(g: str) -> str:
    """A group key (label, seed-free hash) as text."""
    label, _, group = g.partition("\x1f")
    return f"{label} {group[:8]}".strip()


def _short(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def load(path) -> Results:
    """A sweep directory or a results.csv."""
    path = Path(path)
    sweep_dir = path if path.is_dir() else (path.parent if (path.parent / "cells").is_dir() else None)
    rows = store.read_table(path)
    meta = {}
    if sweep_dir is not None and (sweep_dir / "sweep.json").exists():
        meta = json.loads((sweep_dir / "sweep.json").read_text())
    if not rows:
        raise ValueError(f"{path}: the table has no rows (no finished cells)")
    return Results(rows, sweep_dir, meta)


# --------------------------------------------------------------------------------------------
# Derived quantities: the C6 window


def radius_at(curve: dict, level: float = 0.5) -> float:
    """The radius where a robust-accuracy curve {tau: acc} first falls below `level`
    (interpolated linearly in log tau); the smallest radius if it starts below, inf if it
    never falls below within the grid."""
    t = sorted(curve)
    if not t or curve[t[0]] < level:
        return t[0] if t else math.nan
    for a, b in zip(t, t[1:]):
        if curve[b] < level:
            f = (curve[a] - level) / (curve[a] - curve[b])
            return math.exp(math.log(a) + f * (math.log(b) - math.log(a)))
    return math.inf


def windows(res: Results, norm: str) -> list[dict]:
    """Per cell (seed): tau_C1, tau_lin, tau_C3, the window's lower end and width (sim.claims.c6_window)."""
    out = []
    cells = list(dict.fromkeys((r["_g"], r["cell"], r["seed"]) for r in res.rows))
    for g, cell, seed in cells:
        def curve(model, metric="robust_acc"):
            return {r["tau"]: r["value"] for r in res.get(g, model, metric, norm) if r["cell"] == cell}

        def clean(model):
            v = [r["value"] for r in res.get(g, model, "clean_acc", norm if model != "clean_net" else "")
                 if r["cell"] == cell and r["tau"] == 0.0]
            return v[0] if v else math.nan

        cn = curve("clean_net")
        if not cn:
            continue
        taus = sorted(cn)
        lin = [c for c in (curve(m) for m in LINEAR) if c]
        an = curve("adv_net")
        w = c6_window(taus, cn, lin, an, clean("clean_net"), clean("adv_net") if an else math.nan)
        out.append({"group": g, "cell": cell, "seed": seed, "series": res.series[g], "x": res.xval(g), "norm": norm,
                    **w,
                    "max_radius": max(taus), "min_radius": min(taus), "r50_clean_net": radius_at(cn),
                    "r50_adv_net": radius_at(an) if an else math.nan,
                    "r50_linear": max((radius_at(c) for c in lin), default=math.nan)})
    return out


def _agg(ws, key):
    """mean, sd over seeds, and whether any seed was off the grid (inf / 0)."""
    v = np.array([w[key] for w in ws], float)
    fin = v[np.isfinite(v)]
    if len(fin) < len(v):
        return math.inf, 0.0
    return float(fin.mean()), float(fin.std())



def _fmt_tau(v):
    return "inf" if v == math.inf else f"{v:.3g}"


def summary_markdown(res: Results) -> str:
    lines = [f"# Sweep {res.name}: summary", ""]
    for norm in res.norms:
        ws = windows(res, norm)
        lines += [f"## {norm}: the window (max(tau_C1, tau_lin), tau_C3] (mean ± sd over seeds)", "",
                  f"| series | {res.x or 'cell'} | seeds | tau_C1 | tau_lin | tau_C3 | width | clean net clean / "
                  "robust at tau | adv. net clean / robust at tau | best linear robust at tau | radius of 50 % robust "
                  "accuracy: clean net / adv. net / best linear |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in res.ordered_series():
            for g in sorted((g for g in res.groups if res.series[g] == s), key=lambda g: res.xval(g) or 0):
                w = [x for x in ws if x["group"] == g]
                if not w:
                    continue
                tau = res.train_tau(g, norm)

                def at(model, metric, nm=norm, t=tau):
                    v = [r["value"] for r in res.get(g, model, metric, nm) if r["tau"] == t]
                    return f"{np.mean(v):.3f}" if v else "-"

                lin = [max(vals) for vals in zip(*[[r["value"] for r in res.get(g, m, "robust_acc", norm)
                                                   if r["tau"] == tau] for m in LINEAR]) if vals]

                def ms(key):
                    mu, sd = _agg(w, key)
                    return _fmt_tau(mu) + ("" if not math.isfinite(mu) or len(w) < 2 else
                                           f" ± {sd if sd > 1e-9 * abs(mu) else 0.0:.2g}")

                lines.append(f"| {s} | {_short(res.xval(g)) if res.x else _gname(g)} | {len(w)} | {ms('tau_C1')} | "
                             f"{ms('tau_lin')} | {ms('tau_C3')} | {np.mean([x['width'] for x in w]):.3g} | "
                             f"{at('clean_net', 'clean_acc', '', 0.0)} / {at('clean_net', 'robust_acc')} | "
                             f"{at('adv_net', 'clean_acc', norm, 0.0)} / {at('adv_net', 'robust_acc')} | "
                             f"{np.mean(lin) if lin else float('nan'):.3f} | "
                             + " / ".join(_fmt_tau(float(np.mean([x[k] for x in w])))
                                          for k in ("r50_clean_net", "r50_adv_net", "r50_linear")) + " |")
        lines.append("")
    lines += ["Thresholds: " + ", ".join(f"{k} {v}" for k, v in Thresholds().__dict__.items()) + ".", ""]
    return "\n".join(lines)
