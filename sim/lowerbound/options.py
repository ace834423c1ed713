"""`python -m sim lowerbound options`: which data options let a model class be robust (issue 13, part 2).

For each data option (a DataConfig change from the default regime) this trains the
network as `verify` does but at a reduced, labelled budget (clean training, then FGM
adversarial training from the clean weights, `--adv-steps` online steps), measures its
robust accuracy (best of FGM, PGD, dense, random), builds the C5 table of
sim.lowerbound.table at `--scale`, and reports per class (linear, kernel/per-atom
polynomials of each degree, NTK) the best member and whether it reaches the network
("robust class": best member >= the adversarially trained network). Results go to
OUT.json (atomically rewritten after every option, so an interrupted run keeps what
finished and a rerun skips it) and OUT.md, with the command and commit. The options of
the command line (sim/cli.py) are the arguments of OptionsRun.

Options: baseline (the default regime: pm1, noise 0.05, k 4), magnitude 'uniform' with
a_min 0.5 and 0.1 (margin a_min; and a_min 0.1 with margin 1), noise 0.5 and 1.0 (total
norm), k growing with d (d^0.5, d/4), and exact sparsity (every sample has exactly round(k)
atoms, k = 4 and verify's k = 3) against the default Bernoulli draw (about Poisson(k) atoms).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sim import attacks
from sim.common.files import atomic_write_bytes, atomic_write_json
from sim.common.meta import code_version
from sim.common.norms import check_norm
from sim.common.progress import progress
from sim.common.validation import _check_int, _check_real, _fail
from sim.model.config import DataConfig, ModelConfig, RunConfig, TrainConfig

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
            f"k = d/4 = {d / 4:g}": {"k": float(d / 4)},
            "exact k = 4": {"sparsity": "exact"},
            "exact k = 3": {"sparsity": "exact", "k": 3.0}}


@dataclass(frozen=True)
class OptionsRun:
    """One run of the class x data-option table: d, threat model (norm, tau), data seed; the
    network's budget (clean_steps of clean training, adv_steps online FGM steps); the C5
    table's budget (scale); n_eval test points attacked by PGD-pgd_steps x 2 restarts;
    only: option names to run (None: all of options(d)); out: OUT.json and OUT.md."""

    d: int = 128
    norm: str = "l2"
    tau: float = 0.25
    seed: int = 0
    clean_steps: int = 300
    adv_steps: int = 150
    scale: float = 0.3
    n_eval: int = 500
    pgd_steps: int = 20
    only: tuple | None = None
    out: str = "figures/c5_data_options"
    quiet: bool = False

    def __post_init__(self):
        for name in ("d", "seed", "clean_steps", "adv_steps", "n_eval", "pgd_steps"):
            _check_int(name, getattr(self, name), lo=0 if name == "seed" else 1)
        _check_real("tau", self.tau, lo=0, lo_open=True)
        _check_real("scale", self.scale, lo=0, lo_open=True)
        check_norm(self.norm)
        if self.only is not None:
            object.__setattr__(self, "only", tuple(self.only))
            known = options(self.d)
            for name in self.only:
                if name not in known:
                    _fail("only[]", name, "option names " + ", ".join(repr(k) for k in known))

    @property
    def budget(self) -> str:
        return (f"clean {self.clean_steps} steps, FGM {self.adv_steps} online steps, table scale {self.scale:g}, "
                f"n_eval {self.n_eval}, PGD-{self.pgd_steps}x2")


def run_option(data: DataConfig, tau: float, norm: str, a: OptionsRun) -> dict:
    from sim.experiments.verify import VerifyConfig
    from sim.train.adversarial import adversarial_training
    from sim.train.clean import train_clean

    t0 = time.perf_counter()
    vc = VerifyConfig(run=RunConfig(data, ModelConfig(init_scale=4e-5), TrainConfig(lr=1.0, steps=a.clean_steps,
                                                                                  snapshots=(0,))),
                      norms=(norm,), adv_steps=a.adv_steps, lower_bound=False, certify=False,
                      adv_lr=0.5, adv_warmup=0, adv_plateau=False)  # the fixed budget this table was run at
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
             + "; ".join(f"`{c}`" for c in doc.get("commands", [doc["command"]])) + "."
             + (f" {doc['command_note']}" if doc.get("command_note") else ""), "",
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


def run_options(a: OptionsRun, command: str) -> dict:
    """Run the options of `a` not yet in OUT.json (resumed when d, norm, tau and the budget match),
    rewriting OUT.json and OUT.md after each; command: the command line, recorded with the commit."""
    opts = options(a.d)
    if a.only is not None:
        opts = {k: v for k, v in opts.items() if k in a.only}
    # built in one go: DataConfig resolves margin=None from the magnitude (a_min for 'uniform'), which a
    # .replace() of a resolved pm1 config would keep at 1 (the first run did that: its 'uniform' rows are
    # kept, renamed '..., margin 1')
    cfgs = {k: DataConfig(d=a.d, seed=a.seed, **v) for k, v in opts.items()}
    out = Path(a.out)
    jpath = out.with_suffix(".json")
    commit = code_version()
    doc = {"d": a.d, "norm": a.norm, "tau": a.tau, "command": command, "commit": commit, "budget": a.budget,
           "note": "Sparsity: the Bernoulli draw (about Poisson(k) active atoms) unless the option says 'exact' "
                   "(exactly round(k) atoms per sample).",
           "results": {}}
    if jpath.exists():
        old = json.loads(jpath.read_text())
        if all(old.get(k) == doc[k] for k in ("d", "norm", "tau", "budget")):
            doc["results"] = old.get("results", {})
            for k in ("command_note",):
                if k in old:
                    doc[k] = old[k]
            prev = old.get("commands", [f"{old.get('command')} (commit {old.get('commit')})"])
            doc["commands"] = prev + [f"{doc['command']} (commit {commit})"]
    doc.setdefault("commands", [f"{doc['command']} (commit {commit})"])
    for name, cfg in progress(cfgs.items(), desc="data options", quiet=a.quiet, total=len(cfgs)):
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
    return doc
