"""Command line: ``python -m cifar run --preset smoke --out DIR`` (see ``--help``).

Every parameter is checked before torch is imported (a few seconds) and before anything
is written: a bad one is a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cifar.config import NORMS, ConfigError, check_device, check_out, parse_eps
from cifar.data import DATA_ENV, JPEG_NAME, BATCHES_NAME, DataError, default_cache_dir, resolve_data_path
from cifar.presets import PRESETS, get_preset

PROG = "python -m cifar"
DATA_HELP = (
    f"{JPEG_NAME} (or its folder) or a {BATCHES_NAME} folder; default: ${DATA_ENV} when set (it must exist), "
    "else the first of ./.data/cifar10, <checkout>/.data/cifar10, <checkout>/../shared/data/cifar10 that holds the data"
)
CACHE_HELP = "folder for the decoded images of the JPEG archive (default $FP_CACHE, else $XDG_CACHE_HOME or ~/.cache, /feature-purification)"
DATA_ORDER = (
    "CIFAR-10 is looked for, in order: --data PATH; $CIFAR10_DATA (when set it must exist); ./.data/cifar10; "
    "<checkout>/.data/cifar10; <checkout>/../shared/data/cifar10 (<checkout> = the folder holding cifar/)."
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: '<prog>: error: <message>' and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _ranks(text: str) -> tuple[int, ...]:
    msg = f"ranks must be comma-separated positive integers such as 1,2,4,8,16, got {text!r}"
    try:
        ranks = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(msg) from None
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(msg)
    return ranks


def _argument(check):
    """An argparse type from a cifar.config check: its ConfigError becomes argparse's one-line error."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


_eps = _argument(parse_eps)


def _int_in(name: str, lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{name} must be an integer {rng}, got {text!r}")
        return v

    return parse


_device = _argument(check_device)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description="Feature purification on CIFAR-10 (Allen-Zhu & Li, FOCS 2021).", epilog=DATA_ORDER)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{run,presets,prepare}")
    r = sub.add_parser("run", help="run a preset end to end and write a report", description="Run a preset end to end: "
                       "training, attacks, purification measures, figures; report.md and report.json in --out.", epilog=DATA_ORDER)
    r.add_argument("--preset", required=True, choices=sorted(PRESETS), help="see `python -m cifar presets` (smoke: CPU, under a minute)")
    r.add_argument("--out", required=True, help="output folder for report.md, report.json, figures/, measures/, checkpoints/")
    r.add_argument("--data", default=None, help=DATA_HELP)
    r.add_argument("--cache", default=None, help=CACHE_HELP)
    r.add_argument("--device", type=_device, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    r.add_argument("--seed", type=_int_in("seed", 0, 2**32 - 1), default=None,
                   help="seed of the initial weights, data subsets, batch order and attacks (default: the preset's, 0)")
    r.add_argument("--norm", choices=NORMS, default=None, help="threat model of adversarial training and evaluation (default: the preset's, linf)")
    r.add_argument("--eps", type=_eps, default=None, help="radius, e.g. 8/255 for linf or 0.5 for l2 (default: the preset's)")
    r.add_argument("--ranks", type=_ranks, default=None, help="low-rank fine-tuning ranks, e.g. 1,2,4,8,16 (default: the preset's)")
    r.add_argument("--adv-mode", choices=("pgd", "fgsm"), default=None, help="adversarial training method (default: the preset's)")
    r.add_argument("--threads", type=_int_in("threads", 1), default=None, help="CPU threads for torch (default: the preset's; smoke uses 1)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    r.add_argument("--overwrite", action="store_true",
                   help="clear --out first when it holds an earlier run (without it such a folder is refused)")
    sub.add_parser("presets", help="list the presets", description="List the presets with what each runs.")
    pr = sub.add_parser("prepare", help="verify, decode and cache the data once",
                        description="Find the data, verify its checksum, decode the JPEG archive once and cache it.", epilog=DATA_ORDER)
    pr.add_argument("--data", default=None, help=DATA_HELP)
    pr.add_argument("--cache", default=None, help=CACHE_HELP)
    return ap


def _check_cache(cache: str | None) -> None:
    path = Path(cache).expanduser() if cache is not None else default_cache_dir()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cache={str(path)!r} exists and is not a folder")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "presets":
            for name in sorted(PRESETS):
                print(f"{name:6s} {PRESETS[name]().description}")
            return 0
        # everything below is checked before torch is imported and before anything is written
        try:
            resolve_data_path(args.data)
        except DataError as e:
            raise DataError(f"--data {e}" if args.data is not None else str(e)) from None
        _check_cache(args.cache)
        if args.command == "prepare":
            from cifar.data import load_cifar10

            ds = load_cifar10(args.data, args.cache)
            print(f"{ds.source}: {len(ds.train_y)} train / {len(ds.test_y)} test from {ds.path} (checksum verified: {ds.verified})")
            for n in ds.notes:
                print(n)
            return 0
        preset = get_preset(args.preset, args.norm, args.eps, args.ranks, args.adv_mode)
        check_out(Path(args.out))
        from cifar.pipeline import run  # imports torch: seconds

        command = " ".join([PROG] + [shlex.quote(a) for a in argv])
        report = run(preset, args.out, args.data, args.cache, args.device, args.quiet, args.seed, args.threads, command,
                     overwrite=args.overwrite)
        if args.quiet:
            print(f"{args.out}/report.md ({report['total_s']:.1f}s)")
        return 0
    except (ValueError, DataError, OSError) as e:  # ConfigError is a ValueError
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
