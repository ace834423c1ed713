"""Does the clean network's non-robustness (C1) depend on how long clean training runs? (README,
'The C6 phase diagram'.) The cell of a sweep spec at d, k and seed, clean training with the plateau
rule off to --cap steps, a snapshot every --every steps; per snapshot one JSON line: the clean test
accuracy, the robust accuracy (FGM, PGD 20 x 2, the dense attack along M w*, 2 random draws) at the
radii on --n test points, overall and by margin class |<w*, z>|, and the C2 measures.

    python scripts/clean_training_length.py --spec sweeps/phase.toml --d 1024 --k 4 --cap 600 --every 200 \\
        --out figures/clean_training_length.jsonl
"""
import argparse
import json
import time

import numpy as np

from sim import attacks, measures
from sim.common.threads import limit_blas_once, set_numba_threads
from sim.model.data import MARGIN_TAGS as TAGS, margin_classes
from sim.model.network import TwoLayerNet
from sim.sweep.spec import load_spec, parse_only, select_points
from sim.train.clean import train_clean


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="a sweep spec, e.g. sweeps/phase.toml")
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--k", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap", type=int, default=600, help="clean training steps (the plateau rule off)")
    ap.add_argument("--every", type=int, default=200, help="a snapshot every so many steps")
    ap.add_argument("--radii", type=float, nargs="+", default=[0.1, 0.18, 0.25])
    ap.add_argument("--n", type=int, default=300, help="attacked test points")
    ap.add_argument("--out", required=True, help="JSON lines, appended")
    a = ap.parse_args()
    limit_blas_once()
    set_numba_threads(1)
    pts = select_points(load_spec(a.spec).points, parse_only([f"d={a.d}", f"k={a.k!r}", f"seed={a.seed}"]))
    if not pts:
        raise SystemExit(f"--spec {a.spec} has no cell at d={a.d}, k={a.k}, seed={a.seed}")
    cfg = pts[0].config
    run = cfg.run.replace(train=cfg.run.train.replace(steps=a.cap, plateau_every=0, snapshot_every=a.every))
    t0 = time.time()
    clean = train_clean(run, None, quiet=True)
    p, te = clean.problem, clean.test
    Xe, ye = te.x[:a.n], te.y[:a.n]
    cls = margin_classes(te.z[:a.n], p.wstar)
    for step in sorted(s for s in clean.snapshots if s > 0):
        net = TwoLayerNet(np.ascontiguousarray(clean.snapshots[step], dtype=clean.net.W.dtype), clean.net.model,
                          beta=clean.net.beta)
        rec = {"spec": a.spec, "d": a.d, "k": a.k, "seed": a.seed, "step": step,
               "clean_acc": float(net.accuracy(te.x, te.y)), "n_attacked": int(len(ye)),
               "n_by_margin": {tag: m["n"] for tag, m in zip(TAGS, measures.by_margin(np.ones(len(ye)), cls).values())
                               if m["n"]}}
        for j, t in enumerate(a.radii):
            rep = attacks.evaluate_robustness(net, Xe, ye, t, "l2", direction=p.bayes_direction, pgd_steps=20,
                                              pgd_restarts=2, random_draws=2, seed=7 + j)
            rec[f"robust@{t}"] = round(float(rep.robust_accuracy), 3)
            rec[f"by_margin@{t}"] = {tag: round(m["acc"], 3)
                                     for tag, m in zip(TAGS, measures.by_margin(~rep.broken, cls).values()) if m["n"]}
        rec.update({k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in measures.summarize_dense(net, p.M, p.wstar, Xe).items()})
        rec["seconds"] = round(time.time() - t0)
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
