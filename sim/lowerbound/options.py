"""`python -m sim.lowerbound.options`: which data options let a model class be robust (issue 13, part 2).

For each data option (a DataConfig change from the default regime) this trains the
network as `verify` does but at a reduced, labelled budget (clean training, then FGM
adversarial training from the clean weights, `--adv-steps` online steps), measures its
robust accuracy (best of FGM, PGD, dense, random), builds the C5 table of
sim.lowerbound.table at `--scale`, and reports per class (linear, kernel/per-atom
polynomials of each degree, NTK) the best member and whether it reaches the network
("robust class": best member >= the adversarially trained network). Results go to
OUT.json (atomically rewritten after every option, so an interrupted run keeps what
finished and a rerun skips it) and OUT.md, with the command and commit.

Options: baseline (the default regime: pm1, noise 0.05, k 4), magnitude 'uniform' with
a_min 0.5 and 0.1 (margin a_min; and a_min 0.1 with margin 1), noise 0.5 and 1.0 (total
norm), k growing with d (d^0.5, d/4). Exact vs Bernoulli sparsity is not an option here: this
branch's DataConfig has no sparsity field (Bernoulli only).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import attacks
from ..config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from ..rundir import atomic_write_bytes, atomic_write_json
from .claims import _class_key
from .table import lower_bound_table


def options(d: int) -> dict[str, dict]:
    """name -> DataConfig overrides (the baseline is the default regime)."""
    return {"baseline": {},
            "uniform a_min 0.5": {"magnitude": "uniform", "a_min": 0.5},
            "uniform a_min 0.1": {"magnitude": "uniform", "a_min": 0.1},
            "uniform a_min 0.1, margin 1": {"magnitude": "uniform", "a_min": 0.1, "margin": 1.0},
            "noise 0.5": {"noise": 0.5},
            "noise 1.0": {"noise": 1.0},
            f"k = d^0.5 = {d ** 0.5:.3g}": {"k": float(d ** 0.5)},
            f"k = d/4 = {d / 4:g}": {"k": float(d / 4)}}


def run_option(data: DataConfig, tau: float, norm: str, a) -> dict:
    from ..run import train_clean
    from ..verify import VerifyConfig, adversarial_training

    t0 = time.perf_counter()
    vc = VerifyConfig(run=RunConfig(data, ModelConfig(init_scale=4e-5), TrainConfig(lr=1.0, steps=a.clean_steps,
                                                                                  snapshots=(0,))),
                      norms=(norm,), adv_steps=a.adv_steps, lower_bound=False, certify=False)
    clean = train_clean(vc.run, None, quiet=a.quiet)
    p, te = clean.problem, clean.test
    Xe, ye = te.x[:a.n_eval], te.y[:a.n_eval]
    adv, _, _ = adversarial_training(clean, vc, norm, "fgm", a.adv_steps, a.quiet, track=False)
    rep = attacks.evaluate_robustness(adv, Xe, ye, tau, norm, direction=p.bayes_direction, pgd_steps=a.pgd_steps,
                                      pgd_restarts=2)
    rep_clean = attacks.evaluate_robustness(clean.net, Xe, ye, tau, norm, direction=p.bayes_direction,
                                            pgd_steps=a.pgd_steps, pgd_restarts=2)
    t_net = time.perf_counter() - t0
    rows = lower_bound_table(p, clean.train, te, tau, norm, scale=a.scale, n_eval=a.n_eval, quiet=a.quiet,
                             degrees=(3,), n_factors=(1,), model_cfg=vc.run.model)
    net = rep.robust_accuracy
    classes = {}
    for r in rows:
        c = classes.get(r["class"])
        if c is None or r["robust_acc"] > c["robust_acc"]:
            classes[r["class"]] = {"robust_acc": r["robust_acc"], "certified_acc": r.get("certified_acc"),
                                   "kind": r["robust_kind"], "training": r["training"], "note": r.get("note", "")}
    for c in classes.values():
        c["reaches_network"] = bool(c["robust_acc"] >= net)
    return {"data": data.to_dict(), "network": {"clean_acc": rep.clean_accuracy, "robust_acc": net,
                                                "clean_net_robust_acc": rep_clean.robust_accuracy,
                                                "per_attack": rep.per_attack},
            "classes": classes, "rows": rows, "seconds": {"network": t_net, "total": time.perf_counter() - t0}}


def markdown(doc: dict) -> str:
    res = doc["results"]
    classes = sorted({c for r in res.values() for c in r["classes"]}, key=_class_key)
    lines = [f"# C5 by data option (d = {doc['d']}, {doc['norm']} tau = {doc['tau']:g})", "",
             "Commands (a run resumes the file and adds the options not yet in it): "
             + "; ".join(f"`{c}`" for c in doc.get("commands", [doc["command"]])) + ".", "",
             "Each cell: the best robust accuracy found in the class (exact for linear; attacked otherwise, "
             "certified lower bound in brackets where one exists) and **yes** where it reaches the adversarially "
             f"trained network. Network: FGM adversarial training at a reduced budget ({doc['budget']}), robust "
             "accuracy = best of FGM, PGD, dense, random. " + doc["note"], "",
             "| option | network clean / robust (clean net robust) | " + " | ".join(classes) + " |",
             "| --- | --- | " + " | ".join("---" for _ in classes) + " |"]
    for name, r in res.items():
        n = r["network"]
        cells = []
        for c in classes:
            v = r["classes"].get(c)
            if v is None:
                cells.append("-")
                continue
            s = f"{v['robust_acc']:.3f}" + (f" [{v['certified_acc']:.3f}]" if v.get("certified_acc") is not None
                                            else "") + f" {v['training']}"
            cells.append(("**yes** " if v["reaches_network"] else "") + s)
        lines.append(f"| {name} | {n['clean_acc']:.3f} / {n['robust_acc']:.3f} ({n['clean_net_robust_acc']:.3f}) | "
                     + " | ".join(cells) + " |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v['seconds']['total']:.0f}" for k, v in res.items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.lowerbound.options", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--tau", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean-steps", type=int, default=300)
    ap.add_argument("--adv-steps", type=int, default=150, help="FGM adversarial training steps (verify: 300)")
    ap.add_argument("--scale", type=float, default=0.3, help="budget of the C5 table")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--only", help="comma-separated option names (default: all)")
    ap.add_argument("--out", default="figures/c5_data_options", help="writes OUT.json and OUT.md")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        opts = options(a.d)
        if a.only:
            opts = {k: v for k, v in opts.items() if k in a.only.split(",")}
        # built in one go: DataConfig resolves margin=None from the magnitude (a_min for 'uniform'), which a
        # .replace() of a resolved pm1 config would keep at 1 (the first run did that: its 'uniform' rows are
        # kept, renamed '..., margin 1')
        cfgs = {k: DataConfig(d=a.d, seed=a.seed, **v) for k, v in opts.items()}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    jpath = out.with_suffix(".json")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except OSError:
        commit = None
    doc = {"d": a.d, "norm": a.norm, "tau": a.tau, "command": "python -m sim.lowerbound.options " + " ".join(
               argv if argv is not None else sys.argv[1:]), "commit": commit,
           "budget": f"clean {a.clean_steps} steps, FGM {a.adv_steps} online steps, table scale {a.scale:g}, "
                     f"n_eval {a.n_eval}, PGD-{a.pgd_steps}x2",
           "note": "Exact vs Bernoulli sparsity: not run (this branch's DataConfig has Bernoulli sparsity only).",
           "results": {}}
    if jpath.exists():
        old = json.loads(jpath.read_text())
        if all(old.get(k) == doc[k] for k in ("d", "norm", "tau", "budget")):
            doc["results"] = old.get("results", {})
            prev = old.get("commands", [f"{old.get('command')} (commit {old.get('commit')})"])
            doc["commands"] = prev + [f"{doc['command']} (commit {commit})"]
    doc.setdefault("commands", [f"{doc['command']} (commit {commit})"])
    for name, cfg in tqdm(cfgs.items(), desc="data options", disable=a.quiet):
        if name in doc["results"]:
            continue
        doc["results"][name] = run_option(cfg, a.tau, a.norm, a)
        atomic_write_json(jpath, doc)
        atomic_write_bytes(out.with_suffix(".md"), markdown(doc).encode())
        if not a.quiet:
            print(name, {c: round(v["robust_acc"], 3) for c, v in doc["results"][name]["classes"].items()},
                  "network", round(doc["results"][name]["network"]["robust_acc"], 3), flush=True)
    atomic_write_json(jpath, doc)
    atomic_write_bytes(out.with_suffix(".md"), markdown(doc).encode())
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
