"""Command line: ``python -m cifar run --preset smoke --out DIR`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys

from cifar.attacks import NORMS, parse_eps
from cifar.data import DataError
from cifar.pipeline import PRESETS, get_preset, run
from cifar.runtime import DEVICES


def _ranks(text: str) -> tuple[int, ...]:
    try:
        ranks = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"ranks must be comma-separated positive integers such as 1,2,4,8,16, got {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be comma-separated positive integers such as 1,2,4,8,16, got {text!r}")
    return ranks


def _eps(text: str) -> float:
    try:
        return parse_eps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cifar", description="Feature purification on CIFAR-10 (Allen-Zhu & Li, FOCS 2021).")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a preset end to end and write a report")
    r.add_argument("--preset", required=True, choices=sorted(PRESETS), help="smoke (CPU, <1 min), fast (GPU), gpu (H100, ~10 min)")
    r.add_argument("--out", required=True, help="output folder for report.md, report.json, figures/, checkpoints/")
    r.add_argument("--data", default=None, help="cifar10-jpeg-q75.npz (or its folder) or a cifar-10-batches-py folder")
    r.add_argument("--cache", default=None, help="where decoded JPEG images are cached (default ~/.cache/feature-purification)")
    r.add_argument("--device", default="auto", help=f"one of {DEVICES} or cuda:N (default auto)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--norm", choices=NORMS, default=None, help="threat model of adversarial training (default: the preset's)")
    r.add_argument("--eps", type=_eps, default=None, help="radius, e.g. 8/255 for linf or 0.5 for l2")
    r.add_argument("--ranks", type=_ranks, default=None, help="low-rank fine-tuning ranks, e.g. 1,2,4,8,16")
    r.add_argument("--adv-mode", choices=("pgd", "fgsm"), default=None, help="adversarial training method (default: the preset's)")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: the preset's, smoke uses 1)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    sub.add_parser("presets", help="list the presets")
    pr = sub.add_parser("prepare", help="verify, decode and cache the data once")
    pr.add_argument("--data", default=None)
    pr.add_argument("--cache", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "presets":
            for name in sorted(PRESETS):
                print(f"{name:6s} {PRESETS[name]().description}")
            return 0
        if args.command == "prepare":
            from cifar.data import load_cifar10

            ds = load_cifar10(args.data, args.cache)
            print(f"{ds.source}: {len(ds.train_y)} train / {len(ds.test_y)} test from {ds.path} (checksum verified: {ds.verified})")
            for n in ds.notes:
                print(n)
            return 0
        preset = get_preset(args.preset, args.norm, args.eps, args.ranks, args.adv_mode)
        report = run(preset, args.out, args.data, args.cache, args.device, args.quiet, args.seed, args.threads)
        if args.quiet:
            print(f"{args.out}/report.md ({report['total_s']:.1f}s)")
        return 0
    except (ValueError, DataError, RuntimeError) as e:
        print(f"cifar: error: {e}", file=sys.stderr)
        return 2
