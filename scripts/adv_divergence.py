"""Does FGM adversarial training from the clean weights kill the network? (README, 'Adversarial
training can kill the network'.) One run per seed: verify's l2 half (VerifyConfig defaults, no
certificates, no lower bound) at the given k, lr, warm-up and radius ramp, or (--spec, --d) the
cell of a sweep spec at that d, k and seed; one JSON line per run with the steps, the
convergence record's verdicts, the held-out robust-accuracy curve (every 8th check), the clean
test accuracy and the neurons left (norm > 0.1 x the largest). Adversarial training only: no
retry (run_adversarial_once), so that a run that diverges shows as diverged. With --attack-radii
the clean and the adversarially trained network are attacked at those radii on the first
--n-attack test points (the sweep's attacks: FGM, PGD 20 x 2, the dense attack, 2 random draws),
overall and by margin class |<w*, z>|: how far each holds each class, past a sweep's grid.

    python scripts/adv_divergence.py --k 3 --seeds 0 1 2 3 --out figures/adv_divergence.jsonl
    python scripts/adv_divergence.py --k 4 --seeds 2 3 --lr 0.5 --out figures/adv_divergence.jsonl
    python scripts/adv_divergence.py --k 4 --seeds 2 3 --tau-ramp 200 --out figures/adv_divergence.jsonl
    python scripts/adv_divergence.py --spec sweeps/phase.toml --d 256 --k 4 --seeds 1 2 --tau-ramp 50 --out ...
    python scripts/adv_divergence.py --spec sweeps/phase.toml --d 1024 --k 4 --seeds 0 --beta 0.1 --out ...
    python scripts/adv_divergence.py --spec sweeps/phase.toml --d 512 --k 4 --seeds 0 --attack-radii 0.5 0.7 1.0 --out ...
"""
import argparse
import json
import time

import numpy as np

from sim import attacks
from sim.common.threads import limit_blas_once, set_numba_threads
from sim.experiments.verify import VerifyConfig
from sim.measures import by_margin, principal_share
from sim.model.data import margin_classes
from sim.train.adversarial import run_adversarial_once
from sim.train.clean import train_clean


def config(a, seed: int):
    """The run's config: verify's defaults at k, or the spec's cell at (d, k, seed); then the overrides."""
    over = {k: v for k, v in (("adv_lr", a.lr), ("adv_warmup", a.warmup), ("adv_tau_ramp", a.tau_ramp),
                              ("adv_steps", a.cap), ("adv_min_steps", a.min_steps), ("adv_beta", a.beta),
                              ("adv_beta_ramp", a.beta_ramp), ("tau_l2", a.tau)) if v is not None}
    if a.spec is None:
        vc = VerifyConfig(norms=("l2",), lower_bound=False, certify=False)
        vc = vc.replace(run=vc.run.replace(data=vc.run.data.replace(seed=seed, k=a.k)))
    else:
        from sim.sweep.spec import load_spec, parse_only, select_points

        pts = select_points(load_spec(a.spec).points, parse_only([f"d={a.d}", f"k={a.k!r}", f"seed={seed}"]))
        if not pts:
            raise SystemExit(f"--spec {a.spec} has no cell at d={a.d}, k={a.k}, seed={seed}")
        vc = pts[0].config
    return vc.replace(**over)


def top_atom_share(W, M) -> float:
    """The median neuron's largest dictionary coordinate over its norm (sim.measures.principal_share)."""
    return round(float(np.median(principal_share(W, M))), 4)


