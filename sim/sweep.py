"""`python -m sim sweep SPEC.toml`: sweeps over any config field, with seeds, resumable, in parallel.

A sweep spec (TOML) names a grid (and/or a list) of cells. A cell is a `CellConfig` (every
field of `sim.verify.VerifyConfig`, with dotted names such as `run.data.d`, `tau_l2`,
`run.model.beta`, plus the options of the sweep job below) with one seed
(`run.data.seed`). Each cell is keyed by a hash of its full, validated config; its job
(`run_cell`) trains the clean network, adversarially trains it, attacks both at every
radius, measures the weights, fits the linear models (and optionally the C5 lower-bound
models) and returns tidy rows {model, metric, norm, tau, value}. The driver writes
`OUT/cells/<hash>/` (config.json, metrics logs, weight pictures, and result.json last,
atomically: a cell is finished iff its result.json is there), then rebuilds the table
`OUT/results.csv` (one row per cell, seed, model, metric, radius; with the config columns)
from the finished cells. Killed at any moment and started again, a sweep skips the
finished cells and redoes the rest; a half-written cell has no result.json and is redone.

Spec format::

    [sweep]
    name = "scaling"            # default: the file's stem
    description = "..."
    seeds = [0, 1, 2]           # sets run.data.seed (default: the config's seed)

    [base]                      # fields for every cell (dotted keys or nested tables)
    tau_l2 = 0.25
    norms = ["l2"]
    "run.data.n_train" = {expr = "min(6000, 4 * d)"}   # expressions of other fields

    [grid]                      # the cartesian product of these lists
    "run.data.d" = [256, 512, 1024]
    "run.data.k" = [{value = 4.0, label = "k=4"}, {expr = "d ** 0.25", label = "k=d^0.25"}]

    [[cells]]                   # optional list of cells (each crossed with the grid)
    label = "small bias"
    "run.model.beta" = 0.05

Expressions ({expr = "..."}) use numbers, + - * / // % **, min max round int float abs
sqrt log log2 ceil floor, and field names: dotted (`run.data.d`) or bare (`d`, looked up
in run.data, run.model, run.train, then the top level). Labels name the series of the
figures (`python -m sim plot`). An invalid spec (unknown field, empty grid, wrong type or
value) fails before anything runs, with an error naming the field.

Execution: local worker processes (`--workers P`, `--threads T` Numba threads each,
P x T <= the cores this process may use), or a Dask distributed cluster
(`--scheduler ADDRESS`; start workers with `dask worker ADDRESS --nthreads 1`). Inside a
job BLAS runs single-threaded and the Numba kernels and blocked products give the same
bits for any thread count, so the table does not depend on where or how a cell ran. A job
that raises marks its cell failed (failed.json with the error); a local worker process
that dies is retried alone, and marked failed if it dies again; the sweep goes on and its
summary lists the failures (exit status 1). Failed cells are retried on the next run.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .config import _NESTED, ConfigError, RunConfig, _check_choice, _check_int, _check_real
from .verify import VerifyConfig

CELL_SCHEMA = "sim.sweep.cell/1"  # part of every hash: bump when run_cell's rows change meaning
CERTIFY_METHODS = ("interval", "linear", "dual", "best")
LINEAR_MODELS = ("linear_clean", "linear_best_robust", "linear_bayes")


class SweepSpecError(ConfigError):
    """An invalid sweep spec; the message names the field and the section."""


# --------------------------------------------------------------------------------------------
# The cell config


@dataclass(frozen=True)
class CellConfig(VerifyConfig):
    """One sweep cell: every VerifyConfig field, plus what the sweep job measures.

    radii: multiples of the training radius (tau_l2 / tau_linf) at which every model is
    attacked (the robust-accuracy-against-radius curves); 1.0 should be among them.
    n_eval, pgd_steps, pgd_restarts: the attacked test points and the PGD of every robust
    evaluation (FGM, PGD, the dense attack along M w*, random_draws random points, as
    sim.attacks.evaluate_robustness). certify (VerifyConfig's switch): sound lower bounds on
    the networks' robust accuracy at every radius (sim.certify.certify_radii with
    certify_method, certify_steps steps of dual ascent for 'dual' / 'best'; ReLU networks
    only). exact_samples / exact_time_limit (VerifyConfig's exact verifier) are not used.
    linear_models: the linear models' exact robust accuracy at every radius (logistic
    regression, the best robust linear classifier fitted at each radius, and M w*).
    lower_bound: the C5 table (sim.lowerbound) at the radii lower_bound_radii (multiples
    of tau), budget lower_bound_scale, training sets lower_bound_factors x N (costly).
    control: also train on random noise of the same radius (robust accuracy at tau).
    save_weights: keep W_init, W_clean and W_adv (large at big d); a small picture of the
    weights in the dictionary basis is always kept.
    """

    lower_bound: bool = False
    radii: tuple = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    random_draws: int = 2
    certify_method: str = "interval"
    certify_steps: int = 30
    linear_models: bool = True
    lower_bound_radii: tuple = (1.0,)
    lower_bound_factors: tuple = (1,)
    control: bool = False
    save_weights: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.radii:
            raise ConfigError("radii=() is invalid: allowed a non-empty list of positive multiples of tau")
        for r in self.radii:
            _check_real("radii[]", r, lo=0, lo_open=True)
        _check_int("random_draws", self.random_draws, lo=0)
        _check_choice("certify_method", self.certify_method, CERTIFY_METHODS)
        _check_int("certify_steps", self.certify_steps, lo=1)
        for name in ("certify", "linear_models", "control", "save_weights", "lower_bound"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: allowed true or false")
        object.__setattr__(self, "lower_bound_radii", tuple(self.lower_bound_radii))
        for r in self.lower_bound_radii:
            _check_real("lower_bound_radii[]", r, lo=0, lo_open=True)
        object.__setattr__(self, "lower_bound_factors", tuple(self.lower_bound_factors))
        if not self.lower_bound_factors:
            raise ConfigError("lower_bound_factors=() is invalid: allowed a non-empty list of integers >= 1")
        for f in self.lower_bound_factors:
            _check_int("lower_bound_factors[]", f, lo=1)


_NESTED[("CellConfig", "run")] = RunConfig


def _leaf_types(cls, prefix="") -> dict[str, str]:
    """Dotted field name -> its annotation (a string, from __future__ annotations)."""
    out = {}
    for f in fields(cls):
        sub = _NESTED.get((cls.__name__, f.name))
        if sub is not None:
            out.update(_leaf_types(sub, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = str(f.type)
    return out


FIELD_TYPES = _leaf_types(CellConfig)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config dict -> {dotted name: value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(d: dict, path: str, value) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


def _normalise(path: str, value):
    """TOML values -> config values: ints given for float fields become floats (so that
    k = 4 and k = 4.0 are one config with one hash), lists become lists."""
    typ = FIELD_TYPES.get(path, "")
    if "float" in typ and "int" not in typ and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def default_dict() -> dict:
    """CellConfig() as a dict, with the fields that DataConfig derives from others left
    unset (D = d, margin from the magnitude), so that a spec setting d gets D = d."""
    d = CellConfig().to_dict()
    d["run"]["data"]["D"] = None
    d["run"]["data"]["margin"] = None
    return d


def config_hash(cfg: CellConfig) -> str:
    """The cell's key: sha256 of the canonical JSON of its full config (16 hex digits)."""
    doc = json.dumps({"schema": CELL_SCHEMA, "config": cfg.to_dict()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def group_hash(cfg: CellConfig) -> str:
    """The hash of the config with the seed set to 0: cells that differ only by seed share it."""
    return config_hash(cfg.replace(run=cfg.run.replace(data=cfg.run.data.replace(seed=0))))


# --------------------------------------------------------------------------------------------
# Sweep specs

_FUNCS = {"min": min, "max": max, "round": round, "int": int, "float": float, "abs": abs, "sqrt": math.sqrt,
          "log": math.log, "log2": math.log2, "ceil": math.ceil, "floor": math.floor}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b}
_SEARCH = ("run.data.", "run.model.", "run.train.", "")


@dataclass(frozen=True)
class Expr:
    """A value computed from other fields of the same cell, e.g. {expr = "d ** 0.25"}."""

    text: str
    where: str  # the field it sets and the section, for error messages

    def _tree(self):
        try:
            return ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise SweepSpecError(f"{self.where}: expression {self.text!r} is not valid: {exc.msg}") from None

    def names(self) -> set[str]:
        """The dotted field names the expression reads."""
        out = set()
        for node in ast.walk(self._tree()):
            if isinstance(node, (ast.Name, ast.Attribute)):
                path = _dotted(node)
                if path is not None and path not in _FUNCS:
                    out.add(self.resolve(path))
        return out

    def resolve(self, name: str) -> str:
        for pre in _SEARCH if "." not in name else ("",):
            if pre + name in FIELD_TYPES:
                return pre + name
        raise SweepSpecError(f"{self.where}: expression {self.text!r} reads unknown field {name!r}")

    def evaluate(self, values: dict):
        def ev(node):
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                    and not isinstance(node.value, bool):
                return node.value
            if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
                return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
                v = ev(node.operand)
                return -v if isinstance(node.op, ast.USub) else v
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS \
                    and not node.keywords:
                return _FUNCS[node.func.id](*[ev(a) for a in node.args])
            path = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
            if path is not None:
                v = values[self.resolve(path)]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SweepSpecError(f"{self.where}: expression {self.text!r} reads {path}={v!r}, not a number")
                return v
            raise SweepSpecError(f"{self.where}: expression {self.text!r}: {ast.unparse(node)!r} is not allowed "
                                 "(numbers, + - * / // % **, field names and " + ", ".join(_FUNCS) + ")")

        try:
            return ev(self._tree())
        except SweepSpecError:
            raise
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise SweepSpecError(f"{self.where}: expression {self.text!r} failed: {exc}") from None


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _check_field(path: str, where: str) -> None:
    if path not in FIELD_TYPES:
        near = difflib.get_close_matches(path, FIELD_TYPES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SweepSpecError(f"unknown field {path!r} in {where}{hint} (fields: the dotted names of "
                             "sim.sweep.CellConfig, e.g. run.data.d, run.model.beta, tau_l2)")


_LEAF_KEYS = {"expr", "value", "label"}


def _is_leaf(v) -> bool:
    return isinstance(v, dict) and bool(v) and set(v) <= _LEAF_KEYS and ("expr" in v or "value" in v)


def _flat_section(d: dict, where: str, prefix: str = "", reserved=()) -> dict:
    """A spec table -> {dotted field: value | leaf dict}; nested tables are walked."""
    out = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if not prefix and k in reserved:
            continue
        if isinstance(v, dict) and not _is_leaf(v):
            if not v:
                raise SweepSpecError(f"{where}: {path!r} is an empty table")
            out.update(_flat_section(v, where, f"{path}."))
        else:
            _check_field(path, where)
            out[path] = v
    return out


def _leaf(path: str, v, where: str):
    """A spec value -> (value or Expr, label or None)."""
    if isinstance(v, dict):
        if not _is_leaf(v) or ("expr" in v and "value" in v):
            raise SweepSpecError(f"{where}: {path} = {v!r}: a table value must be {{value = ..., label = ...}} "
                                 "or {expr = \"...\", label = ...}")
        label = v.get("label")
        if label is not None and not isinstance(label, str):
            raise SweepSpecError(f"{where}: {path}: label={label!r} is not a string")
        if "expr" in v:
            if not isinstance(v["expr"], str):
                raise SweepSpecError(f"{where}: {path}: expr={v['expr']!r} is not a string")
            return Expr(v["expr"], f"{path} in {where}"), label
        return v["value"], label
    return v, None


@dataclass(frozen=True)
class Point:
    """One cell of a sweep: its labels, its validated config and its keys."""

    index: int
    label: str
    config: CellConfig
    hash: str
    group: str
    assignments: dict = field(hash=False, compare=False)

    @property
    def seed(self) -> int:
        return self.config.run.data.seed

    def cost(self) -> float:
        return cell_cost(self.config)


@dataclass
class SweepSpec:
    name: str
    description: str
    points: list
    raw: dict
    path: str | None = None

    def varying_fields(self) -> list[str]:
        """Dotted fields whose value differs between points (the seed excluded)."""
        flat = [flatten(p.config.to_dict()) for p in self.points]
        keys = [k for k in flat[0] if k != "run.data.seed"] if flat else []
        return [k for k in keys if len({json.dumps(f[k], sort_keys=True) for f in flat}) > 1]


_SPEC_SECTIONS = ("sweep", "base", "grid", "cells")
_SWEEP_KEYS = ("name", "description", "seeds")


def parse_spec(raw: dict, name: str = "sweep", path: str | None = None) -> SweepSpec:
    """Validate a spec dict (as read from TOML) and build every cell's config."""
    if not isinstance(raw, dict):
        raise SweepSpecError("a sweep spec is a table with sections [sweep], [base], [grid], [[cells]]")
    for k in raw:
        if k not in _SPEC_SECTIONS:
            raise SweepSpecError(f"unknown section [{k}] in the sweep spec; allowed: "
                                 + ", ".join(f"[{s}]" for s in _SPEC_SECTIONS))
    head = raw.get("sweep", {})
    if not isinstance(head, dict):
        raise SweepSpecError("[sweep] must be a table")
    for k in head:
        if k not in _SWEEP_KEYS:
            raise SweepSpecError(f"unknown key {k!r} in [sweep]; allowed: {', '.join(_SWEEP_KEYS)}")
    name = head.get("name", name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise SweepSpecError(f"[sweep] name={name!r} is invalid: allowed a non-empty string without / or spaces")
    description = head.get("description", "")
    if not isinstance(description, str):
        raise SweepSpecError(f"[sweep] description={description!r} is invalid: allowed a string")
    seeds = head.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise SweepSpecError(f"[sweep] seeds={seeds!r} is invalid: allowed a non-empty list of integers >= 0")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise SweepSpecError(f"[sweep] seeds: {s!r} is invalid: allowed integers >= 0")
        if len(set(seeds)) != len(seeds):
            raise SweepSpecError(f"[sweep] seeds={seeds!r} repeats a seed")

    base_raw = raw.get("base", {})
    if not isinstance(base_raw, dict):
        raise SweepSpecError("[base] must be a table")
    base = {k: _leaf(k, v, "[base]") for k, v in _flat_section(base_raw, "[base]").items()}
    for k, (v, lab) in base.items():
        if lab is not None:
            raise SweepSpecError(f"[base]: {k}: labels belong in [grid] or [[cells]]")

    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise SweepSpecError("[grid] must be a table of lists")
    grid = {}
    for k, vals in _flat_section(grid_raw, "[grid]").items():
        if not isinstance(vals, list):
            raise SweepSpecError(f"[grid] {k} = {vals!r}: expected a list of values")
        if not vals:
            raise SweepSpecError(f"[grid] {k} is an empty list: the grid would have no cells")
        grid[k] = [_leaf(k, v, "[grid]") for v in vals]

    cells_raw = raw.get("cells", [{}])
    if not isinstance(cells_raw, list) or not cells_raw:
        raise SweepSpecError("[[cells]] must be a non-empty list of tables")
    cells = []
    for i, c in enumerate(cells_raw):
        where = f"[[cells]] #{i + 1}"
        if not isinstance(c, dict):
            raise SweepSpecError(f"{where} must be a table")
        label = c.get("label")
        if label is not None and not isinstance(label, str):
            raise SweepSpecError(f"{where}: label={label!r} is not a string")
        over = {k: _leaf(k, v, where)[0] for k, v in _flat_section(c, where, reserved=("label",)).items()}
        cells.append((label, over, where))

    seed_fields = [src for src, keys in (("[base]", base), ("[grid]", grid)) if "run.data.seed" in keys]
    seed_fields += [w for _, over, w in cells if "run.data.seed" in over]
    if seeds is not None and seed_fields:
        raise SweepSpecError(f"run.data.seed is set in {seed_fields[0]} and by [sweep] seeds: set it in one place")

    default = default_dict()
    points, seen = [], {}
    keys = list(grid)
    for label, over, where in cells:
        for combo in itertools.product(*(grid[k] for k in keys)):
            assign = {k: v for k, (v, _) in base.items()}
            assign.update(over)
            assign.update({k: v for k, (v, _) in zip(keys, combo)})
            sources = {**{k: "[base]" for k in base}, **{k: where for k in over}, **{k: "[grid]" for k in keys}}
            labels = ([label] if label else []) + [lab for _, lab in combo if lab]
            for seed in (seeds if seeds is not None else [None]):
                a = dict(assign)
                if seed is not None:
                    a["run.data.seed"] = seed
                cfg, resolved = _build(default, a, {**sources, "run.data.seed": "[sweep] seeds"}
                                       if seed is not None else sources)
                h = config_hash(cfg)
                lab = ", ".join(labels)
                if (h, lab) in seen:
                    continue
                seen[(h, lab)] = True
                points.append(Point(len(points), lab, cfg, h, group_hash(cfg), resolved))
    return SweepSpec(name, description, points, raw, path)


def _build(default: dict, assign: dict, sources: dict):
    values = flatten(default)
    values.update({k: _normalise(k, v) for k, v in assign.items() if not isinstance(v, Expr)})
    pending = {k: v for k, v in assign.items() if isinstance(v, Expr)}
    while pending:
        ready = [k for k, e in pending.items() if not (e.names() & set(pending))]
        if not ready:
            raise SweepSpecError("expressions depend on each other in a cycle: " + ", ".join(sorted(pending)))
        for k in ready:
            values[k] = _normalise(k, pending.pop(k).evaluate(values))
    d = json.loads(json.dumps(default))
    for k in assign:
        _set(d, k, values[k])
    shown = {k: values[k] for k in assign}
    try:
        return CellConfig.from_dict(d), shown
    except (ConfigError, TypeError, ValueError) as exc:
        msg = str(exc) if isinstance(exc, ConfigError) else f"wrong type ({exc})"
        m = re.match(r"\s*(?:unknown parameter ')?([A-Za-z_]\w*)", msg)
        leaf = m.group(1) if m else None
        named = [k for k in assign if leaf is not None and k.split(".")[-1] == leaf]
        if named:
            k = named[0]
            raise SweepSpecError(f"{k} = {values[k]!r} in {sources.get(k, 'the spec')}: {msg}") from None
        raise SweepSpecError(f"{msg} (a default, invalid with the spec's values {shown})") from None


def load_spec(path) -> SweepSpec:
    import tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepSpecError(f"sweep spec {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepSpecError(f"sweep spec {str(path)!r} is not valid TOML: {exc}") from None
    return parse_spec(raw, name=path.stem, path=str(path))


# --------------------------------------------------------------------------------------------
# The cell job


def cell_cost(cfg: CellConfig) -> float:
    """A rough count of multiply-adds (for the progress estimate and the submission order)."""
    rc = cfg.run
    m, d = rc.width(), rc.data.d
    n_train = rc.data.n_train if rc.train.mode == "full_batch" else rc.train.batch_size
    per = m * d
    clean = rc.train.steps * n_train * per * 2 + (rc.train.steps // rc.train.eval_every + 1) * rc.data.n_test * per
    adv_n = cfg.adv_batch if cfg.adv_mode == "online" else n_train
    adv = cfg.adv_steps * adv_n * per * 4 * (2 if cfg.control else 1)
    attacks_ = 2 * len(cfg.radii) * cfg.n_eval * per * (2 * cfg.pgd_steps * cfg.pgd_restarts + 4 + cfg.random_draws)
    cert = 0 if not cfg.certify else 2 * len(cfg.radii) * cfg.n_eval * per * (
        4 + (2 * cfg.certify_steps if cfg.certify_method in ("dual", "best") else 0))
    lb = (50 * per * n_train * cfg.lower_bound_scale * sum(cfg.lower_bound_factors) * len(cfg.lower_bound_radii)
          if cfg.lower_bound else 0)
    return float(d ** 3 + len(cfg.norms) * (adv + attacks_ + cert + lb) + clean)


def _row(model, metric, value, norm="", tau=None) -> dict:
    return {"model": model, "metric": metric, "norm": norm, "tau": None if tau is None else float(tau),
            "value": float(value)}


def _picture(C0: np.ndarray, Ca: np.ndarray, n_neurons=48, n_atoms=64) -> dict:
    """|c_ij| / max_j |c_ij| of the largest neurons (sorted by principal atom) on the atoms
    they pick first, for the clean and the adversarially trained weights (as sim.report)."""
    keep = np.argsort(-np.linalg.norm(C0, axis=1), kind="stable")[:n_neurons]
    order = keep[np.argsort(np.argmax(np.abs(C0[keep]), axis=1), kind="stable")]
    principal = np.argmax(np.abs(C0[order]), axis=1)
    atoms = list(dict.fromkeys(principal.tolist()))
    atoms += [j for j in range(C0.shape[1]) if j not in set(atoms)][:max(0, n_atoms - len(atoms))]
    atoms = np.array(sorted(atoms[:n_atoms]))
    out = {"neurons": order, "atoms": atoms}
    for name, C in (("clean", C0), ("adv", Ca)):
        A = np.abs(C[order][:, atoms])
        out[name] = (A / np.maximum(np.abs(C[order]).max(axis=1, keepdims=True), 1e-300)).astype(np.float32)
    return out


def run_cell(cfg: CellConfig) -> dict:
    """The job of one cell: train, attack, measure; returns the rows and the records.

    Rows: clean_net / adv_net (and control_net): clean_acc (tau 0), robust_acc and the
    per-attack accuracies 'attack:NAME' and masking_flag at every radius, certified_acc
    (if certify), the C2 measures (summarize_dense) and, for adv_net, the C4 measures
    (summarize_purification); linear_clean / linear_best_robust / linear_bayes: clean_acc
    and exact robust_acc at every radius; 'c5:MODEL_TRAINING@FN' rows of the lower-bound
    table. norm is the threat model ('' for the clean network's weight measures), tau the
    radius of the evaluation (0 for clean accuracy, None for weight measures).
    """
    from . import attacks, measures
    from .run import data_summary, train_clean, versions
    from .verify import adversarial_training

    t0, cpu0 = time.perf_counter(), time.process_time()
    timings = {}
    clean = train_clean(cfg.run, None, quiet=True)
    timings["clean_training"] = clean.seconds
    p, te = clean.problem, clean.test
    train = clean.train if clean.train is not None else p.train_set()
    Xe, ye = te.x[:cfg.n_eval], te.y[:cfg.n_eval]
    direction = p.bayes_direction
    rows = [_row("clean_net", "clean_acc", clean.log.rows[-1]["test_acc"], tau=0.0)]
    for k, v in measures.summarize_dense(clean.net, p.M, p.wstar, Xe, cfg.principal_threshold).items():
        rows.append(_row("clean_net", k, v))
    logs = {"clean": clean.log.rows}
    pictures, weights = {}, {}
    if cfg.save_weights:
        weights.update(W_init=clean.W_init, W_clean=clean.net.W)

    def curve(net, name, norm, taus, seed0):
        for j, t in enumerate(taus):
            rep = attacks.evaluate_robustness(net, Xe, ye, t, norm, direction=direction, pgd_steps=cfg.pgd_steps,
                                              pgd_restarts=cfg.pgd_restarts, random_draws=cfg.random_draws,
                                              seed=seed0 + j)
            rows.append(_row(name, "robust_acc", rep.robust_accuracy, norm, t))
            rows.append(_row(name, "masking_flag", rep.masking_flag, norm, t))
            for a, v in rep.per_attack.items():
                rows.append(_row(name, f"attack:{a}", v, norm, t))
        if cfg.certify and cfg.run.model.activation == "relu":
            from .certify import certify_radii

            for t, res in zip(taus, certify_radii(net, Xe, ye, taus, norm, cfg.certify_method,
                                                  steps=cfg.certify_steps)):
                rows.append(_row(name, "certified_acc", res.certified_accuracy, norm, t))

    for ni, norm in enumerate(cfg.norms):
        tau = cfg.tau(norm)
        taus = [r * tau for r in cfg.radii]
        t1 = time.perf_counter()
        adv, adv_log, _ = adversarial_training(clean, cfg, norm, cfg.adv_kind, cfg.adv_steps, True, track=False)
        timings[f"adv_training_{norm}"] = time.perf_counter() - t1
        logs[f"adv_{norm}"] = adv_log.rows
        t1 = time.perf_counter()
        rows.append(_row("adv_net", "clean_acc", adv.accuracy(te.x, te.y), norm, 0.0))
        curve(clean.net, "clean_net", norm, taus, 1000 * ni)
        curve(adv, "adv_net", norm, taus, 1000 * ni + 100)
        timings[f"attacks_{norm}"] = time.perf_counter() - t1
        for k, v in measures.summarize_dense(adv, p.M, p.wstar, Xe, cfg.principal_threshold).items():
            rows.append(_row("adv_net", k, v, norm))
        for k, v in measures.summarize_purification(clean.net.W, adv.W, clean.W_init, p.M,
                                                    cfg.principal_threshold).items():
            rows.append(_row("adv_net", k, v, norm))
        if cfg.control:
            ctrl, _, _ = adversarial_training(clean, cfg, norm, "random", cfg.control_steps or cfg.adv_steps, True,
                                              track=False)
            rows.append(_row("control_net", "clean_acc", ctrl.accuracy(te.x, te.y), norm, 0.0))
            curve(ctrl, "control_net", norm, [tau], 1000 * ni + 200)
        if cfg.linear_models:
            from .lowerbound import LinearModel, fit_logistic, fit_robust_logistic

            t1 = time.perf_counter()
            models = {"linear_clean": fit_logistic(train.x, train.y), "linear_bayes": LinearModel(direction, 0.0)}
            Xt, yt = np.asarray(te.x, np.float64), np.asarray(te.y, np.float64)
            for name, model in models.items():
                rows.append(_row(name, "clean_acc", np.mean(yt * model.forward(Xt) > 0), norm, 0.0))
                for t in taus:
                    rows.append(_row(name, "robust_acc", model.exact_robust_accuracy(Xt, yt, t, norm), norm, t))
            for t in taus:
                best, _ = fit_robust_logistic(train.x, train.y, t, norm)
                rows.append(_row("linear_best_robust", "clean_acc", np.mean(yt * best.forward(Xt) > 0), norm, t))
                rows.append(_row("linear_best_robust", "robust_acc", best.exact_robust_accuracy(Xt, yt, t, norm),
                                 norm, t))
            timings[f"linear_{norm}"] = time.perf_counter() - t1
        if cfg.lower_bound:
            from .lowerbound import lower_bound_table

            t1 = time.perf_counter()
            for r in cfg.lower_bound_radii:
                for lb in lower_bound_table(p, train, te, r * tau, norm, scale=cfg.lower_bound_scale,
                                            n_eval=cfg.n_eval, quiet=True, n_factors=cfg.lower_bound_factors,
                                            model_cfg=cfg.run.model):
                    fct = "" if lb["n_train"] is None else f"@{lb['n_train'] // len(train.y)}N"
                    name = f"c5:{lb['model']}_{lb['training']}{fct}"
                    rows.append(_row(name, "clean_acc", lb["clean_acc"], norm, 0.0))
                    rows.append(_row(name, "robust_acc", lb["robust_acc"], norm, r * tau))
            timings[f"lower_bound_{norm}"] = time.perf_counter() - t1
        if ni == 0:
            pictures = _picture(measures.coefficients(clean.net.W, p.M), measures.coefficients(adv.W, p.M))
        if cfg.save_weights:
            weights[f"W_adv_{norm}"] = adv.W
    timings["total"] = time.perf_counter() - t0
    timings["cpu"] = time.process_time() - cpu0  # CPU seconds of the worker process (all its threads)
    return {"status": "ok", "schema": CELL_SCHEMA, "hash": config_hash(cfg), "config": cfg.to_dict(), "rows": rows,
            "data": data_summary(train, te), "timings": timings, "versions": versions(), "host": platform.node(),
            "logs": logs, "pictures": pictures, "weights": weights}


_JOB_LOCK = threading.Lock()
_BLAS_LIMIT = None


def _limit_blas():
    """BLAS on one thread for the rest of the process (the products that matter run in
    sim.linalg's blocked, thread-count-independent matmul; the rest is small)."""
    global _BLAS_LIMIT
    if _BLAS_LIMIT is None:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")


def _job(cfg_dict: dict, threads: int) -> dict:
    """Run one cell in a worker (local process or Dask); never raises: an error becomes a
    failure record. One cell at a time per process (Dask workers may have several threads)."""
    import numba

    t0 = time.perf_counter()
    with _JOB_LOCK:
        try:
            _inject_fault(cfg_dict)
            _limit_blas()
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            return run_cell(CellConfig.from_dict(cfg_dict))
        except BaseException as exc:  # noqa: BLE001 - a cell's failure must not end the sweep
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                    "host": platform.node(), "seconds": time.perf_counter() - t0}


FAULT_ENV = "SIM_SWEEP_INJECT_FAULT"


def _inject_fault(cfg_dict: dict) -> None:
    """Fault injection for the tests: SIM_SWEEP_INJECT_FAULT='HASH:raise' makes that cell's
    job raise, 'HASH:exit' kills its worker process (as a segfault or the OOM killer would)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    h = config_hash(CellConfig.from_dict(cfg_dict))
    for item in spec.split(","):
        target, _, kind = item.partition(":")
        if target == h:
            if kind == "exit":
                os._exit(13)
            raise RuntimeError(f"injected fault in cell {h}")


def _init_worker(threads: int, parent: int) -> None:
    import numba

    _limit_blas()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))

    def watchdog():  # a worker whose driver was killed (SIGKILL) exits instead of running on
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()


# --------------------------------------------------------------------------------------------
# The driver


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan_workers(n_cells: int, workers: int | None, threads: int | None, cores: int | None = None):
    """(processes, Numba threads each) with processes x threads <= cores."""
    cores = cores or available_cores()
    if workers is not None:
        _check_int("workers", workers, lo=1)
    if threads is not None:
        _check_int("threads", threads, lo=1)
    if workers is None:
        workers = max(1, min(max(n_cells, 1), cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // workers)
    if workers * threads > cores:
        raise ConfigError(f"workers={workers} x threads={threads} = {workers * threads} is invalid: allowed at most "
                          f"{cores} (the cores this process may use)")
    return workers, threads


def git_commit(cwd=None) -> dict:
    """{'commit': HEAD or None, 'dirty': bool or None} (read-only git calls)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                            text=True, env=env, timeout=30)
        return {"commit": head.stdout.strip(), "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@dataclass
class SweepSummary:
    name: str
    out: str
    total: int
    skipped: int
    ran: int
    failed: list
    seconds: float
    table: str
    cell_seconds: float = 0.0
    cell_cpu_seconds: float = 0.0

    def to_dict(self):
        return dict(self.__dict__)

    def text(self) -> str:
        ok = self.total - len(self.failed)
        lines = [f"sweep {self.name}: {ok} of {self.total} cells finished ({self.skipped} already done, {self.ran} run "
                 f"now) in {self.seconds:.0f} s; table: {self.table}"]
        if self.ran:
            lines.append(f"cells run now: {self.cell_seconds:.0f} s of wall time, {self.cell_cpu_seconds:.0f} CPU s")
        if self.failed:
            lines.append(f"{len(self.failed)} failed:")
            lines += [f"  {f['hash']} {f['label'] or ''} {json.dumps(f['assignments'])}: {f['error']}"
                      for f in self.failed]
        return "\n".join(lines)


def run_sweep(spec: SweepSpec, out, *, workers: int | None = None, threads: int | None = None, scheduler=None,
              quiet: bool = False, command: str | None = None, retry_failed: bool = True) -> SweepSummary:
    """Run every unfinished cell of the spec and rebuild the table; returns the summary.

    scheduler: None (local processes; workers=0 runs the cells in this process, one by
    one), a Dask scheduler address, or a distributed.Client.
    """
    from . import store

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store.write_sweep_json(out, spec, command=command, commit=git_commit())
    todo, skipped = [], 0
    for p in _unique(spec.points):
        st = store.cell_state(out, p.hash)
        if st == "done" or (st == "failed" and not retry_failed):
            skipped += 1
        else:
            todo.append(p)
    todo.sort(key=lambda p: (-p.cost(), p.index))  # longest first: the shortest makespan
    failed_now: dict[str, dict] = {}
    cell_seconds = [0.0, 0.0]
    bar = _Progress(len(_unique(spec.points)), skipped, todo, quiet)

    def on_result(p: Point, res: dict):
        if res.get("status") == "ok":
            store.write_cell(out, p, res)
            cell_seconds[0] += res["timings"]["total"]
            cell_seconds[1] += res["timings"].get("cpu", 0.0)
            failed_now.pop(p.hash, None)
        else:
            store.write_failure(out, p, res)
            failed_now[p.hash] = res
        store.write_table(out, spec)
        bar.update(p, res)

    try:
        if todo:
            if scheduler is not None:
                _run_dask(todo, scheduler, threads or 1, on_result)
            elif workers == 0:
                for p in todo:
                    on_result(p, _job(p.config.to_dict(), threads or 1))
            else:
                w, t = plan_workers(len(todo), workers, threads)
                _run_local(todo, w, t, on_result)
    finally:
        bar.close()
        table = store.write_table(out, spec)
    failures = []
    for p in spec.points:
        if store.cell_state(out, p.hash) == "failed" and p.hash not in {f["hash"] for f in failures}:
            rec = store.read_failure(out, p.hash)
            failures.append({"hash": p.hash, "label": p.label, "assignments": _jsonable(p.assignments),
                             "error": rec.get("error", "?")})
    summary = SweepSummary(spec.name, str(out), len(_unique(spec.points)), skipped, len(todo), failures,
                           time.perf_counter() - t0, str(table), cell_seconds[0], cell_seconds[1])
    from .rundir import atomic_write_json

    atomic_write_json(out / "summary.json", summary.to_dict())
    store.finish_run(out, summary.to_dict())
    return summary


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


def _unique(points):
    seen, out = set(), []
    for p in points:
        if p.hash not in seen:
            seen.add(p.hash)
            out.append(p)
    return out


class _Progress:
    """A bar over the estimated cost of the cells (so its time-left estimate weighs big cells
    more), showing the count of finished cells and failures."""

    def __init__(self, total, done, todo, quiet):
        from tqdm.auto import tqdm

        self.total, self.done, self.failed = total, done, 0
        cost = sum(p.cost() for p in todo)
        self.scale = 1000.0 / cost if cost > 0 else 0.0
        self.bar = tqdm(total=1000, disable=quiet, unit="", leave=True, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")
        self._post()

    def _post(self):
        self.bar.set_description_str(f"sweep: {self.done}/{self.total} cells"
                                     + (f", {self.failed} failed" if self.failed else ""))

    def update(self, p, res):
        if res.get("status") == "ok":
            self.done += 1
        else:
            self.failed += 1
        self.bar.update(p.cost() * self.scale)
        self._post()

    def close(self):
        self.bar.close()


def _failure(msg: str) -> dict:
    return {"status": "failed", "error": msg, "traceback": "", "host": platform.node(), "seconds": 0.0}


def _run_local(todo, workers, threads, on_result):
    """A pool of `workers` spawned processes; a process that dies breaks the pool: the cells
    then in flight are rerun one at a time in a fresh pool, and a cell that kills its
    worker alone is marked failed."""
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")

    def new_pool():
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, os.getpid()))

    queue, suspects, inflight = deque(todo), deque(), {}
    pool = new_pool()
    try:
        while queue or suspects or inflight:
            broken = False
            try:  # a cell leaves its queue only once submitted
                if suspects:
                    if not inflight:
                        inflight[pool.submit(_job, suspects[0].config.to_dict(), threads)] = (suspects[0], True)
                        suspects.popleft()
                else:
                    while queue and len(inflight) < workers:
                        inflight[pool.submit(_job, queue[0].config.to_dict(), threads)] = (queue[0], False)
                        queue.popleft()
            except BrokenProcessPool:  # a worker died since the last wait
                broken = True
            if not broken:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
            if broken:
                done, _ = wait(list(inflight))  # every other future of a broken pool fails too
            for f in done:
                p, alone = inflight.pop(f)
                exc = f.exception()
                if isinstance(exc, BrokenProcessPool):
                    if alone:
                        on_result(p, _failure(f"the worker process died while running this cell alone ({exc})"))
                    else:
                        suspects.append(p)
                elif exc is not None:
                    on_result(p, _failure(f"{type(exc).__name__}: {exc}"))
                else:
                    on_result(p, f.result())
            if broken:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
    finally:
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()


def _run_dask(todo, scheduler, threads, on_result):
    """Submit every cell to a Dask distributed cluster; results come back to this process,
    which alone writes the sweep directory (no shared file system needed)."""
    import uuid

    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="30s") if own else scheduler
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"scheduler={scheduler!r} is invalid: cannot reach a Dask scheduler there ({exc})") from None
    tag = uuid.uuid4().hex[:8]
    futures = {}
    try:
        for rank, p in enumerate(todo):
            f = client.submit(_job, p.config.to_dict(), threads, key=f"sim-sweep-{p.hash}-{tag}", pure=False,
                              priority=len(todo) - rank, retries=0)
            futures[f] = p
        for f in as_completed(list(futures)):
            p = futures[f]
            try:
                res = f.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the cell fails, the sweep goes on
                res = _failure(f"{type(exc).__name__}: {exc}")
            on_result(p, res)
            f.release()
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
        if own:
            client.close()


# --------------------------------------------------------------------------------------------
# Command line


def _cmd_sweep(args) -> int:
    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / spec.name
    if args.dry_run:
        for p in spec.points:
            print(f"{p.hash}  seed={p.seed}  {p.label}  {json.dumps(_jsonable(p.assignments))}")
        print(f"{len(_unique(spec.points))} cells; would write {out}")
        return 0
    summary = run_sweep(spec, out, workers=args.workers, threads=args.threads, scheduler=args.scheduler,
                        quiet=args.quiet, command=_command(args), retry_failed=not args.no_retry_failed)
    print(summary.text())
    return 1 if summary.failed else 0


def _command(args) -> str:
    parts = ["python -m sim sweep", args.spec]
    for flag in ("out", "workers", "threads", "scheduler"):
        v = getattr(args, flag)
        if v is not None:
            parts.append(f"--{flag} {v}")
    if args.quiet:
        parts.append("--quiet")
    return " ".join(parts)


def _cmd_plot(args) -> int:
    from .plot import plot_results

    written = plot_results(args.results, args.out, prefix=args.prefix, command=" ".join(
        ["python -m sim plot", args.results] + (["--out", args.out] if args.out != "figures" else [])
        + (["--prefix", args.prefix] if args.prefix else [])))
    for w in written:
        print(w)
    return 0


def add_sweep_commands(subparsers) -> None:
    """Register `sweep` and `plot` on the subparsers of `python -m sim`."""
    s = subparsers.add_parser("sweep", help="a grid of runs over config fields and seeds, resumable, in parallel",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("spec", help="the sweep spec (TOML), e.g. sweeps/scaling.toml")
    s.add_argument("--out", help="sweep directory (default runs/sweeps/NAME)")
    s.add_argument("--workers", type=int, help="local worker processes (default: as many as cores / threads; "
                                               "0: in this process, one cell at a time)")
    s.add_argument("--threads", type=int, help="Numba threads per worker (default: cores / workers; 1 on Dask)")
    s.add_argument("--scheduler", help="a Dask distributed scheduler address, e.g. tcp://host:8786")
    s.add_argument("--dry-run", action="store_true", help="validate the spec and list the cells, run nothing")
    s.add_argument("--no-retry-failed", action="store_true", help="leave the cells that failed before as they are")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sweep)
    p = subparsers.add_parser("plot", help="the standard figures of a sweep, as PNG and SVG with sidecars")
    p.add_argument("results", help="a sweep directory (or its results.csv)")
    p.add_argument("--out", default="figures", help="folder of the figures (default figures)")
    p.add_argument("--prefix", help="file name prefix (default: the sweep's name)")
    p.set_defaults(func=_cmd_plot)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sweep_commands(sub)
    from .cli import run

    return run(parser, argv)


if __name__ == "__main__":
    # run the imported module's main, so that the jobs sent to worker processes and Dask are
    # sim.sweep._job (pickled by reference), not a copy of this __main__ module's function
    from sim.sweep import main as _main

    sys.exit(_main())
