"""Add the linear models' robust accuracy by margin class to a sweep's finished cells that were
written before the sweep job had it (sim.sweep.job.add_linear_margin_rows): each cell's linear
models are refitted from its config and must reproduce the stored rows exactly before the margin
rows are added; then OUT/results.csv is rebuilt. Cheap (seconds a cell: no network is trained).

    python scripts/linear_by_margin.py sweeps/phase.toml              # OUT = runs/sweeps/phase
    python -m sim plot runs/sweeps/phase                              # the margin windows
"""
import argparse
import json

from sim.common.threads import limit_blas_once
from sim.sweep.job import add_linear_margin_rows
from sim.sweep.spec import load_spec
from sim.sweep.store import default_out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="the sweep spec, e.g. sweeps/phase.toml")
    ap.add_argument("--out", default=None, help="the sweep directory (default runs/sweeps/NAME)")
    a = ap.parse_args()
    limit_blas_once()
    spec = load_spec(a.spec)
    out = a.out or default_out(spec)
    report = add_linear_margin_rows(out, spec)
    print(json.dumps({k: (len(v) if k != "mismatch" else v) for k, v in report.items()}, indent=1))
    if report["mismatch"]:
        raise SystemExit(f"{len(report['mismatch'])} cell(s) did not reproduce their stored linear rows: left as they were")


if __name__ == "__main__":
    main()
