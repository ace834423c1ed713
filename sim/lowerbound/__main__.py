"""`python -m sim.lowerbound [--d 256] [--tau 0.25] [--norm l2] [--scale 1] [--json out.json]`: the C5 table."""
from __future__ import annotations

import argparse
import json
import time

from ..config import DataConfig
from ..data import Problem
from .table import format_table, lower_bound_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.lowerbound", description=__doc__)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tau", type=float, default=0.25)
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--parity", default="odd")
    ap.add_argument("--factors", default="1,10", help="training-set sizes in units of N, e.g. 1,10")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    cfg = DataConfig(d=a.d, k=a.k, seed=a.seed)
    problem = Problem.from_config(cfg)
    t0 = time.perf_counter()
    rows = lower_bound_table(problem, problem.train_set(), problem.test_set(), a.tau, a.norm, scale=a.scale,
                             n_eval=a.n_eval, quiet=a.quiet, parity=a.parity,
                             n_factors=tuple(int(v) for v in a.factors.split(",")))
    print(f"C5 at d={a.d}, k={a.k:g}, {a.norm} tau={a.tau:g}, parity={a.parity}, scale={a.scale:g}: "
          f"{time.perf_counter() - t0:.1f} s")
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