def attacked(nets: dict, problem, test, radii, n: int) -> dict:
    """Robust accuracy of each net at each radius on the first n test points, overall and by margin
    class: {"n_by_margin": {...}, NAME: {radius: {"all": acc, "2": acc, ...}}}."""
    X, y = test.x[:n], test.y[:n]
    cls = margin_classes(test.z[:n], problem.wstar)
    out = {"n_by_margin": {c: m["n"] for c, m in by_margin(np.ones(len(y)), cls).items() if m["n"]}}
    for name, net in nets.items():
        out[name] = {}
        for j, t in enumerate(radii):
            rep = attacks.evaluate_robustness(net, X, y, t, "l2", direction=problem.bayes_direction, pgd_steps=20,
                                              pgd_restarts=2, random_draws=2, seed=500 + j)
            out[name][str(t)] = {"all": round(float(rep.robust_accuracy), 3),
                                 **{c: round(m["acc"], 3) for c, m in by_margin(~rep.broken, cls).items() if m["n"]}}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=float, default=3.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--lr", type=float, default=None, help="adv_lr (default: verify's, or the spec's)")
    ap.add_argument("--warmup", type=int, default=None, help="adv_warmup (default: verify's, or the spec's)")
    ap.add_argument("--tau-ramp", type=int, default=None, help="adv_tau_ramp (default: verify's, or the spec's)")
    ap.add_argument("--cap", type=int, default=None, help="adv_steps (default: verify's, or the spec's)")
    ap.add_argument("--min-steps", type=int, default=None,
                    help="adv_min_steps: no plateau stop before this step (= --cap: run to the cap)")
    ap.add_argument("--beta", type=float, default=None, help="adv_beta, the final relative bias (default: verify's, or the spec's)")
    ap.add_argument("--beta-ramp", type=int, default=None, help="adv_beta_ramp (default: verify's, or the spec's)")
    ap.add_argument("--tau", type=float, default=None, help="tau_l2, the training radius (default: verify's, or the spec's)")
    ap.add_argument("--spec", default=None, help="a sweep spec: run its cell at --d, --k and each seed")
    ap.add_argument("--d", type=int, default=256, help="with --spec: the cell's d")
    ap.add_argument("--attack-radii", type=float, nargs="*", default=[],
                    help="attack both networks at these l2 radii, by margin class")
    ap.add_argument("--n-attack", type=int, default=500, help="the attacked test points (the first n)")
    ap.add_argument("--out", required=True, help="JSON lines, appended")
    a = ap.parse_args()
    limit_blas_once()
    set_numba_threads(1)
    for seed in a.seeds:
        vc = config(a, seed)
        t = time.time()
        clean = train_clean(vc.run, None, quiet=True)
        share_clean = top_atom_share(clean.net.W, clean.problem.M)
        ar = run_adversarial_once(clean, vc, "l2", "fgm", True, track=False)
        norms = np.linalg.norm(ar.net.W, axis=1)
        rec = {"k": a.k, "seed": seed, "adv_lr": vc.adv_lr, "adv_min_steps": vc.adv_min_steps, "adv_warmup": vc.adv_warmup,
               "adv_tau_ramp": vc.adv_tau_ramp, "adv_batch": vc.adv_batch, "adv_beta": vc.adv_beta, "tau_l2": vc.tau_l2,
               "adv_beta_ramp": vc.adv_beta_ramp,
               "steps": ar.convergence["steps"], "converged": ar.convergence["converged"],
               "diverged": bool(ar.convergence.get("diverged", False)),
               "curve": [round(c["value"], 3) for c in ar.convergence["curve"]][::8], "cap": vc.adv_steps,
               "clean_acc": float(ar.net.accuracy(clean.test.x, clean.test.y)),
               "neurons_left": int(np.sum(norms > 0.1 * norms.max())),
               "top_atom_share": {"clean": share_clean,
                                  "adv": top_atom_share(ar.net.W, clean.problem.M)},
               "seconds": round(time.time() - t, 1)}
        if a.attack_radii:
            rec["attacked"] = attacked({"clean_net": clean.net, "adv_net": ar.net}, clean.problem, clean.test,
                                       a.attack_radii, a.n_attack)
            rec["seconds"] = round(time.time() - t, 1)
        if a.spec is not None:
            rec = {"spec": a.spec, "d": a.d, **rec}
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
