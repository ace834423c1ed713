"""Sweep specs and cells: the cell config (CellConfig), its hash, and the TOML spec language.

See the package docstring (sim/sweep/__init__.py) for the spec format.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from sim.common.overrides import flatten, set_path
from sim.experiments.verify import VerifyConfig
from sim.model.config import _NESTED, ConfigError, RunConfig, _check_choice, _check_int, _check_real

CELL_SCHEMA = "sim.sweep.cell/2"  # part of every hash: bump when run_cell's rows change meaning
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
    atom_degrees: odd degrees P >= 3 of the hand-built per-atom polynomials
    f(x) = sum_j w*_j p_P(<m_j, x>) (sim.lowerbound.atoms.step_coefficients: the robust shape
    the C5 table found, cheap at any d) attacked and certified (Lagrangian bound) at every
    radius, rows 'atom_poly{P}'; () for none.
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
    atom_degrees: tuple = ()
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
        object.__setattr__(self, "atom_degrees", tuple(self.atom_degrees))
        for p in self.atom_degrees:
            _check_int("atom_degrees[]", p, lo=3)
            if p % 2 == 0:
                raise ConfigError(f"atom_degrees[]={p!r} is invalid: allowed odd integers >= 3")
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


# Fields added to CellConfig after sweeps had run, with the value that means "what the code did
# before the field existed": left out of the hash at that value, so finished cells keep their hash
# (and are not rerun) while a cell that sets the field gets a new one.
HASH_NEUTRAL = {"adv_tau_ramp": 0, "adv_retry_tau_ramp": 0}


def config_hash(cfg: CellConfig) -> str:
    """The cell's key: sha256 of the canonical JSON of its full config (16 hex digits),
    without the HASH_NEUTRAL fields that hold their neutral value."""
    conf = cfg.to_dict()
    for key, neutral in HASH_NEUTRAL.items():
        if conf.get(key) == neutral:
            del conf[key]
    doc = json.dumps({"schema": CELL_SCHEMA, "config": conf}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def group_hash(cfg: CellConfig) -> str:
    """The hash of the config with the seed set to 0: cells that differ only by seed share it."""
    return config_hash(cfg.replace(run=cfg.run.replace(data=cfg.run.data.replace(seed=0))))


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



# --------------------------------------------------------------------------------------------
# Sweep specs

_FUNCS = {"min": min, "max": max, "round": round, "int": int, "float": float, "abs": abs, "sqrt": math.sqrt,
          "log": math.log, "log2": math.log2, "ceil": math.ceil, "floor": math.floor}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b}
_SEARCH = ("run.data.", "run.model.", "run.train.", "")


def resolve_field(name: str) -> str | None:
    """A field name as specs write it -> its dotted CellConfig name: dotted names as they are,
    bare ones looked up in run.data, run.model, run.train, then the top level; None if unknown."""
    for pre in _SEARCH if "." not in name else ("",):
        if pre + name in FIELD_TYPES:
            return pre + name
    return None


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
        path = resolve_field(name)
        if path is not None:
            return path
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


def parse_only(only: list[str] | None) -> dict[str, list]:
    """`--only FIELD=VALUE[,VALUE...]` filters -> {dotted field (or 'label'): allowed values}.
    FIELD is a dotted CellConfig name or a bare one resolved like an expression's (d -> run.data.d,
    seed -> run.data.seed); values are numbers (compared to 1e-9 relative) or text."""
    out: dict[str, list] = {}
    for item in only or []:
        name, eq, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not eq or not name or not text:
            raise SweepSpecError(f"--only {item!r} is invalid: allowed FIELD=VALUE[,VALUE...], e.g. "
                                 "run.data.d=1024 or k=4 or label='k = 4'")
        if name != "label":
            name = resolve_field(name) or name
            _check_field(name, f"--only {item!r}")
        vals = []
        for v in (text.split(",") if name != "label" else [text]):
            v = v.strip().strip("'\"")
            try:
                vals.append(float(v))
            except ValueError:
                vals.append(v)
        out.setdefault(name, []).extend(vals)
    return out


def _matches(value, allowed: list) -> bool:
    for a in allowed:
        if isinstance(a, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isclose(float(value), a, rel_tol=1e-9, abs_tol=1e-12):
                return True
        elif str(value) == str(a):
            return True
    return False


def select_points(points: list, only: dict[str, list]) -> list:
    """The points whose every filtered field (and label) is one of its allowed values."""
    if not only:
        return list(points)
    out = []
    for p in points:
        flat = flatten(p.config.to_dict())
        if all(_matches(p.label if f == "label" else flat.get(f), vals) for f, vals in only.items()):
            out.append(p)
    return out


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
        set_path(d, k, values[k])
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
