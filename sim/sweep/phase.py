"""The C6 phase diagram of a sweep over d (issue 13): where each model breaks, and the window.

Per cell (one d, one k series, one seed), from the robust-accuracy curves {radius: accuracy}:
- the radii where each model's robust accuracy first falls below 90 %, 50 % and 10 %
  (analysis.radius_at: interpolated in log radius; inf if it never falls within the grid,
  the smallest radius if it starts below): the clean network, the adversarially trained one
  (attacked, and certified), the ideal purified network, the best linear model at each radius
  (the maximum over the linear rows: exact), and each hand-built per-atom polynomial
  ('atom_poly{P}', attacked);
- the C6 window of sim.claims.c6_window, (max(tau_C1, tau_lin), tau_C3], where C5 is its linear
  part (SPEC C6: linear models break near margin / sqrt(d)), with whether the cell's adversarial
  training converged and whether tau_C3 is the largest radius swept (censored); the width of
  (tau_lin, tau_C3] alone (C3 and C5-linear, whatever the clean network does); and the window when C5 also asks every per-atom polynomial to be below
  the C5 threshold of the other classes (tau_poly: the first radius where all are): empty
  whenever a polynomial holds as long as the network;
- the same window on the points of each margin class |<w*, z>| alone (margin_windows): the
  theory's scaling is per margin, and a cell's edges come from different classes.

figure_phase draws the crossings against d (one panel per k series; markers per seed, open
when that seed's adversarial training hit its cap), the windows' widths, and the margin
windows' widths; phase_sidecar is the JSON beside it ({"windows": [...], "margin_windows":
[...], "crossings": [...]}).
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.claims import CLAIMS, c6_window  # noqa: E402
from sim.model.data import MARGIN_CLASSES, MARGIN_TAGS  # noqa: E402

from .analysis import LINEAR, Results, _short, radius_at, windows  # noqa: E402

LEVELS = (0.9, 0.5, 0.1)
C5_OTHER = CLAIMS["C5-poly-deg3"].threshold  # per-atom polynomials are judged as the other C5 classes


def _atom_models(res: Results) -> list[str]:
    names = {r["model"] for r in res.rows if r["model"].startswith("atom_poly")}
    return sorted(names, key=lambda n: int(n[len("atom_poly"):]))


def _curve(res, g, cell, model, norm, metric="robust_acc"):
    return {r["tau"]: r["value"] for r in res.get(g, model, metric, norm) if r["cell"] == cell}


def crossings(res: Results, norm: str) -> list[dict]:
    """Per cell: d, k, seed, series, whether adversarial training converged (and its steps), and
    for each model {"r90", "r50", "r10"} (radii, see the module docstring)."""
    out = []
    atoms = _atom_models(res)
    for g, cell, seed in dict.fromkeys((r["_g"], r["cell"], r["seed"]) for r in res.rows):
        curves = {"clean_net": _curve(res, g, cell, "clean_net", norm),
                  "adv_net": _curve(res, g, cell, "adv_net", norm),
                  "adv_net_certified": _curve(res, g, cell, "adv_net", norm, "certified_acc"),
                  "ideal_net": _curve(res, g, cell, "ideal_net", norm)}
        lin = [c for c in (_curve(res, g, cell, m, norm) for m in LINEAR) if c]
        if lin:
            curves["best_linear"] = {t: max(c.get(t, 0.0) for c in lin) for t in lin[0]}
        for a in atoms:
            curves[a] = _curve(res, g, cell, a, norm)
        if not curves["clean_net"]:
            continue
        conv = res.cell_value(g, cell, "adv_net", "adv_converged", norm)
        diverged = res.adv_diverged(g, norm, cell)  # a dead network (the cell's adv_diverged record)
        out.append({"cell": cell, "group": g, "seed": seed, "series": res.series[g], "d": res.config[g].get("run.data.d"),
                    "k": res.config[g].get("run.data.k"), "converged": bool(conv == 1.0) and not diverged,
                    "diverged": diverged,
                    # retried: a first run diverged and this one ran with the radius ramp (adv_retry_tau_ramp)
                    "retried": res.cell_value(g, cell, "adv_net", "adv_retried", norm) == 1.0,
                    "adv_steps": res.cell_value(g, cell, "adv_net", "adv_steps", norm),
                    "radii": {name: {f"r{round(100 * lv)}": radius_at(c, lv) for lv in LEVELS}
                              for name, c in curves.items() if c}})
    return out


def phase_windows(res: Results, norm: str, cs: list[dict] | None = None) -> list[dict]:
    """Per cell: the C6 window with C5 = linear models (tau_low, tau_high, width) and with C5 =
    linear models and the per-atom polynomials (tau_poly, width_with_poly), and converged.
    cs: crossings(res, norm) if the caller has them."""
    cs = crossings(res, norm) if cs is None else cs
    cross = {(c["group"], c["cell"]): c for c in cs}  # a cell may be in two series
    atoms = _atom_models(res)
    out = []
    for w in windows(res, norm):
        c = cross.get((w["group"], w["cell"]))
        if c is None:
            continue
        taus = sorted(_curve(res, w["group"], w["cell"], "clean_net", norm))
        polys = [_curve(res, w["group"], w["cell"], a, norm) for a in atoms]
        tau_poly = (next((t for t in taus if all(p.get(t, 1.0) <= C5_OTHER for p in polys)), math.inf)
                    if polys else math.nan)
        lo_all = max(w["lo"], tau_poly) if polys else w["lo"]
        lin_ok = math.isfinite(w["tau_lin"])
        out.append({"d": c["d"], "k": c["k"], "seed": c["seed"], "series": c["series"], "cell": c["cell"],
                    "tau_low": w["lo"], "tau_high": w["tau_C3"], "width": w["width"], "converged": c["converged"],
                    # the adversarially trained net holds at the largest radius swept: the window may go on
                    "tau_high_censored": bool(w["tau_C3"] > 0 and w["tau_C3"] >= w["max_radius"]),
                    # C3 and C5-linear alone: SPEC C6's reading (linear models break near margin / sqrt(d),
                    # a purified network holds up to margin / sqrt(k)), without the clean network's edge
                    "width_without_C1": max(0.0, w["tau_C3"] - w["tau_lin"]) if lin_ok else 0.0,
                    "diverged": c["diverged"], "retried": c["retried"],
                    "adv_steps": c["adv_steps"], "tau_C1": w["tau_C1"], "tau_lin": w["tau_lin"],
                    "tau_poly": tau_poly,
                    "width_with_poly": max(0.0, w["tau_C3"] - lo_all) if math.isfinite(lo_all) else 0.0})
    return out


MARGIN_NAMES = dict(zip(MARGIN_TAGS, MARGIN_CLASSES))


def margin_windows(res: Results, norm: str, cs: list[dict] | None = None) -> list[dict]:
    """Per cell and margin class |<w*, z>| (1, 2, >=3): the C6 window of sim.claims.c6_window
    on that class's points alone: the clean net <= 0.10 robust on them (C1), every linear model
    <= 0.10 on them (C5-linear, exact, the whole test set's points of that class), the
    adversarially trained net >= 0.90 on them (C3); the clean-accuracy gates are the whole
    cell's. SPEC C6's scaling is per margin g (linear models break near g / sqrt(d), a purified
    network holds up to about (1 - beta) g / sqrt(a)), so within a class the theory predicts a
    window that widens with d at fixed a; the cell's window mixes the classes (its lower edge
    is set by the largest margin, its upper by the smallest). Cells without the linear models'
    margin rows (written before they existed: scripts/linear_by_margin.py adds them) are left out."""
    cs = crossings(res, norm) if cs is None else cs
    out = []
    for c in cs:
        g, cell = c["group"], c["cell"]
        clean_acc = (res.cell_value(g, cell, "clean_net", "clean_acc", ""),  # one row each, at radius 0
                     res.cell_value(g, cell, "adv_net", "clean_acc", norm))
        for tag in MARGIN_TAGS:
            metric = f"robust_acc:{tag}"
            cn, an = _curve(res, g, cell, "clean_net", norm, metric), _curve(res, g, cell, "adv_net", norm, metric)
            lin = [x for x in (_curve(res, g, cell, m, norm, metric) for m in LINEAR) if x]
            if not cn or not an or len(lin) < len(LINEAR):
                continue
            taus = sorted(cn)
            w = c6_window(taus, cn, lin, an, *clean_acc)
            out.append({"d": c["d"], "k": c["k"], "seed": c["seed"], "series": c["series"], "cell": cell,
                        "margin": MARGIN_NAMES[tag], "converged": c["converged"],
                        "n_eval": res.cell_value(g, cell, "eval_set", f"n_eval:{tag}", ""),
                        "tau_C1": w["tau_C1"], "tau_lin": w["tau_lin"], "tau_C3": w["tau_C3"],
                        "tau_low": w["lo"], "tau_high": w["tau_C3"], "width": w["width"],
                        "tau_high_censored": bool(w["tau_C3"] > 0 and w["tau_C3"] >= max(taus)),
                        "width_without_C1": max(0.0, w["tau_C3"] - w["tau_lin"]) if math.isfinite(w["tau_lin"])
                        else 0.0})
    return out


def _json_num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def phase_sidecar(res: Results, norm: str) -> dict:
    """The sidecar's content: windows and crossings (inf written as "inf", nan as null)."""
    cs = crossings(res, norm)
    ws = [{k: _json_num(v) for k, v in w.items()} for w in phase_windows(res, norm, cs)]
    mws = [{k: _json_num(v) for k, v in w.items()} for w in margin_windows(res, norm, cs)]
    cj = [{**{k: _json_num(v) for k, v in c.items() if k not in ("radii", "group")},
           "radii": {m: {lv: _json_num(x) for lv, x in r.items()} for m, r in c["radii"].items()}} for c in cs]
    return {"norm": norm, "windows": ws, "margin_windows": mws, "crossings": cj,
            "definitions": {"window": "radii where C1 (clean net <= 0.10 robust, clean acc >= 0.99), C3 (adversarially "
                            "trained net >= 0.90 attacked from the smallest radius on, clean acc >= 0.97) and C5-linear "
                            "(every linear model <= 0.10, exact) hold together: (tau_low, tau_high]",
                            "width_with_poly": "the same window when C5 also asks every hand-built per-atom "
                            f"polynomial to be <= {C5_OTHER} (attacked)",
                            "width_without_C1": "tau_high - tau_lin: where C3 and C5-linear hold together, whatever "
                            "the clean network does",
                            "margin_windows": "the window on the points of one margin class |<w*, z>| (1, 2, "
                            ">=3) alone: every model's robust accuracy on that class (margin_windows in "
                            "sim.sweep.phase)",
                            "tau_high_censored": "the adversarially trained net is >= 0.90 at the largest radius "
                            "swept: tau_high and the widths are lower bounds",
                            "r90/r50/r10": "radius where robust accuracy first falls below 90/50/10 % (log-"
                            "interpolated; 'inf': not within the radii swept)"}}


