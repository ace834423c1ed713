"""Command line: `python -m sim train|verify ...`."""
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
