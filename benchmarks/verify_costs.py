"""The main costs of `python -m sim verify` at its default scale, before and after a change.

A full `sim verify` takes too long to time repeatedly on a shared machine, so this times
its main costs with the defaults of sim.experiments.verify.VerifyConfig (d = 256, N = 6000, m = 512,
float32):

- clean: clean training, 300 full-batch steps (sim.train.clean.train_clean: data, training, the
  test evaluations every 25 steps);
- fgm_step: one FGM (l2) adversarial-training step in online mode (batch 6000): the fresh
  batch, FGM on it, the gradient step; split into its parts (median of 5 steps);
- robust_eval: one robust evaluation at tau_l2 on n_eval = 1000 points (FGM, PGD 50 x 5,
  dense attack, random control: sim.attacks.evaluate_robustness).

Usage (from the repository root):

    git archive HEAD sim | tar -x -C /tmp/before            # the version to compare with
    python benchmarks/verify_costs.py --before /tmp/before --pairs 2

Each pair runs one process of each version, alternating, so that the load of a shared
machine falls on both alike; the table gives the median over pairs and the ratio
after / before. `--root DIR --json FILE` runs one measurement with the sim package in DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# verify's defaults when this was written (fixed here, so that both versions do the same work)
TAU_L2, ADV_BATCH, ADV_LR, PGD_STEPS, PGD_RESTARTS = 0.25, 6000, 1.0, 50, 5


def measure(fgm_steps: int = 5, eval_points: int = 1000, skip_eval: bool = False) -> dict:
    import numpy as np

    from sim import attacks
    try:  # the package layout (sim/train, sim/experiments) ...
        from sim.experiments.verify import VerifyConfig
        from sim.train.adversarial import make_perturb
        from sim.train.clean import train_clean
    except ImportError:  # ... or the flat one of the commits before it, to compare against them
        from sim.adversarial import make_perturb
        from sim.run import train_clean
        from sim.verify import VerifyConfig

    vc = VerifyConfig()  # its `run` (data, model, training) is the same in both versions
    out = {"sim": str(Path(sys.modules["sim"].__file__).parent)}
    t0 = time.perf_counter()
    clean = train_clean(vc.run, None, quiet=True)
    out["clean"] = time.perf_counter() - t0
    out["clean_test_acc"] = clean.log.rows[-1]["test_acc"]
    net = clean.net.copy()
    dtype = np.dtype(vc.run.train.dtype)
    perturb = make_perturb("fgm", TAU_L2, "l2", clean.cfg.data)
    parts = {"batch": [], "fgm": [], "grad": [], "total": []}
    for step in range(fgm_steps):
        t0 = time.perf_counter()
        batch = clean.problem.online_batch(step, ADV_BATCH)
        X, y = np.ascontiguousarray(batch.x, dtype=dtype), batch.y.astype(np.float64)
        t1 = time.perf_counter()
        Xa = np.ascontiguousarray(perturb(net, X, y, step), dtype=dtype)
        t2 = time.perf_counter()
        _, g, _, _ = net.loss_and_grad(Xa, y)
        net.W -= dtype.type(ADV_LR) * g
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            parts[k].append(v)
    out["fgm_step"] = {k: float(np.median(v)) for k, v in parts.items()}
    if not skip_eval:
        te = clean.test
        t0 = time.perf_counter()
        rep = attacks.evaluate_robustness(clean.net, te.x[:eval_points], te.y[:eval_points], TAU_L2, "l2",
                                          direction=clean.problem.bayes_direction, pgd_steps=PGD_STEPS,
                                          pgd_restarts=PGD_RESTARTS)
        out["robust_eval"] = time.perf_counter() - t0
        out["robust_acc"] = rep.robust_accuracy
    return out


def _worker(root: str, json_path: str, skip_eval: bool) -> None:
    sys.path.insert(0, os.path.abspath(root))
    res = measure(skip_eval=skip_eval)
    Path(json_path).write_text(json.dumps(res))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a folder holding the sim package to compare with (e.g. from git archive)")
    ap.add_argument("--after", default=str(HERE.parent), help="the folder with the sim package to measure "
                    "(default: this repository)")
    ap.add_argument("--pairs", type=int, default=2, help="alternating before/after process pairs (default 2)")
    ap.add_argument("--skip-eval", action="store_true", help="leave out the robust evaluation (the longest part)")
    ap.add_argument("--root", help="(worker) run one measurement with the sim package in this folder")
    ap.add_argument("--json", help="(worker, or the driver) write the results here")
    args = ap.parse_args(argv)
    if args.root:
        _worker(args.root, args.json, args.skip_eval)
        return 0
    versions = {"after": args.after} | ({"before": args.before} if args.before else {})
    runs = {k: [] for k in versions}
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(args.pairs):
            for name in (list(versions) if p % 2 == 0 else list(versions)[::-1]):
                path = Path(tmp) / f"{name}_{p}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--root", versions[name], "--json", str(path)]
                if args.skip_eval:
                    cmd.append("--skip-eval")
                subprocess.run(cmd, check=True, cwd=tmp)  # cwd: so that `import sim` finds only --root
                runs[name].append(json.loads(path.read_text()))
                print(f"pair {p + 1}: {name}: {_line(runs[name][-1])}", file=sys.stderr, flush=True)
    table = _table(runs)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "table": table}, indent=2))
    return 0


def _flat(r: dict) -> dict:
    out = {"clean (300 steps)": r["clean"]}
    out.update({f"fgm step: {k}": v for k, v in r["fgm_step"].items()})
    if "robust_eval" in r:
        out["robust eval (n=1000)"] = r["robust_eval"]
    return out


def _line(r: dict) -> str:
    return ", ".join(f"{k} {v:.3f}s" for k, v in _flat(r).items())


def _table(runs: dict) -> str:
    import statistics

    names = list(runs)
    keys = list(_flat(runs[names[0]][0]))
    lines = [f"{'cost':28s}" + "".join(f"{n + ' s':>12s}" for n in names) + (f"{'after/before':>14s}" if
                                                                             "before" in runs else "")]
    for k in keys:
        med = {n: statistics.median(_flat(r)[k] for r in runs[n]) for n in names}
        row = f"{k:28s}" + "".join(f"{med[n]:12.3f}" for n in names)
        if "before" in runs:
            row += f"{med['after'] / med['before']:14.2f}"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
