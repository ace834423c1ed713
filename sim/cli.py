"""Command line: `python -m sim train|verify|config|sweep|restore|plot|bench|lowerbound|experiments ...`.

The only argparse in sim: every subcommand's options are here; the packages take plain
arguments. Every bad input (a ConfigError naming the parameter, a usage error of argparse, a
config file that is missing or not JSON, an output path that cannot be used) is printed on
one line and the exit status is 2, before anything is written. Nothing here imports torch
(bench loads it when it runs).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .common.overrides import apply_sets, parse_assignment
from .common.validation import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (the problem, and where the help is)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def read_json_config(path: str, flag: str = "--config") -> dict:
    """The JSON object in a config file; a ConfigError naming the file if it cannot be used."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {path!r} is invalid: " + ("it is a folder" if p.is_dir() else "no such file")
                          + "; allowed a JSON file")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path!r} cannot be read ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {path!r} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{flag} {path!r} is invalid: it holds a JSON {type(doc).__name__}; allowed a JSON object "
                          "of config fields")
    return doc


def config_from_args(base: dict, sets: list[str]):
    """A RunConfig from a base dict plus --set overrides (validated, errors name the field)."""
    d = json.loads(json.dumps(base))
    for text in sets:
        path, value = parse_assignment(text)
        if len(path) != 2 or path[0] not in ("data", "model", "train"):
            raise ConfigError(f"--set {text!r}: the key must be data.FIELD, model.FIELD or train.FIELD")
        d.setdefault(path[0], {})[path[1]] = value
    from .model.config import RunConfig

    return RunConfig.from_dict(d)


def _cmd_train(args) -> int:
    from .train.clean import train_clean

    base = read_json_config(args.config) if args.config else {}
    cfg = config_from_args(base, args.set)
    run = train_clean(cfg, Path(args.out), quiet=args.quiet, resume=args.resume, overwrite=args.overwrite)
    final = run.log.rows[-1]
    print(f"clean training: test accuracy {final['test_acc']:.4f} after {cfg.train.steps} steps "
          f"in {run.seconds:.1f} s -> {args.out}")
    return 0


def _cmd_verify(args) -> int:
    from .claims import claims_table
    from .experiments.verify import VerifyConfig, quick_config, run_verify

    vc = quick_config() if args.quick else VerifyConfig()
    if args.config:
        vc = VerifyConfig.from_dict({**vc.to_dict(), **read_json_config(args.config)})
    if args.set:
        vc = VerifyConfig.from_dict(apply_sets(vc.to_dict(), args.set))
    out = Path(args.out)
    if args.scaling:
        from .experiments.scaling import ScalingConfig, run_scaling

        sc = ScalingConfig(ds=(32, 64, 128), n_eval=200) if args.quick else ScalingConfig()
        doc = run_scaling(vc, sc, out / "scaling", quiet=args.quiet, resume=args.resume, overwrite=args.overwrite)
        print(claims_table(doc["claims"]))
        print(f"\nscaling: {doc['seconds']:.0f} s; report: {out / 'scaling' / 'scaling.md'}")
        return 0
    if args.json:
        _check_output_file(args.json, "--json")
    if args.workers is not None:
        from sim.common.validation import _check_int

        _check_int("workers", args.workers, lo=1)
    doc = run_verify(vc, out, quiet=args.quiet, resume=args.resume, overwrite=args.overwrite, workers=args.workers)
    if args.json:
        from sim.common.files import atomic_write_json

        atomic_write_json(Path(args.json), doc)
    print(claims_table(doc["claims"]))
    holds = sum(c["holds"] for c in doc["claims"])
    print(f"\n{holds} of {len(doc['claims'])} claims hold; {doc['timings']['total']:.0f} s; report: {out / 'report.md'}")
    return 0


