"""`python -m sim verify --scaling`: claim C6, the window of radii against d.

For each d (with k fixed, and with k = d^c) and a grid of l2 radii:
- tau_C1: the smallest radius at which the clean network's robust accuracy is <= 10 %;
- tau_lin: the same for the Bayes linear classifier x -> <M w*, x> (exact, closed form:
  the worst l2 perturbation lowers its margin by tau |M w*|);
- tau_C3: the largest radius at which the FGM-trained network (trained at tau_train)
  keeps robust accuracy >= 90 %.
The window where C1, C3 and the linear part of C5 hold together is
(max(tau_C1, tau_lin), tau_C3]; SPEC C6 predicts that it widens as d/k grows. Attacks
here are lighter than in `verify` (FGM, dense, PGD-10) to afford the sweep over d; the
measured numbers are upper bounds on robust accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sim import attacks
from sim.claims import CLAIMS, c6_window, judge
from sim.common.outdir import prepare_out_dir
from sim.common.progress import progress
from sim.common.validation import ConfigError
from sim.train.adversarial import adversarial_training
from sim.train.clean import train_clean

from .verify import VerifyConfig


@dataclass(frozen=True)
class ScalingConfig:
    ds: tuple = (128, 256, 512)
    k_fixed: float = 4.0
    k_exponent: float = 0.25
    radii: tuple = (0.02, 0.04, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5)
    n_eval: int = 300


def _robust_light(net, X, y, tau, direction):
    fg = attacks.fgm(net, X, y, tau, "l2")
    de = attacks.dense(net, X, y, tau, direction, "l2")
    pg = attacks.pgd(net, X, y, tau, "l2", steps=10, restarts=1)
    broken = fg.success | de.success | pg.success | (y * net.forward(X) <= 0)
    return float(np.mean(~broken))


def linear_robust(X, y, v, tau):
    """Exact l2 robust accuracy of x -> <v, x>: margin y<v,x> - tau |v| > 0."""
    return float(np.mean(y * (X @ v) - tau * np.linalg.norm(v) > 0))


def scaling_rows(vc: VerifyConfig, sc: ScalingConfig, quiet=False) -> list[dict]:
    rows = []
    cells = [(d, mode) for d in sc.ds for mode in ("fixed", "power")]
    for d, mode in progress(cells, desc="C6 scaling", quiet=quiet):
        k = sc.k_fixed if mode == "fixed" else float(d) ** sc.k_exponent
        t0 = time.perf_counter()
        run_cfg = vc.run.replace(data=vc.run.data.replace(d=d, D=d, k=k))
        cell_vc = vc.replace(run=run_cfg, norms=("l2",))
        clean = train_clean(run_cfg, None, quiet=True)
        adv, _, _ = adversarial_training(clean, cell_vc, "l2", vc.adv_kind, vc.adv_steps, True, track=False)
        te, p = clean.test, clean.problem
        X, y = te.x[:sc.n_eval], te.y[:sc.n_eval]
        v = p.bayes_direction
        curve = [{"tau": t, "clean_net": _robust_light(clean.net, X, y, t, v),
                  "adv_net": _robust_light(adv, X, y, t, v), "linear": linear_robust(te.x, te.y, v, t)}
                 for t in sc.radii]
        clean_acc, adv_clean_acc = clean.log.rows[-1]["test_acc"], adv.accuracy(X, y)
        w = c6_window(sc.radii, {c["tau"]: c["clean_net"] for c in curve}, [{c["tau"]: c["linear"] for c in curve}],
                      {c["tau"]: c["adv_net"] for c in curve}, clean_acc, adv_clean_acc)
        rows.append({"d": d, "k": k, "k_mode": mode, "tau_C1": w["tau_C1"], "tau_lin": w["tau_lin"],
                     "tau_C3": w["tau_C3"], "window": w["width"], "clean_acc": clean_acc,
                     "adv_clean_acc": adv_clean_acc, "curve": curve, "seconds": time.perf_counter() - t0})
    return rows


def scaling_claims(rows):
    """C6-fixed and C6-power: the window widens monotonically with d (CLAIMS['C6'])."""
    out = []
    for mode in ("fixed", "power"):
        rs = sorted((r for r in rows if r["k_mode"] == mode), key=lambda r: r["d"])
        widths = [r["window"] for r in rs]
        widens = all(b >= a for a, b in zip(widths, widths[1:])) and CLAIMS["C6"].holds(widths[-1] - widths[0])
        desc = (f"window (max(tau_C1, tau_lin), tau_C3] widens with d, k {mode}: widths "
                + ", ".join(f"d={r['d']}: {r['window']:.3g}" for r in rs))
        out.append(judge("C6", f"-{mode}", desc, widths[-1] - widths[0], holds=widens))
    return out


def run_scaling(vc: VerifyConfig, sc: ScalingConfig, out, quiet=False, *, resume=False, overwrite=False) -> dict:
    """Rows, claims, scaling.json, scaling.md and figures/window_vs_d.png under out (new or
    empty; overwrite=True clears a run there; resume is refused: nothing partial is kept)."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.claims import claims_table

    from .report import _save
    from sim.common.files import atomic_write_bytes, atomic_write_json
    from sim.common.meta import versions

    out = Path(out)
    if resume:
        raise ConfigError("--resume is not supported with --scaling (its cells keep no partial results); "
                          "use --overwrite to run it again")
    prepare_out_dir(out, "sim verify --scaling", {"verify": vc.to_dict(), "scaling": dict(sc.__dict__)},
                    overwrite=overwrite, run_files=("scaling.json", "scaling.md"))
    t0 = time.perf_counter()
    rows = scaling_rows(vc, sc, quiet)
    claims = [c.to_dict() for c in scaling_claims(rows)]
    doc = {"claims": claims, "rows": rows, "config": {"verify": vc.to_dict(), "scaling": sc.__dict__},
           "versions": versions(), "seconds": time.perf_counter() - t0}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, mode in zip(axes, ("fixed", "power")):
        rs = sorted((r for r in rows if r["k_mode"] == mode), key=lambda r: r["d"])
        ds = [r["d"] for r in rs]
        for key, label in (("tau_C1", "clean net breaks (C1)"), ("tau_lin", "linear breaks"),
                           ("tau_C3", "adv. net holds (C3)")):
            ax.plot(ds, [min(r[key], max(sc.radii)) for r in rs], "o-", label=label)
        ax.set(xscale="log", xlabel="d", ylabel="l2 radius", title=f"k {mode}" + ("" if mode == "fixed" else
                                                                                    f" (k = d^{sc.k_exponent})"))
        ax.legend(fontsize=8)
    _save(fig, out / "figures" / "window_vs_d.png")
    lines = ["# C6: the window of radii against d", "", claims_table(claims), "",
             "| d | k | clean acc | tau_C1 | tau_lin | tau_C3 | window | adv clean acc | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['k']:.3g} | {r['clean_acc']:.3f} | {r['tau_C1']:.3g} | {r['tau_lin']:.3g} | "
                     f"{r['tau_C3']:.3g} | {r['window']:.3g} | {r['adv_clean_acc']:.3f} | {r['seconds']:.0f} |")
    lines += ["", "![window against d](figures/window_vs_d.png)", ""]
    atomic_write_bytes(out / "scaling.md", "\n".join(lines).encode())
    atomic_write_json(out / "scaling.json", doc)
    return doc
