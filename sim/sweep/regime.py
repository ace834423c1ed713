"""The claims map of a sweep (issue 12's regime map): per cell, C1, C2, C3 and C4 judged as
`verify` judges them (thresholds from sim.claims), with the numbers behind each verdict and
the readable C4 measures, as a markdown table and a figure of heat maps.

Per cell (mean over seeds where a cell has several), at the training radius tau of each
threat model:
- C1: clean accuracy >= C1-clean and robust accuracy <= C1-robust;
- C2: the clean neurons' dense parts point along w* (C2-dense, as in verify);
- C3: robust accuracy >= C3-robust (attacked) and certified >= C3-certified, clean >= C3-clean,
  with the margin-1 class beside it (the points that break first);
- C4: purified share >= C4-purified and the init correlation <= C4-init; beside them the
  alignment drop (C2C4-align), the share of neurons that keep their principal atom, the split
  among those, and the clean top-atom share (dense- vs feature-dominated clean training);
- converged: the adversarial training reached its plateau (cap not hit).
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.claims import CLAIMS  # noqa: E402
from sim.train.adversarial import DIVERGED_CLEAN_ACC  # noqa: E402

from .analysis import Results, _short  # noqa: E402

def _mean(res: Results, g, model, metric, norm, tau=None):
    v = [r["value"] for r in res.get(g, model, metric, norm)
         if tau is None or (not math.isnan(r["tau"]) and abs(r["tau"] - tau) < 1e-12)]
    return float(np.mean(v)) if v else math.nan


def _varying_fields(res: Results) -> list[str]:
    """The config fields that vary between cells (not the seed; the dotted names)."""
    return [k for k in res._varying() if k != "run.data.seed" and not k.startswith("_")]


def claims_map(res: Results, norm: str) -> list[dict]:
    """One dict per group (cell up to the seed): its label, varying fields, the numbers and the verdicts."""
    out = []
    fields = _varying_fields(res)
    for g in res.groups:
        tau = res.train_tau(g, norm)

        def m(model, metric, nm=norm, t=None):
            return _mean(res, g, model, metric, nm, t)
        row = {"group": g, "label": res.label[g] or "", "seeds": len(res.seeds_of(g)), "tau": tau,
               "fields": {f.split(".")[-1]: res.config[g].get(f) for f in fields},
               "clean_acc": m("clean_net", "clean_acc", "", 0.0), "clean_robust": m("clean_net", "robust_acc", t=tau),
               "clean_dense_cos": m("clean_net", "dense_cos_mean", ""),
               "adv_clean_acc": m("adv_net", "clean_acc", t=0.0), "adv_robust": m("adv_net", "robust_acc", t=tau),
               "adv_robust_m1": m("adv_net", "robust_acc:m1", t=tau),
               "adv_certified": m("adv_net", "certified_acc", t=tau),
               "adv_dense_cos": m("adv_net", "dense_cos_mean"),
               "purified_share": m("adv_net", "purified_share"),
               "init_corr": max(m("adv_net", "init_corr_clean"), m("adv_net", "init_corr_adv")),
               "principal_kept_share": m("adv_net", "principal_kept_share"),
               "purified_share_kept": m("adv_net", "purified_share_kept"),
               "clean_top_atom_share": m("adv_net", "clean_top_atom_share_median"),
               "ideal_robust": m("ideal_net", "robust_acc", t=tau),
               "adv_steps": m("adv_net", "adv_steps")}
        row["diverged"] = res.adv_diverged(g, norm)  # a dead network in any seed (the cells' adv_diverged records)
        row["converged"] = bool(m("adv_net", "adv_converged") == 1.0 and not row["diverged"])
        row["align_ratio"] = abs(row["clean_dense_cos"]) / max(abs(row["adv_dense_cos"]), 1e-12)
        row["C1"] = bool(CLAIMS["C1-clean"].holds(row["clean_acc"]) and CLAIMS["C1-robust"].holds(row["clean_robust"]))
        row["C2"] = CLAIMS["C2-dense"].holds(row["clean_dense_cos"])
        row["C3"] = bool(CLAIMS["C3-robust"].holds(row["adv_robust"]) and CLAIMS["C3-clean"].holds(row["adv_clean_acc"])
                         and (math.isnan(row["adv_certified"]) or CLAIMS["C3-certified"].holds(row["adv_certified"])))
        row["C4"] = bool(CLAIMS["C4-purified"].holds(row["purified_share"]) and CLAIMS["C4-init"].holds(row["init_corr"]))
        row["align"] = bool(CLAIMS["C2C4-align"].holds(row["align_ratio"]))
        row["all"] = row["C1"] and row["C2"] and row["C3"] and row["C4"]
        out.append(row)
    return out


def _f(v, fmt=".3f"):
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return "-" if math.isnan(v) else format(v, fmt)
    return _short(v) if v is not None else "-"


COLUMNS = (("clean_acc", "clean net clean"), ("clean_robust", "clean net robust at tau"), ("C1", "C1"),
           ("clean_dense_cos", "clean dense cos w*"), ("C2", "C2"),
           ("adv_clean_acc", "adv. net clean"), ("adv_robust", "adv. net attacked"), ("adv_certified", "adv. net certified"),
           ("adv_robust_m1", "adv. attacked, margin 1"), ("C3", "C3"), ("ideal_robust", "ideal net"),
           ("purified_share", "purified share"), ("principal_kept_share", "principal atom kept"),
           ("purified_share_kept", "purified among kept"), ("clean_top_atom_share", "clean top-atom share"),
           ("init_corr", "init corr"), ("C4", "C4"), ("align_ratio", "align ratio"),
           ("adv_steps", "adv. steps"), ("diverged", "diverged"), ("converged", "converged"),
           ("all", "C1-C4 together"))


THRESHOLD_KEYS = ("C1-clean", "C1-robust", "C2-dense", "C3-robust", "C3-certified", "C3-clean", "C4-purified",
                  "C4-init", "C2C4-align")


def claims_map_markdown(res: Results, norm: str) -> str:
    rows = claims_map(res, norm)
    keys = list(rows[0]["fields"]) if rows else []
    head = ["series"] + keys + ["seeds"] + [t for _, t in COLUMNS]
    lines = [f"# {res.name}: C1-C4 per cell ({norm}, at the training radius; mean over seeds)", "",
             "Thresholds (sim.claims): " + "; ".join(f"{k} {CLAIMS[k].text}" for k in THRESHOLD_KEYS) + ". "
             "'diverged': adversarial training killed the network in a seed (held-out clean accuracy below "
             f"{DIVERGED_CLEAN_ACC} at the run's end); 'converged': its training reached its plateau and did not diverge.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        vals = [r["label"] or "-"] + [_f(r["fields"][k]) for k in keys] + [str(r["seeds"])]
        vals += [("**yes**" if r[c] else "no") if c == "diverged" else
                 _f(r[c], ".0f" if c == "adv_steps" else ".2f" if c == "align_ratio" else ".3f") for c, _ in COLUMNS]
        lines.append("| " + " | ".join(vals) + " |")
    n_all = sum(r["all"] for r in rows)
    lines += ["", f"{n_all} of {len(rows)} cells have C1, C2, C3 and C4 together.", ""]
    return "\n".join(lines)


HEAT = (("clean_robust", "C1: clean net robust at tau (<= 0.10)", "Blues_r"),
        ("adv_robust", "C3: adv. net attacked (>= 0.90)", "Reds"),
        ("adv_certified", "C3: adv. net certified (>= 0.80)", "Reds"),
        ("purified_share", "C4: purified share (>= 0.80)", "Greens"),
        ("principal_kept_share", "principal atom kept", "Greens"),
        ("clean_top_atom_share", "clean top-atom share", "Purples"))


def figure_claims_map(res: Results, norm: str):
    """Heat maps, one row per measure, one column per value of the second varying field
    (if any): rows of each map = series (labels), columns = the first varying numeric field;
    a cell's text is its value, bold-framed where C1-C4 hold together, 'x' where not converged."""
    rows = claims_map(res, norm)
    fields = [k.split(".")[-1] for k in _varying_fields(res)]
    numeric = [f for f in fields if all(isinstance(r["fields"].get(f), (int, float))
                                        and not isinstance(r["fields"].get(f), bool) for r in rows)]
    # fields fixed within each series (set by the label, e.g. k) are not axes; the one with the
    # most values is the x axis of the maps, the next one splits them into columns
    numeric = [f for f in numeric if any(len({r["fields"][f] for r in rows if r["label"] == lab}) > 1
                                         for lab in {r["label"] for r in rows})]
    numeric.sort(key=lambda f: -len({r["fields"][f] for r in rows}))
    xf = numeric[0] if numeric else None
    pf = numeric[1] if len(numeric) > 1 else None
    series = list(dict.fromkeys(r["label"] for r in rows))
    xs = sorted({r["fields"][xf] for r in rows}) if xf else [None]
    ps = sorted({r["fields"][pf] for r in rows}) if pf else [None]
    fig, axes = plt.subplots(len(HEAT), len(ps), figsize=(1.0 + 1.1 * len(xs) * len(ps) + 1.2 * len(ps),
                                                          1.0 + 0.42 * len(series) * len(HEAT) + 0.5 * len(HEAT)),
                             squeeze=False)
    for i, (key, title, cmap) in enumerate(HEAT):
        for j, pv in enumerate(ps):
            ax = axes[i][j]
            A = np.full((len(series), len(xs)), np.nan)
            for r in rows:
                if pf and r["fields"][pf] != pv:
                    continue
                a, b = series.index(r["label"]), xs.index(r["fields"][xf]) if xf else 0
                A[a, b] = r[key]
                ax.text(b, a, ("x " if not r["converged"] else "") + _f(r[key], ".2f"), ha="center", va="center",
                        fontsize=7, fontweight="bold" if r["all"] else "normal")
            ax.imshow(A, cmap=cmap, vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(xs)), [_short(x) for x in xs] if xf else [""], fontsize=7)
            ax.set_yticks(range(len(series)), series if j == 0 else [""] * len(series), fontsize=7)
            ax.set_title(title + (f", {pf} = {_short(pv)}" if pf else ""), fontsize=8)
            if i == len(HEAT) - 1 and xf:
                ax.set_xlabel(xf, fontsize=8)
    fig.suptitle(f"{res.name}: C1-C4 per cell ({norm}, at the training radius; bold: C1-C4 hold together; "
                 "x: adversarial training not converged)", fontsize=9)
    fig.tight_layout()
    return fig, sorted({r["group"] for r in rows})