def _check_output_file(path: str, flag: str) -> None:
    """A file the command will write: refused now if it is a folder or its folder is a file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path!r} is invalid: it is a folder; allowed a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path!r} is invalid: {str(parent)!r} is a file, not a folder")
            break


def _check_output_dir(path: Path, flag: str = "--out") -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is invalid: it is a file; allowed a folder")
    _check_output_file(str(path / "x"), flag)


def _cmd_sweep(args) -> int:
    from .sweep import load_spec, run_sweep
    from .sweep.store import default_out
    from .sweep.executors import _jsonable, _unique, check_workers

    check_workers(args.workers, args.threads)
    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else default_out(spec)
    _check_output_dir(out)
    if args.dry_run:
        from .sweep.spec import parse_only, select_points

        points = select_points(spec.points, parse_only(args.only))
        for p in points:
            print(f"{p.hash}  seed={p.seed}  {p.label}  {json.dumps(_jsonable(p.assignments))}")
        print(f"{len(_unique(points))} cells" + (f" of {len(_unique(spec.points))} (--only)" if args.only else "") + f"; would write {out}")
        return 0
    summary = run_sweep(spec, out, workers=args.workers, threads=args.threads, scheduler=args.scheduler,
                        quiet=args.quiet, command=_command(args), retry_failed=not args.no_retry_failed,
                        order=args.order or "longest", only=args.only)
    print(summary.text())
    return 1 if summary.failed else 0


def _command(args) -> str:
    parts = ["python -m sim sweep", args.spec]
    for flag in ("out", "workers", "threads", "scheduler", "order"):
        v = getattr(args, flag)
        if v is not None:
            parts.append(f"--{flag} {v}")
    parts += [f"--only {shlex.quote(o)}" for o in args.only or []]
    if args.quiet:
        parts.append("--quiet")
    return " ".join(parts)


def _cmd_restore(args) -> int:
    from .sweep import load_spec
    from .sweep.store import default_out, restore_cells, restore_record, write_table

    spec = load_spec(args.spec)
    table = Path(args.table)
    if not table.is_file() or not (table.name.endswith(".csv") or table.name.endswith(".csv.gz")):
        raise ConfigError(f"table {args.table!r} is invalid: allowed a results.csv or .csv.gz file, e.g. "
                          f"figures/{spec.name}_results.csv.gz")
    out = Path(args.out) if args.out else default_out(spec)
    _check_output_dir(out)
    rep = restore_cells(out, spec, table)
    restore_record(out, spec, table, command=" ".join(["python -m sim restore", args.spec, args.table]
                                                      + (["--out", args.out] if args.out else [])))
    write_table(out, spec)
    print(f"{len(rep['restored'])} cells restored from {table}, {len(rep['kept'])} already finished, "
          f"{len(rep['missing'])} not in the table (run them with: python -m sim sweep {args.spec}"
          + (f" --out {args.out}" if args.out else "") + f"); {out}")
    return 0


def _cmd_plot(args) -> int:
    src = Path(args.results)
    if not src.exists():
        raise ConfigError(f"results {args.results!r} is invalid: no such file or folder; allowed a sweep folder "
                          "or its results.csv")
    if src.is_dir() and not (src / "results.csv").is_file():
        raise ConfigError(f"results {args.results!r} is invalid: the folder has no results.csv; allowed a sweep "
                          "folder (python -m sim sweep --out) or a results.csv")
    if src.is_file() and not (src.name.endswith(".csv") or src.name.endswith(".csv.gz")):
        raise ConfigError(f"results {args.results!r} is invalid: allowed a sweep folder or a results.csv "
                          f"(or .csv.gz), not {src.name!r}")
    _check_output_dir(Path(args.out))
    from .sweep.plot import plot_results


    written = plot_results(args.results, args.out, prefix=args.prefix, command=" ".join(
        ["python -m sim plot", args.results] + (["--out", args.out] if args.out != "figures" else [])
        + (["--prefix", args.prefix] if args.prefix else [])))
    for w in written:
        print(w)
    return 0


def add_sweep_commands(subparsers) -> None:
    """Register `sweep` and `plot` on the subparsers of `python -m sim`."""
    from . import sweep

    s = subparsers.add_parser("sweep", help="a grid of runs over config fields and seeds, resumable, in parallel",
                              description=sweep.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("spec", help="the sweep spec (TOML), e.g. sweeps/scaling.toml")
    s.add_argument("--out", help="sweep directory (default runs/sweeps/NAME)")
    s.add_argument("--workers", type=int, help="local worker processes, an integer >= 0 (default: as many as "
                                               "cores / threads; 0: in this process, one cell at a time)")
    s.add_argument("--threads", type=int, help="Numba threads per worker (default: cores / workers; 1 on Dask)")
    s.add_argument("--scheduler", help="a Dask distributed scheduler address, e.g. tcp://host:8786")
    s.add_argument("--dry-run", action="store_true", help="validate the spec and list the cells, run nothing")
    s.add_argument("--order", choices=("longest", "shortest"), default=None,
                   help="which unfinished cells run first: longest (default; the shortest makespan) or shortest "
                        "(a sweep spread over several sessions fills in from the cheap end)")
    s.add_argument("--only", action="append", metavar="FIELD=VALUE[,VALUE...]",
                   help="run only the unfinished cells with these values (repeatable; all must match), e.g. "
                        "--only k=4 --only d=1024,2048: a slice of a long sweep first; the table still covers "
                        "every finished cell")
    s.add_argument("--no-retry-failed", action="store_true", help="leave the cells that failed before as they are")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sweep)
    r = subparsers.add_parser("restore", help="rebuild a sweep's finished cells from its committed results table, "
                                              "so that a fresh clone resumes the sweep instead of rerunning it")
    r.add_argument("spec", help="the sweep spec (TOML), e.g. sweeps/phase.toml")
    r.add_argument("table", help="the table its sweep wrote, e.g. figures/phase_results.csv.gz (rows only: "
                                 "training logs and weight pictures are not restored)")
    r.add_argument("--out", help="sweep directory (default runs/sweeps/NAME)")
    r.set_defaults(func=_cmd_restore)
    p = subparsers.add_parser("plot", help="the standard figures of a sweep, as PNG and SVG with sidecars")
    p.add_argument("results", help="a sweep directory (or its results.csv)")
    p.add_argument("--out", default="figures", help="folder of the figures (default figures)")
    p.add_argument("--prefix", help="file name prefix (default: the sweep's name)")
    p.set_defaults(func=_cmd_plot)


def _sizes(text: str) -> list:
    from .bench.config import parse_sizes

    try:
        return parse_sizes(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bench_command(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to the `python -m sim` subcommands (sim.bench loads torch only when it runs)."""
    from . import bench
    from .bench.config import IMPLS, OPS, PRESETS

    b = subparsers.add_parser("bench", help="time the engine against NumPy, PyTorch and the BLAS limit",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--preset", choices=sorted(PRESETS), help="goal (default): d=1024 N=10000 float32 and the "
                   "sparse d=4096 k=4 cell; grid: d in 256,1024,4096 x N in 5000,50000 x float32,float64; quick")
    b.add_argument("--quick", action="store_true", help="the quick preset: small, a minute or two")
    b.add_argument("--sizes", type=_sizes_text, help="cells as DxN,DxN (m = 2d), e.g. 1024x10000,2048x20000; "
                   "overrides the preset")
    b.add_argument("--dtypes", help="float32,float64 (default float32 with --sizes; the preset's otherwise); "
                   "the sparse cell uses the first")
    b.add_argument("--sparse", help="the sparse cell as DxNxK, e.g. 4096x10000x4")
    b.add_argument("--no-sparse", action="store_true", help="skip the sparse cell")
    b.add_argument("--no-dense", action="store_true", help="skip the dense cells (only the sparse cell)")
    b.add_argument("--ops", help=f"subset of {','.join(OPS)}")
    b.add_argument("--impls", help=f"subset of {','.join(IMPLS)} (engine always runs)")
    b.add_argument("--repeats", type=int, default=0, help="timed repeats per implementation (default 5; quick 2)")
    b.add_argument("--sparse-repeats", type=int, default=0,
                   help="timed repeats in the sparse cell, whose dense side is slow (default min(repeats, 3))")
    b.add_argument("--threads", type=int, default=0, help="threads for every implementation (default: all cores)")
    b.add_argument("--n-eval", type=int, default=0, help="points attacked by pgd20 (default 1000; quick 300)")
    b.add_argument("--warm-steps", type=int, default=0,
                   help="gradient steps before timing (0: time at the init; larger: a sparser, trained state)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", help="also write the results to this JSON file")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=_cmd_bench)
    return b


