"""Command line: `python -m sim train|verify|sweep|plot|bench ...`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, RunConfig


def parse_assignment(text: str) -> tuple[list[str], object]:
    """'data.d=512' -> (['data', 'd'], 512); values are read as JSON, else kept as strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected SECTION.FIELD=VALUE, e.g. data.d=512")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def config_from_args(base: dict, sets: list[str]) -> RunConfig:
    """A RunConfig from a base dict plus --set overrides (validated, errors name the field)."""
    d = json.loads(json.dumps(base))
    for text in sets:
        path, value = parse_assignment(text)
        if len(path) != 2 or path[0] not in ("data", "model", "train"):
            raise ConfigError(f"--set {text!r}: the key must be data.FIELD, model.FIELD or train.FIELD")
        d.setdefault(path[0], {})[path[1]] = value
    return RunConfig.from_dict(d)


def _cmd_train(args) -> int:
    from .run import train_clean

    base = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = config_from_args(base, args.set)
    run = train_clean(cfg, Path(args.out), quiet=args.quiet)
    final = run.log.rows[-1]
    print(f"clean training: test accuracy {final['test_acc']:.4f} after {cfg.train.steps} steps "
          f"in {run.seconds:.1f} s -> {args.out}")
    return 0


def _cmd_verify(args) -> int:
    from .report import claims_table
    from .verify import VerifyConfig, quick_config, run_verify

    vc = quick_config() if args.quick else VerifyConfig()
    if args.config:
        vc = VerifyConfig.from_dict({**vc.to_dict(), **json.loads(Path(args.config).read_text())})
    if args.set:
        d = vc.to_dict()
        for text in args.set:
            path, value = parse_assignment(text)
            node = d
            for key in path[:-1]:
                if key not in node or not isinstance(node[key], dict):
                    raise ConfigError(f"--set {text!r}: unknown section {key!r}")
                node = node[key]
            if path[-1] not in node:
                raise ConfigError(f"--set {text!r}: unknown parameter {'.'.join(path)!r}")
            node[path[-1]] = value
        vc = VerifyConfig.from_dict(d)
    out = Path(args.out)
    if args.scaling:
        from .scaling import ScalingConfig, run_scaling

        sc = ScalingConfig(ds=(32, 64, 128), n_eval=200) if args.quick else ScalingConfig()
        doc = run_scaling(vc, sc, out / "scaling", quiet=args.quiet)
        print(claims_table(doc["claims"]))
        print(f"\nscaling: {doc['seconds']:.0f} s; report: {out / 'scaling' / 'scaling.md'}")
        return 0
    doc = run_verify(vc, out, quiet=args.quiet)
    if args.json:
        from .rundir import atomic_write_json

        atomic_write_json(Path(args.json), doc)
    print(claims_table(doc["claims"]))
    holds = sum(c["holds"] for c in doc["claims"])
    print(f"\n{holds} of {len(doc['claims'])} claims hold; {doc['timings']['total']:.0f} s; report: {out / 'report.md'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="clean training by gradient descent, written to a run directory")
    p.add_argument("--config", help="JSON file with {data: {...}, model: {...}, train: {...}}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set data.d=512 (repeatable)")
    p.add_argument("--out", default="runs/train", help="run directory (default runs/train)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    v = sub.add_parser("verify", help="the main job: train, attack, adversarially train, measure; claims table")
    v.add_argument("--quick", action="store_true", help="a small version (d=64), under a minute")
    v.add_argument("--scaling", action="store_true",
                   help="claim C6: the window of radii over several d (k fixed and k = d^c)")
    v.add_argument("--config", help="JSON file overriding VerifyConfig fields (sim/verify.py)")
    v.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set tau_l2=0.2 or --set run.data.d=512 (repeatable)")
    v.add_argument("--out", default="runs/verify", help="output directory (default runs/verify)")
    v.add_argument("--json", help="also write verify.json to this path")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=_cmd_verify)
    from .sweep import add_sweep_commands

    add_sweep_commands(sub)
    from .bench import add_bench_command

    add_bench_command(sub)
    return run(parser, argv)


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse argv and run the chosen command; a ConfigError is printed, exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
