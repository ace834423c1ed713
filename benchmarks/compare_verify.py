"""Are two `python -m sim verify` output folders the same results?

    python benchmarks/compare_verify.py /tmp/v_before /tmp/v_after

verify.json without what measures time ("timings", "versions", "seconds" and every key
ending in "_seconds"), and every array of every .npz (weights_*.npz, clean/weights.npz,
clean/snapshots/) bit for bit (np.array_equal and the same dtype), and the other JSON and
JSONL files of the folders (clean/metrics.jsonl, ...) without their times. Prints each
difference and RESULT: IDENTICAL or DIFFERENT (exit status 0 or 1).

The exact verifier of the gap diagnosis has a wall-clock limit (exact_time_limit): on a
loaded machine a point may be 'undecided' in one run and decided in the other.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items()
                if k not in ("timings", "versions", "seconds") and not k.endswith("_seconds")}
    if isinstance(d, list):
        return [strip(v) for v in d]
    return d


def diff(x, y, path="", out=None):
    out = [] if out is None else out
    if type(x) is not type(y):
        out.append(f"{path}: {x!r} != {y!r}")
    elif isinstance(x, dict):
        for k in sorted(set(x) | set(y)):
            diff(x.get(k), y.get(k), f"{path}/{k}", out)
    elif isinstance(x, list):
        if len(x) != len(y):
            out.append(f"{path}: {len(x)} items != {len(y)}")
        for i, (u, v) in enumerate(zip(x, y)):
            diff(u, v, f"{path}[{i}]", out)
    elif x != y:
        out.append(f"{path}: {x!r} != {y!r}")
    return out


def _json_rows(p: Path):
    if p.suffix == ".jsonl":
        return [strip(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]
    return strip(json.loads(p.read_text()))


def compare(a: Path, b: Path) -> list[str]:
    problems = []
    for p in sorted(a.rglob("*.json*")):
        rel = p.relative_to(a)
        q = b / rel
        if not q.exists():
            problems.append(f"{rel}: missing in {b}")
            continue
        problems += [f"{rel}{d}" for d in diff(_json_rows(p), _json_rows(q))]
    na = sorted(p.relative_to(a) for p in a.rglob("*.npz"))
    nb = sorted(p.relative_to(b) for p in b.rglob("*.npz"))
    if na != nb:
        problems.append(f"npz files differ: {sorted(set(map(str, na)) ^ set(map(str, nb)))}")
    n_arrays = 0
    for rel in (r for r in na if r in nb):
        with np.load(a / rel) as za, np.load(b / rel) as zb:
            if sorted(za.files) != sorted(zb.files):
                problems.append(f"{rel}: keys {sorted(za.files)} != {sorted(zb.files)}")
            for k in za.files:
                if k in zb.files:
                    n_arrays += 1
                    if za[k].dtype != zb[k].dtype or not np.array_equal(za[k], zb[k]):
                        problems.append(f"{rel}[{k}]: arrays differ")
    print(f"{len(na)} npz files, {n_arrays} arrays compared")
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    problems = compare(Path(argv[0]), Path(argv[1]))
    for p in problems:
        print("DIFF", p)
    print("RESULT:", "DIFFERENT" if problems else "IDENTICAL")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
