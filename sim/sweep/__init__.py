"""`python -m sim sweep SPEC.toml`: sweeps over any config field, with seeds, resumable, in parallel.

A sweep spec (TOML) names a grid (and/or a list) of cells. A cell is a `CellConfig` (every
field of `sim.experiments.verify.VerifyConfig`, with dotted names such as `run.data.d`, `tau_l2`,
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
`--only FIELD=VALUE[,VALUE...]` (repeatable) runs only the matching unfinished cells (a slice of a
long sweep first, e.g. `--only k=4 --only d=1024,2048`); the table covers every finished cell.

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

from .executors import SweepSummary, available_cores, plan_workers, run_sweep
from .job import FAULT_ENV, cell_job, run_cell
from .spec import (CELL_SCHEMA, CERTIFY_METHODS, FIELD_TYPES, LINEAR_MODELS, CellConfig, Point, SweepSpec, SweepSpecError,
                   cell_cost, config_hash, default_dict, group_hash, load_spec, parse_spec)

__all__ = ["CELL_SCHEMA", "CERTIFY_METHODS", "FAULT_ENV", "FIELD_TYPES", "LINEAR_MODELS", "CellConfig", "Point",
           "SweepSpec", "SweepSpecError", "SweepSummary", "available_cores", "cell_cost", "config_hash", "default_dict",
           "group_hash", "cell_job", "load_spec", "parse_spec", "plan_workers", "run_cell", "run_sweep"]