def _sizes_text(text: str) -> str:
    _sizes(text)  # checked here, so that a bad --sizes is a usage error
    return text


def bench_config_from_args(args):
    from .bench.config import bench_config

    return bench_config(args.preset, args.quick, args.sizes, args.dtypes, args.sparse, args.no_sparse, args.no_dense,
                        args.ops, args.impls, args.repeats, args.threads, args.n_eval, args.warm_steps, args.seed,
                        args.quiet, args.sparse_repeats)


def _cmd_bench(args) -> int:
    from .bench.harness import run_bench

    cfg = bench_config_from_args(args)
    if args.json:
        _check_output_file(args.json, "--json")
    doc = run_bench(cfg)
    if args.json:
        from .common.files import atomic_write_json

        atomic_write_json(Path(args.json), doc)
    return 0


def add_lowerbound_command(subparsers) -> None:
    """`python -m sim lowerbound` (also `python -m sim.lowerbound`): claim C5's table and its claims split by
    class; `python -m sim lowerbound options`: the class x data-option table."""
    lb = subparsers.add_parser("lowerbound", help="claim C5: the lower-bound table (linear, polynomial, NTK models)")
    lb.add_argument("--d", type=int, default=256)
    lb.add_argument("--k", type=float, default=4.0)
    lb.add_argument("--seed", type=int, default=0)
    lb.add_argument("--tau", type=float, default=0.25)
    lb.add_argument("--norm", default="l2")
    lb.add_argument("--scale", type=float, default=1.0)
    lb.add_argument("--n-eval", type=int, default=1000)
    lb.add_argument("--parity", default="odd")
    lb.add_argument("--factors", default="1,10", help="training-set sizes in units of N, e.g. 1,10")
    lb.add_argument("--degrees", default="2,3", help="kernel polynomial degrees")
    lb.add_argument("--atom-degrees", default="3,5,7", help="odd degrees of the per-atom polynomials ('' for none)")
    lb.add_argument("--net-robust", type=float, default=None,
                    help="the network's robust accuracy at this radius, to judge the split claims")
    lb.add_argument("--json", help="also write the rows to this file")
    lb.add_argument("--quiet", action="store_true")
    lb.set_defaults(func=_cmd_lowerbound)
    sub = lb.add_subparsers(dest="lowerbound_command", metavar="{options}")
    o = sub.add_parser("options", help="the class x data-option table: which data options let a class be robust",
                       description="The class x data-option table (sim/lowerbound/options.py): the network at a "
                       "reduced, labelled budget and the C5 table for each data option; resumable OUT.json + OUT.md.")
    o.add_argument("--d", type=int, default=128)
    o.add_argument("--norm", default="l2")
    o.add_argument("--tau", type=float, default=0.25)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--clean-steps", type=int, default=300)
    o.add_argument("--adv-steps", type=int, default=150, help="FGM adversarial training steps (verify: 300)")
    o.add_argument("--scale", type=float, default=0.3, help="budget of the C5 table")
    o.add_argument("--n-eval", type=int, default=500)
    o.add_argument("--pgd-steps", type=int, default=20)
    o.add_argument("--only", help="comma-separated option names (default: all; ', ' inside a name is part of it)")
    o.add_argument("--out", default="figures/c5_data_options", help="writes OUT.json and OUT.md")
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=_cmd_lowerbound_options)