STYLE = {"clean_net": ("network, clean training", "C0", "o"), "adv_net": ("network, adversarial training", "C3", "o"),
         "adv_net_certified": ("adv. network, certified", "C3", "x"),
         "ideal_net": ("ideal purified network (from M, w*)", "C5", "s"),
         "best_linear": ("best linear model (exact)", "C1", "D")}


def figure_phase(res: Results, norm: str):
    """Top row: the radius of 50 % robust accuracy against d per model (band: 90 % to 10 %),
    one panel per k series, the window shaded; bottom row: the window widths."""
    cs = crossings(res, norm)
    ws = phase_windows(res, norm, cs)
    mws = margin_windows(res, norm, cs)
    series = [s for s in res.ordered_series() if any(c["series"] == s for c in cs)]
    atoms = _atom_models(res)
    style = dict(STYLE)
    for i, a in enumerate(atoms):
        style[a] = (f"per-atom polynomial, degree {a[len('atom_poly'):]}", f"C{(i + 6) % 10}", "^v<>"[i % 4])
    radii = [t for c in cs for r in c["radii"].values() for t in r.values() if 0 < t < math.inf]
    top, bottom = max(radii) * 1.3, min(radii) / 1.3
    nrow = 3 if mws else 2
    fig, axes = plt.subplots(nrow, len(series), figsize=(5.2 * len(series), 8.0 + 2.6 * (nrow - 2)), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.3, 1.3][:nrow]})
    for j, s in enumerate(series):
        ax, axw = axes[0][j], axes[1][j]
        allmine = [c for c in cs if c["series"] == s]
        xs = sorted({c["d"] for c in allmine})
        # the lines and the window are means over the converged seeds of each d (all seeds where none converged)
        mine = [c for c in allmine if c["converged"] or not any(o["converged"] for o in allmine if o["d"] == c["d"])]
        for name, (label, color, marker) in style.items():
            pts = [[c["radii"][name] for c in mine if c["d"] == x and name in c["radii"]] for x in xs]
            if not any(pts):
                continue

            def clip(v):
                return min(max(v, bottom), top)
            r50 = [np.mean([clip(p["r50"]) for p in pp]) if pp else np.nan for pp in pts]
            ax.plot(xs, r50, color=color, marker=marker, ms=5, lw=1.3, label=label,
                    ls="--" if name == "adv_net_certified" else "-")
            lo = [np.mean([clip(p["r90"]) for p in pp]) if pp else np.nan for pp in pts]
            hi = [np.mean([clip(p["r10"]) for p in pp]) if pp else np.nan for pp in pts]
            if name in ("clean_net", "adv_net", "best_linear"):
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12, lw=0)
            if name == "adv_net":  # open markers: seeds whose adversarial training hit its cap or diverged
                for c in allmine:
                    if not c["converged"]:
                        ax.plot([c["d"]], [clip(c["radii"][name]["r50"])], "o", mfc="white", mec="k", ms=8)
        keep = {(c["d"], c["seed"]) for c in mine}
        mw = [w for w in ws if w["series"] == s and (w["d"], w["seed"]) in keep]
        lo_w = [np.mean([min(w["tau_low"], top) for w in mw if w["d"] == x]) for x in xs]
        hi_w = [np.mean([w["tau_high"] for w in mw if w["d"] == x]) for x in xs]
        ax.fill_between(xs, lo_w, hi_w, where=np.array(hi_w) > np.array(lo_w), color="C2", alpha=0.22,
                        label="window: C1, C3, C5-linear hold (mean)")
        if norm == "l2":
            xx = np.array(xs, float)
            ax.plot(xx, 1 / np.sqrt(xx), ":", color="grey", lw=1, label="1 / sqrt(d)")
        ax.set(xscale="log", yscale="log", ylim=(bottom, top), title=s, ylabel=f"radius ({norm})")
        ax.set_xticks(xs, [_short(x) for x in xs])
        ax.minorticks_off()
        for key, color, lab in (("width_without_C1", "C1", "C3 and C5-linear only (no C1)"),
                                ("width", "C2", "window, C5 = linear"),
                                ("width_with_poly", "C9", "window, C5 = linear + per-atom polynomials")):
            for x in xs:
                v = [w[key] for w in mw if w["d"] == x]
                axw.plot([x] * len(v), v, "o", color=color, alpha=0.5, ms=4)
            axw.plot(xs, [np.mean([w[key] for w in mw if w["d"] == x]) for x in xs], "-", color=color, label=lab)
        axw.set(xscale="log", xlabel="d", ylabel="window width")
        axw.set_xticks(xs, [_short(x) for x in xs])
        axw.minorticks_off()
        if nrow == 3:
            _margin_panel(axes[2][j], [w for w in mws if w["series"] == s and (w["d"], w["seed"]) in keep], xs)
    axes[0][0].legend(fontsize=7, loc="lower left")
    axes[1][0].legend(fontsize=7, loc="best")
    for ax in (axes[2] if nrow == 3 else ()):  # each panel its own classes (5 and 7 atoms: margin 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{res.name}: where each model breaks ({norm}): line = radius of 50 % robust accuracy (mean over "
                 "seeds),\nband = 90 % to 10 %; open circles: a seed whose adversarial training hit its cap or diverged "
                 "\n(not converged: left out of the means); values off the radii swept drawn at the edge", fontsize=10)
    fig.tight_layout()
    return fig, sorted({c["group"] for c in cs})


def _margin_panel(ax, mws: list[dict], xs: list) -> None:
    """The window on each margin class's points against d (mean over the seeds drawn above;
    a triangle: the adversarially trained net held at the largest radius swept, a lower bound)."""
    for i, name in enumerate(MARGIN_CLASSES):
        mine = [w for w in mws if w["margin"] == name]
        if not mine:
            continue
        xm = [x for x in xs if any(w["d"] == x for w in mine)]
        mean = [np.mean([w["width"] for w in mine if w["d"] == x]) for x in xm]
        ax.plot(xm, mean, "-s", ms=3, color=f"C{i + 4}", label=f"window on margin-{name} points (mean)")
        for x in xm:
            v = [w for w in mine if w["d"] == x]
            ax.plot([x] * len(v), [w["width"] for w in v], "^" if any(w["tau_high_censored"] for w in v) else "o",
                    color=f"C{i + 4}", alpha=0.5, ms=5)
    ax.set(xscale="log", xlabel="d", ylabel="window width, by margin")
    ax.set_xticks(xs, [_short(x) for x in xs])
    ax.minorticks_off()
