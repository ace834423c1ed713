"""The numbers, claims and figures of `python -m sim experiments strategies`
(sim.experiments.strategies runs the experiment; see its docstring for what is measured).

summarize reads C7 and C8's numbers from the experiment's document, claims judges them
against sim.claims (C7-robust, C7-steps, C8-spectrum, C8-rank: thresholds written once
there), write_figures draws robust accuracy against steps, gradient evaluations and
seconds, the update's spectrum, and robust accuracy against rank, each with a sidecar.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sim.claims import CLAIMS, judge


def reach(curve: list[dict], level: float, evals_per_step: int) -> dict:
    """The first checked step whose cheap robust accuracy is >= level: step, gradient
    evaluations and training seconds to it (None if never)."""
    for c in curve:
        if c["value"] >= level:
            return {"step": c["step"], "grad_evals": c["step"] * evals_per_step, "seconds": c["seconds"]}
    return {"step": None, "grad_evals": None, "seconds": None}


def summarize(doc: dict, cfg) -> dict:
    """The numbers C7 and C8 are read from."""
    pl = cfg.plateau()
    fgm = doc["strategies"]["fgm"]
    fgm_plateau = pl.plateau_value(fgm["curve"])
    level = cfg.reach_level * fgm_plateau
    rows = {}
    for s, r in doc["strategies"].items():
        rows[s] = {"steps": r["steps"], "converged": r["converged"], "grad_evals": r["grad_evals"],
                   "train_seconds": r["train_seconds"], "plateau_cheap": pl.plateau_value(r["curve"]),
                   "robust_acc": r["final"]["robust_acc"], "certified_acc": r["final"].get("certified_acc"),
                   "clean_acc": r["final"]["clean_acc"],
                   "reach": reach(r["curve"], level, r["grad_evals_per_step"]),
                   "energy_top": r["shape"]["energy_top"], "cos_top_right": r["shape"]["cos_top_right"],
                   "along_wstar_share": r["shape"]["along_wstar_share"],
                   "against_clean_share": r["shape"]["against_clean_share"]}
    clean_robust = doc["clean"]["final"]["robust_acc"]
    full_gain = fgm["final"]["robust_acc"] - clean_robust
    ranks, smallest = {}, {}
    for method, runs in doc["lowrank"].items():
        ranks[method] = {}
        for r, x in runs.items():
            gain = x["final"]["robust_acc"] - clean_robust
            ranks[method][r] = {
                "steps": x["steps"], "converged": x["converged"], "lr": x["lr"], "init": x.get("init"),
                "robust_acc": x["final"]["robust_acc"], "certified_acc": x["final"].get("certified_acc"),
                "clean_acc": x["final"]["clean_acc"], "gain": gain,
                "gain_share": gain / full_gain if full_gain > 0 else None, "frobenius": x["shape"]["frobenius"],
                "cos_top_right": x["shape"]["cos_top_right"], "along_wstar_share": x["shape"]["along_wstar_share"],
                "against_clean_share": x["shape"]["against_clean_share"]}
        smallest[method] = next((int(r) for r, x in sorted(ranks[method].items(), key=lambda kv: int(kv[0]))
                                 if x["gain_share"] is not None and x["gain_share"] >= cfg.gain_level), None)
    ctrl = doc.get("control_random")
    return {"fgm_plateau_cheap": fgm_plateau, "reach_level_cheap": level, "strategies": rows,
            "clean_robust_acc": clean_robust, "clean_certified_acc": doc["clean"]["final"].get("certified_acc"),
            "full_gain": full_gain, "ranks": ranks, "smallest_rank_reaching": smallest,
            "control": None if ctrl is None else {
                "steps": ctrl["steps"], "robust_acc": ctrl["final"]["robust_acc"],
                "certified_acc": ctrl["final"].get("certified_acc"), "energy_top": ctrl["shape"]["energy_top"],
                "cos_top_right": ctrl["shape"]["cos_top_right"],
                "along_wstar_share": ctrl["shape"]["along_wstar_share"],
                "against_clean_share": ctrl["shape"]["against_clean_share"]}}


def claims(summary: dict, cfg) -> list[dict]:
    """C7 and C8 as claim dicts (thresholds: sim.claims.CLAIMS)."""
    out = []
    tag = f"{cfg.norm} tau={cfg.tau:g}"
    rows = summary["strategies"]
    attack = f"best of PGD-{cfg.pgd_steps}x{cfg.pgd_restarts}, FGM, dense, random"
    for s, r in rows.items():
        if s == "fgm":
            continue
        cert = r["certified_acc"]
        out.append(judge("C7-robust", f"-{s}", f"{s}-trained network: robust accuracy at {tag} ({attack}); certified "
                         f"{'n/a' if cert is None else f'{cert:.3f}'}; "
                         f"{'converged' if r['converged'] else 'NOT converged'}"
                         f" after {r['steps']} steps", r["robust_acc"]))
    single = rows.get("fgm_rs")
    for s, r in rows.items():
        if not s.startswith("pgd") or single is None:
            continue
        a, b = r["reach"], single["reach"]
        ratio = None if a["step"] is None or b["step"] is None else a["step"] / max(b["step"], 1)
        holds = a["step"] is not None and (b["step"] is None or a["step"] < b["step"])
        ev = None if ratio is None else a["grad_evals"] / max(b["grad_evals"], 1)
        out.append(judge(
            "C7-steps", f"-{s}", f"training steps of {s} / steps of fgm_rs to reach {cfg.reach_level:g} x the FGM "
            f"plateau of the cheap robust accuracy ({summary['reach_level_cheap']:.3f}): {a['step']} vs {b['step']} "
            "steps; "
            f"gradient evaluations {a['grad_evals']} vs {b['grad_evals']} (ratio "
            f"{'n/a' if ev is None else f'{ev:.2f}'}), seconds "
            f"{_f(a['seconds'])} vs {_f(b['seconds'])}", ratio, holds=holds))
    ctrl = summary["control"]
    fgm_e = rows["fgm"]["energy_top"][str(cfg.c8_energy_k)] if str(cfg.c8_energy_k) in rows["fgm"]["energy_top"] \
        else None
    if fgm_e is not None:
        ctrl_e = None if ctrl is None else ctrl["energy_top"][str(cfg.c8_energy_k)]
        out.append(judge(
            "C8-spectrum", "", f"share of the FGM update's energy (|W_adv - W_clean|_F^2) in its top {cfg.c8_energy_k} "
            f"directions; random-noise control {'n/a' if ctrl_e is None else f'{ctrl_e:.3f}'}; |cos| of the top "
            f"direction with M w*: {rows['fgm']['cos_top_right']:.3f}", fgm_e,
            holds=CLAIMS["C8-spectrum"].holds(fgm_e) and (ctrl_e is None or fgm_e > ctrl_e)))
    names = {"scaled": "ScaledGD", "gd": "plain GD"}
    for method, ranks in summary["ranks"].items():
        if not ranks:
            continue
        sm = summary["smallest_rank_reaching"][method]
        shares = ", ".join(f"r={r}: {_f(x['gain_share'])}{'' if x['converged'] else ' (cap)'}" for r, x in
                           sorted(ranks.items(), key=lambda kv: int(kv[0])))
        out.append(judge(
            "C8-rank", "" if method == "scaled" else f"-{method}",
            f"smallest rank r of W_clean + U V^T (FGM training, {names[method]} on the factors) whose robust-accuracy "
            f"gain reaches {cfg.gain_level:g} x the full update's ({summary['full_gain']:.3f}); gain shares {shares}",
            sm, holds=sm is not None and CLAIMS["C8-rank"].holds(sm)))
    return [c.to_dict() for c in out]


def _f(v, fmt=".3g"):
    return "n/a" if v is None else format(v, fmt)


def write_figures(doc: dict, out: Path, command: str | None = None) -> list[Path]:
    """The three figures (PNG, SVG, JSON sidecar naming the command and commit) in out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.common.figures import save_figure, sidecar

    out = Path(out)
    cfg = doc["config"]
    base = sidecar(command, config=cfg, claims=doc["claims"])

    def save(fig, stem, data):
        return save_figure(fig, out / stem, formats=("png", "svg"), sidecar={**base, "data": data})

    written = []
    tag = f"d={cfg['run']['data']['d']}, {cfg['norm']} tau={cfg['tau']:g}"
    # robust accuracy against steps, gradient evaluations, seconds
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (s, r) in enumerate(doc["strategies"].items()):
        col = f"C{i}"
        steps = np.array([c["step"] for c in r["curve"]])
        val = [c["value"] for c in r["curve"]]
        xs = (steps, steps * r["grad_evals_per_step"], [c["seconds"] for c in r["curve"]])
        for ax, x in zip(axes, xs):
            ax.plot(x, val, "-", color=col, lw=1.3,
                    label=f"{s} ({'converged' if r['converged'] else 'cap'} at {r['steps']})")
        f = r["final"]
        lo = f.get("certified_acc", f["robust_acc"])
        axes[0].errorbar([r["steps"]], [(lo + f["robust_acc"]) / 2], yerr=[[(f["robust_acc"] - lo) / 2]] * 2,
                         fmt="o", color=col, ms=4, capsize=3)
    lvl = doc["summary"]["reach_level_cheap"]
    for ax, xl in zip(axes, ("training step", "gradient evaluations (batch passes)", "training seconds")):
        ax.axhline(lvl, color="grey", ls=":", lw=1)
        ax.set(xlabel=xl, ylabel="robust accuracy (cheap, held-out)", ylim=(-0.02, 1.02))
    axes[0].set_title(f"strategies, {tag}\n(bars at the end: [certified, attacked], strong evaluation)", fontsize=9)
    axes[0].legend(fontsize=8)
    written += save(fig, "strategies_robust_vs_compute", doc["summary"]["strategies"])
    # spectrum of the update
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    shapes = {s: r["shape"] for s, r in doc["strategies"].items()}
    if doc.get("control_random"):
        shapes["random control"] = doc["control_random"]["shape"]
    for i, (s, sh) in enumerate(shapes.items()):
        sv = np.array(sh["singular_values"])
        k = np.arange(1, len(sv) + 1)
        axes[0].semilogy(k, sv / sv[0], "o-", ms=3, color=f"C{i}",
                         label=f"{s} (|cos v1, Mw*| {sh['cos_top_right']:.2f}; against clean "
                               f"{sh['against_clean_share']:.2f})")
        axes[1].plot(k, sh["energy_cumulative"], "o-", ms=3, color=f"C{i}", label=s)
    axes[0].set(xlabel="index i", ylabel="s_i / s_1", title=f"singular values of W_adv - W_clean ({tag})")
    axes[1].set(xlabel="k", ylabel="energy share of the top k directions", ylim=(0, 1.02),
                title="cumulative energy of the update")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    written += save(fig, "strategies_update_spectrum", {
        s: {k: sh[k] for k in ("singular_values", "energy_top", "energy_top_dict", "cos_top_right",
                               "cos_top_right_dict", "along_wstar_share", "against_clean_share")}
        for s, sh in shapes.items()})
    # robust accuracy against rank
    if any(doc["lowrank"].values()):
        d = cfg["run"]["data"]["d"]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        full = doc["strategies"]["fgm"]["final"]
        names = {"scaled": "ScaledGD", "gd": "plain GD"}
        for i, (method, runs) in enumerate(doc["lowrank"].items()):
            ranks = sorted(runs, key=int)
            xs = [int(r) for r in ranks] + [d]
            att = [runs[r]["final"]["robust_acc"] for r in ranks] + [full["robust_acc"]]
            cer = [runs[r]["final"].get("certified_acc", np.nan) for r in ranks] + [full.get("certified_acc", np.nan)]
            ax.semilogx(xs, att, "o-", base=2, color=f"C{i}", label=f"{names[method]}: attacked (strong)")
            ax.semilogx(xs, cer, "x--", base=2, color=f"C{i}", label=f"{names[method]}: certified")
        cr = doc["summary"]["clean_robust_acc"]
        ax.axhline(cr, color="grey", ls=":", lw=1, label="clean network")
        ax.axhline(cr + doc["config"]["gain_level"] * doc["summary"]["full_gain"], color="C3", ls=":", lw=1,
                   label=f"{doc['config']['gain_level']:g} of the full gain")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs[:-1]] + [f"full ({d})"])
        ax.set(xlabel="rank r of the update U V^T", ylabel="robust accuracy", ylim=(-0.02, 1.02),
               title=f"low-rank FGM training, {tag}\n(full = FGM training of W itself)")
        ax.legend(fontsize=8)
        written += save(fig, "strategies_robust_vs_rank", doc["summary"]["ranks"])
    return written