def _cmd_lowerbound_options(a) -> int:
    import re
    from .lowerbound.options import OptionsRun, markdown, run_options

    only = tuple(re.split(r",(?! )", a.only)) if a.only else None  # a comma and a space stay in a name
    run = OptionsRun(d=a.d, norm=a.norm, tau=a.tau, seed=a.seed, clean_steps=a.clean_steps, adv_steps=a.adv_steps,
                     scale=a.scale, n_eval=a.n_eval, pgd_steps=a.pgd_steps, only=only, out=a.out, quiet=a.quiet)
    args = ["--d", a.d, "--norm", a.norm, "--tau", a.tau, "--seed", a.seed, "--clean-steps", a.clean_steps,
            "--adv-steps", a.adv_steps, "--scale", a.scale, "--n-eval", a.n_eval, "--pgd-steps", a.pgd_steps,
            *(["--only", a.only] if a.only else []), "--out", a.out, *(["--quiet"] if a.quiet else [])]
    command = "python -m sim lowerbound options " + " ".join(shlex.quote(str(v)) for v in args)
    print(markdown(run_options(run, command)))
    return 0


def _int_list(name: str, text: str) -> tuple:
    """'1,10' -> (1, 10); '' -> (); anything else is a ConfigError naming the option."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is invalid: allowed comma-separated integers, e.g. 1,10") from None


def _cmd_lowerbound(a) -> int:
    import time

    from .common.files import atomic_write_bytes
    from .lowerbound.claims import c5_claims
    from .lowerbound.fit import check_int, check_norm_tau, check_parity, check_pos
    from .lowerbound.table import format_table, lower_bound_table
    from .model.config import DataConfig
    from .model.data import Problem

    lists = {k: _int_list(f"--{k.replace('_', '-')}", getattr(a, k)) for k in ("factors", "degrees", "atom_degrees")}
    for k, values in lists.items():
        if values and min(values) < 1:
            raise ConfigError(f"--{k.replace('_', '-')}={getattr(a, k)!r} is invalid: allowed comma-separated "
                              "integers >= 1, e.g. 1,10")
    check_norm_tau(a.norm, a.tau)  # before the data are generated
    check_pos("scale", a.scale)
    check_int("n_eval", a.n_eval, 1)
    check_parity(a.parity)
    if a.json:
        _check_output_file(a.json, "--json")
    cfg = DataConfig(d=a.d, k=a.k, seed=a.seed)
    problem = Problem.from_config(cfg)
    t0 = time.perf_counter()
    rows = lower_bound_table(problem, problem.train_set(), problem.test_set(), a.tau, a.norm, scale=a.scale,
                             n_eval=a.n_eval, quiet=a.quiet, parity=a.parity, n_factors=lists["factors"],
                             degrees=lists["degrees"], atom_degrees=lists["atom_degrees"])
    print(f"C5 at d={a.d}, k={a.k:g}, {a.norm} tau={a.tau:g}, parity={a.parity}, scale={a.scale:g}: "
          f"{time.perf_counter() - t0:.1f} s")
    print(format_table(rows))
    if a.net_robust is not None:
        for c in c5_claims(rows, a.norm, a.tau, a.net_robust):
            print(f"{c['id']}: {c['value']:.3f} ({'holds' if c['holds'] else 'does not hold'}) {c['description']}")
    if a.json:
        atomic_write_bytes(Path(a.json), json.dumps(rows, indent=1, default=float).encode())
    return 0


def add_experiments_command(subparsers) -> None:
    """`python -m sim experiments strategies`: claims C7 and C8 (sim/experiments/strategies.py)."""
    e = subparsers.add_parser("experiments", help="further experiments of the paper (strategies, low-rank updates)")
    esub = e.add_subparsers(dest="experiment", required=True)
    p = esub.add_parser("strategies", help="C7 and C8: FGM / FGM-RS / PGD-k training compared; low-rank updates")
    p.add_argument("--quick", action="store_true", help="the small version (d = 64, small sets), a few minutes")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a StrategiesConfig field, e.g. --set max_steps=300 or --set run.data.d=256")
    p.add_argument("--out", default="runs/strategies", help="output directory (default runs/strategies)")
    p.add_argument("--figures", help="where the figures go (default OUT/figures)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_strategies)


def _cmd_strategies(args) -> int:
    from .claims import claims_table
    from .experiments.strategies import StrategiesConfig, config_with_sets, quick_config, run_strategies

    cfg = config_with_sets(quick_config() if args.quick else StrategiesConfig(), args.set)
    parts = ["python -m sim experiments strategies", *(["--quick"] if args.quick else []),
             *(f"--set {shlex.quote(s)}" for s in args.set), f"--out {shlex.quote(args.out)}",
             *([f"--figures {shlex.quote(args.figures)}"] if args.figures else []),
             *(["--quiet"] if args.quiet else [])]
    out = Path(args.out)
    doc = run_strategies(cfg, out, quiet=args.quiet, figures=Path(args.figures) if args.figures else None,
                         command=" ".join(parts))
    print(claims_table(doc["claims"]))
    holds = sum(c["holds"] for c in doc["claims"])
    print(f"\n{holds} of {len(doc['claims'])} claims hold; {doc['seconds']:.0f} s; {out / 'strategies.json'}")
    return 0


def _fields_text(d: dict, width: int = 88) -> str:
    """'  data: d=256, D=None, ...' lines: the config fields and their defaults, for --help."""
    from .common.overrides import flatten

    lines = []
    for section, fields in d.items():
        items = [f"{k}={json.dumps(v)}" for k, v in flatten(fields).items()] if isinstance(fields, dict) \
            else [f"{section}={json.dumps(fields)}"]
        line = f"  {section}: " if isinstance(fields, dict) else "  "
        for item in items:
            if len(line) + len(item) > width:
                lines.append(line.rstrip())
                line = "      "
            line += item + ", "
        lines.append(line.rstrip(", "))
    return "\n".join(lines)


def _as_defaults(run: dict) -> dict:
    """A RunConfig dict with the derived fields shown as their defaults (null): D = d and the
    margin follow d and the magnitude unless set, so a copy of the printed defaults with only
    d changed stays valid."""
    data = dict(run["data"])
    if data["D"] == data["d"] and data["dictionary"] != "overcomplete":
        data["D"] = None
    if data["margin"] == (1.0 if data["magnitude"] == "pm1" else float(data["a_min"])):
        data["margin"] = None
    return {**run, "data": data}


def _train_epilog() -> str:
    from .model.config import RunConfig

    return ("config fields and their defaults (set one with --set SECTION.FIELD=VALUE, all with --config FILE.json;\n"
            "their meaning: the docstrings of sim/model/config.py and docs/MODEL.md; as JSON: python -m sim config):\n"
            + _fields_text(_as_defaults(RunConfig().to_dict())))


def _cmd_config(args) -> int:
    if args.which == "train":
        from .model.config import RunConfig

        doc = _as_defaults(RunConfig().to_dict())
    else:
        from .experiments.verify import VerifyConfig, quick_config

        doc = (quick_config() if args.quick else VerifyConfig()).to_dict()
        doc["run"] = _as_defaults(doc["run"])
    print(json.dumps(doc, indent=2))
    return 0


def _add_out_flags(p, resume_help: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help=resume_help)
    g.add_argument("--overwrite", action="store_true",
                   help="clear the --out folder first if it holds another run (a folder of other files is never "
                        "cleared)")


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="clean training by gradient descent, written to a run directory",
                       epilog=_train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file with {data: {...}, model: {...}, train: {...}}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set data.d=512 (repeatable; fields listed below)")
    p.add_argument("--out", default="runs/train", help="run directory (default runs/train): new or empty, unless "
                   "--resume or --overwrite")
    _add_out_flags(p, "continue the run in --out (same config) from its last snapshot: the same numbers as an "
                      "uninterrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    v = sub.add_parser("verify", help="the main job: train, attack, adversarially train, measure; claims table",
                       description="The main job (about 10 min on 2 quiet cores with the defaults; --quick: a d=64 "
                                   "version in under a minute). The claims it checks: docs/MODEL.md.")
    v.add_argument("--quick", action="store_true", help="a small version (d=64), under a minute")
    v.add_argument("--scaling", action="store_true",
                   help="claim C6: the window of radii over several d (k fixed and k = d^c)")
    v.add_argument("--workers", type=int, default=None,
                   help="processes for the threat models, run side by side (default: one per threat model, at most "
                        "the cores; 1: one after the other in this process); the numbers do not depend on it")
    v.add_argument("--config", help="JSON file overriding VerifyConfig fields (sim/experiments/verify.py; "
                                    "python -m sim config verify prints them)")
    v.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set tau_l2=0.2 or --set run.data.d=512 (repeatable)")
    v.add_argument("--out", default="runs/verify", help="output directory (default runs/verify): new or empty, "
                   "unless --resume or --overwrite")
    _add_out_flags(v, "reuse the finished clean training in --out (same config; resumed from its last snapshot "
                      "if it was cut short) and run the later stages again")
    v.add_argument("--json", help="also write verify.json to this path")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=_cmd_verify)
    c = sub.add_parser("config", help="print the default config of train or verify as JSON (the fields --set and "
                                      "--config accept)")
    c.add_argument("which", nargs="?", choices=("train", "verify"), default="train")
    c.add_argument("--quick", action="store_true", help="verify --quick's config")
    c.set_defaults(func=_cmd_config)
    add_sweep_commands(sub)
    add_bench_command(sub)
    add_lowerbound_command(sub)
    add_experiments_command(sub)
    return run(parser, argv)


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse argv and run the chosen command; a ConfigError is printed, exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
