"""`python -m sim plot RESULTS`: the standard figures of a sweep (matplotlib, Agg).

Each figure is written to the output folder (default `figures/`) as PNG and SVG, with a
sidecar PREFIX_NAME.json naming the command, the config hashes of the cells drawn, the
commit of the plotting code and the sweep's own commands and commits:

- robust_vs_radius_NORM: robust accuracy against the radius, one panel per cell (mean over
  seeds, band min-max): the clean and the adversarially trained network (attacked; dashed:
  certified lower bound where the sweep computed one), the linear models (exact: logistic
  regression, the best robust linear classifier at each radius, M w*), and the C5 models
  (polynomials, NTK; markers at the radii of the lower-bound table).
- c6_window_NORM: against d, the radius tau_C1 where the clean network breaks (C1: clean
  accuracy >= 0.99 and robust <= 0.10), tau_lin where the best linear model breaks (C5,
  robust <= 0.10), tau_C3 up to which the adversarially trained network holds (C3: clean
  accuracy >= 0.97 and robust >= 0.90 at every radius up to it); the window where all
  three hold is (max(tau_C1, tau_lin), tau_C3] (C6); its width in the second row.
- NORM (sweeps over d): the C6 phase diagram (sim.sweep.phase): each model's radius of 50 %
  robust accuracy against d, the window, and its sidecar with the windows and crossings.
- claims_map_NORM (.png and .md): C1-C4 per cell as verify judges them (sim.sweep.regime).
- purification_vs_d: the C2 / C4 measures of the clean and adversarially trained weights.
- weights_dictionary_basis: |M^T w_i| of the largest neurons, clean and adversarially
  trained (needs the sweep directory: the pictures are kept in each cell).

Plus PREFIX_summary.md (the windows, the radii of 50 % robust accuracy and the main numbers
at the training radius) and, from a sweep directory, PREFIX_results.csv.gz (the table)
and PREFIX_sweep.json (the spec, its cells, the commands and commits that ran it, and
the last run's summary), so that the figures folder holds what they were drawn from.
Radii at which a quantity is not reached within the sweep's grid are drawn at the edge
with an open marker (tau_C1 = inf: the clean network never broke; tau_C3 = 0: the
adversarially trained network held at no radius).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.common.figures import save_figure, sidecar  # noqa: E402
from sim.common.files import atomic_write_bytes, atomic_write_json  # noqa: E402

from . import store  # noqa: E402
from .analysis import LINEAR, NETS, Results, _agg, _gname, _short, load, summary_markdown, windows  # noqa: E402

NAMES = {"clean_net": "network, clean training", "adv_net": "network, adversarial training",
         "control_net": "network, random-noise training", "linear_clean": "linear, logistic regression",
         "linear_best_robust": "linear, best robust (exact)", "linear_bayes": "linear, M w*"}
COLORS = {"clean_net": "C0", "adv_net": "C3", "control_net": "C7", "linear_clean": "C2",
          "linear_best_robust": "C1", "linear_bayes": "C8"}




# --------------------------------------------------------------------------------------------
# Figures


def _save(fig, out: Path, stem: str, sidecar: dict) -> list[Path]:
    return save_figure(fig, out / stem, formats=("png", "svg"), sidecar=sidecar)


def _panels(res: Results):
    """(rows of groups by series, columns by x) and the subplot grid."""
    series = res.ordered_series()
    xs = sorted({res.xval(g) for g in res.groups}, key=lambda v: (v is None, v)) if res.x else [None]
    grid = [[next((g for g in res.groups if res.series[g] == s and res.xval(g) == x), None) for x in xs]
            for s in series]
    if not res.x and len(res.groups) > 1:  # no x: wrap the groups in rows of 4
        flat = list(res.groups)
        grid = [flat[i:i + 4] for i in range(0, len(flat), 4)]
    return grid[:6], xs


def figure_robust_vs_radius(res: Results, norm: str):
    grid, _ = _panels(res)
    nr, nc = len(grid), max(len(r) for r in grid)
    fig, axes = plt.subplots(nr, nc, figsize=(3.4 * nc, 2.9 * nr), squeeze=False, sharey=True)
    used, handles = [], {}
    for i, row in enumerate(grid):
        for j in range(nc):
            ax = axes[i][j]
            g = row[j] if j < len(row) else None
            if g is None:
                ax.axis("off")
                continue
            used.append(g)
            for model in NETS + LINEAR:
                for metric, ls in (("robust_acc", "-"), ("certified_acc", "--")):
                    bt = res.by_tau(g, model, metric, norm)
                    if not bt:
                        continue
                    t = np.array(list(bt))
                    vals = list(bt.values())
                    mean = np.array([np.mean(v) for v in vals])
                    lo = np.array([np.min(v) for v in vals])
                    hi = np.array([np.max(v) for v in vals])
                    lab = NAMES[model] + (", certified" if metric == "certified_acc" else "")
                    (h,) = ax.plot(t, mean, ls, color=COLORS[model], marker="o" if model in NETS else None, ms=3,
                                   lw=1.4 if model in NETS else 1.0, label=lab)
                    handles.setdefault(lab, h)
                    if len(vals[0]) > 1:
                        ax.fill_between(t, lo, hi, color=COLORS[model], alpha=0.12, lw=0)
            c5 = sorted({r["model"] for r in res.rows if r["_g"] == g and r["model"].startswith("c5:")})
            for k, model in enumerate(c5):
                bt = res.by_tau(g, model, "robust_acc", norm)
                if bt:
                    lab = model[3:].replace("_", " ")
                    h = ax.scatter(list(bt), [np.mean(v) for v in bt.values()], marker="^s*vDP<>"[k % 8], s=22,
                                   color=f"C{(k + 4) % 10}", zorder=3, label=f"C5: {lab}")
                    handles.setdefault(f"C5: {lab}", h)
            ax.axvline(res.train_tau(g, norm), color="grey", ls=":", lw=1)
            ax.set_ylim(-0.03, 1.03)
            title = res.series[g] if res.series[g] != "all" else ""
            if res.x:
                title = (title + ", " if title else "") + f"{res.x.split('.')[-1]}={_short(res.xval(g))}"
            ax.set_title(title, fontsize=9)
            if i == nr - 1:
                ax.set_xlabel(f"radius ({norm})")
            if j == 0:
                ax.set_ylabel("robust accuracy")
    fig.suptitle(f"{res.name}: robust accuracy against radius ({norm}; mean over seeds, band min-max; "
                 "dotted: training radius)", fontsize=10)
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(4, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))  # below the panels (the saved figure is cut to fit it)
    return fig, used


def figure_c6(res: Results, norm: str):
    ws = windows(res, norm)
    series = [s for s in res.ordered_series() if any(w["series"] == s for w in ws)]
    fig, axes = plt.subplots(3, len(series), figsize=(4.2 * len(series), 9.0), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 2, 1]})
    top = max(w["max_radius"] for w in ws) * 1.15  # 'never broke within the grid' is drawn here
    bottom = min(w["min_radius"] for w in ws) / 1.15  # 'held at no radius' is drawn here
    for j, s in enumerate(series):
        ax, axr, axw = axes[0][j], axes[1][j], axes[2][j]
        xs = sorted({w["x"] for w in ws if w["series"] == s})
        stats = {}
        for key, label, color in (("tau_C1", "clean net breaks (C1)", "C0"),
                                  ("tau_lin", "best linear breaks (C5)", "C1"),
                                  ("tau_C3", "adv. trained net holds up to (C3)", "C3")):
            m, sd, off = [], [], []
            for x in xs:
                mu, s_ = _agg([w for w in ws if w["series"] == s and w["x"] == x], key)
                off.append(not math.isfinite(mu) or mu <= 0.0)
                m.append(min(max(mu, bottom), top) if math.isfinite(mu) else top)
                sd.append(s_ if 0.0 < mu < math.inf else 0.0)
            stats[key] = np.array(m)
            ax.errorbar(xs, m, yerr=sd, fmt="-", color=color, capsize=2, lw=1.3, label=label)
            for x, v, o in zip(xs, m, off):
                ax.plot([x], [v], "o", color=color, mfc="white" if o else color, ms=5)
        lo = np.maximum(stats["tau_C1"], stats["tau_lin"])
        ax.fill_between(xs, lo, stats["tau_C3"], where=stats["tau_C3"] > lo, color="C2", alpha=0.25,
                        label="window where C1, C3, C5 hold")
        if res.x == "run.data.d" and norm == "l2":
            xx = np.array(xs, float)
            ax.plot(xx, 1 / np.sqrt(xx), ":", color="grey", lw=1, label="margin / sqrt(d)")
        ax.axhline(top, color="grey", lw=0.5)
        ax.axhline(bottom, color="grey", lw=0.5)
        ax.set(xscale="log", yscale="log", title=s, ylabel=f"radius ({norm})", ylim=(bottom / 1.1, top * 1.1))
        if res.x:
            ax.set_xticks(xs, [_short(x) for x in xs])
            ax.minorticks_off()
        for key, label, color in (("r50_clean_net", "network, clean training", "C0"),
                                  ("r50_adv_net", "network, adversarial training", "C3"),
                                  ("r50_linear", "best linear model", "C1")):
            pts = [[w[key] for w in ws if w["series"] == s and w["x"] == x] for x in xs]
            axr.errorbar(xs, [np.mean(v) for v in pts], yerr=[np.std(v) for v in pts], fmt="o-", color=color, ms=4,
                         capsize=2, label=label)
        if res.x == "run.data.d" and norm == "l2":
            axr.plot(xx, 1 / np.sqrt(xx), ":", color="grey", lw=1, label="margin / sqrt(d)")
        axr.set(xscale="log", yscale="log", ylabel="radius where robust acc. < 50 %")
        if res.x:
            axr.set_xticks(xs, [_short(x) for x in xs])
            axr.minorticks_off()
        for x in xs:
            ww = [w["width"] for w in ws if w["series"] == s and w["x"] == x]
            axw.plot([x] * len(ww), ww, "o", color="C2", alpha=0.5, ms=4)
        axw.plot(xs, [np.mean([w["width"] for w in ws if w["series"] == s and w["x"] == x]) for x in xs], "-",
                 color="C2")
        axw.set(xscale="log", xlabel=res.x.split(".")[-1] if res.x else "", ylabel="window width")
        if res.x:
            axw.set_xticks(xs, [_short(x) for x in xs])
            axw.minorticks_off()
    axes[0][0].legend(fontsize=7, loc="best")
    axes[1][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{res.name}: C6, the window of radii where C1, C3 and C5 hold together ({norm}; mean ± sd over "
                 "seeds)\nopen markers: at the top, never broke within the radii swept; at the bottom, held at none",
                 fontsize=10)
    fig.tight_layout()
    return fig, sorted({w["group"] for w in ws}), ws


PURIFICATION = (("dense_cos_mean", ("clean_net", "adv_net"), "dense part: cosine with w*"),
                ("dense_ratio_mean", ("clean_net", "adv_net"), "dense / principal norm"),
                ("dense_output_share", ("clean_net", "adv_net"), "output share of the dense parts"),
                ("purified_share", ("adv_net",), "purified share |beta w'| > |v| (C4)"),
                ("v_dense_share_mean", ("adv_net",), "share of v outside principal atoms"),
                ("init_corr_adv", ("adv_net",), "|cos| with the init (dashed: adv. trained, dotted: clean)"))


def figure_purification(res: Results):
    norm = res.norms[0] if res.norms else ""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4), squeeze=False)
    series = res.ordered_series()
    used = set()
    for ax, (metric, models, title) in zip(axes.flat, PURIFICATION):
        for si, s in enumerate(series):
            gs = sorted((g for g in res.groups if res.series[g] == s), key=lambda g: res.xval(g) or 0)
            for model in models:
                for met, ls in ((metric, "-" if model == "clean_net" else "--"),) + (
                        (("init_corr_clean", ":"),) if metric == "init_corr_adv" else ()):
                    nm = norm if model != "clean_net" else ""
                    pts = [(res.xval(g), [r["value"] for r in res.get(g, model, met, nm)]) for g in gs]
                    pts = [(x, v) for x, v in pts if v]
                    if not pts:
                        continue
                    used.update(gs)
                    xs = [p[0] if res.x else i for i, p in enumerate(pts)]
                    ax.errorbar(xs, [np.mean(v) for _, v in pts], yerr=[np.std(v) for _, v in pts], fmt="o" + ls,
                                color=f"C{si}", ms=3, capsize=2, lw=1.2,
                                label=f"{s}: {'clean' if model == 'clean_net' else 'adversarial'}"
                                + (" (clean weights)" if met == "init_corr_clean" else ""))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(title, fontsize=9)
        if res.x:
            ax.set_xscale("log")
            xs_all = sorted({res.xval(g) for g in res.groups})
            ax.set_xticks(xs_all, [_short(x) for x in xs_all])
            ax.minorticks_off()
            ax.set_xlabel(res.x.split(".")[-1])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{res.name}: purification measures (solid: clean training, dashed: adversarial training in "
                 f"{norm}; mean ± sd over seeds)", fontsize=10)
    fig.tight_layout()
    return fig, sorted(used)


def figure_weights(res: Results, max_rows: int = 4):
    if res.dir is None:
        return None, []
    grid, _ = _panels(res)
    chosen = [g for g in grid[0] if g is not None][:max_rows]
    pics = []
    for g in chosen:
        seed = res.seeds_of(g)[0]
        cell = next(r["cell"] for r in res.rows if r["_g"] == g and r["seed"] == seed)
        pic = store.read_pictures(res.dir, cell)
        if pic is not None:
            pics.append((g, cell, pic))
    if not pics:
        return None, []
    fig, axes = plt.subplots(len(pics), 2, figsize=(9, 2.6 * len(pics)), squeeze=False)
    for i, (g, cell, pic) in enumerate(pics):
        for j, (key, title) in enumerate((("clean", "clean training"), ("adv", "after adversarial training"))):
            ax = axes[i][j]
            ax.imshow(pic[key], aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            name = (f"{res.x.split('.')[-1]}={_short(res.xval(g))}" if res.x else _gname(g)) + f" (cell {cell[:8]})"
            ax.set_title(f"{title}: |M^T w_i| / max, {name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("neuron (by principal atom)", fontsize=8)
            if i == len(pics) - 1:
                ax.set_xlabel("atom (principal atoms first picked)", fontsize=8)
    fig.suptitle(f"{res.name}: weights in the dictionary basis ({pics[0][0] and res.series[pics[0][0]]}, seed "
                 f"{res.seeds_of(pics[0][0])[0]})", fontsize=10)
    fig.tight_layout()
    return fig, [p[1] for p in pics]


# --------------------------------------------------------------------------------------------
# The driver


def plot_results(results, out="figures", prefix: str | None = None, command: str | None = None) -> list[Path]:
    """Write every standard figure of a sweep's results; returns the paths written."""
    res = load(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or res.name
    base = sidecar(command or f"python -m sim plot {results}", results=str(results), sweep=res.name,
                   sweep_runs=res.meta.get("runs", []))
    written = []

    def save(fig, name, groups):
        written.extend(_save(fig, out, f"{prefix}_{name}", {**base, "config_hashes": res.cells_of(groups)}))

    for norm in res.norms:
        fig, used = figure_robust_vs_radius(res, norm)
        save(fig, f"robust_vs_radius_{norm}", used)
        if res.x == "run.data.d":  # the C6 window is a statement about d
            fig, used, _ = figure_c6(res, norm)
            save(fig, f"c6_window_{norm}", used)
        if res.x == "run.data.d":  # the phase diagram: PREFIX_NORM, its windows and crossings in the sidecar
            from .phase import figure_phase, phase_sidecar

            fig, used = figure_phase(res, norm)
            written.extend(_save(fig, out, f"{prefix}_{norm}", {**base, "config_hashes": res.cells_of(used),
                                                                **phase_sidecar(res, norm)}))
    from .regime import claims_map_markdown, figure_claims_map

    for norm in res.norms:  # the claims map: C1-C4 per cell, as verify judges them
        fig, used = figure_claims_map(res, norm)
        save(fig, f"claims_map_{norm}", used)
        md = out / f"{prefix}_claims_map_{norm}.md"
        atomic_write_bytes(md, claims_map_markdown(res, norm).encode())
        written.append(md)
    fig, used = figure_purification(res)
    save(fig, "purification_vs_d" if res.x == "run.data.d" else "purification", used)
    fig, cells = figure_weights(res)
    if fig is not None:
        stem = f"{prefix}_weights_dictionary_basis"
        written.extend(_save(fig, out, stem, {**base, "config_hashes": sorted(cells)}))
    md = out / f"{prefix}_summary.md"
    atomic_write_bytes(md, summary_markdown(res).encode())
    written.append(md)
    if res.dir is not None:  # the table and the sweep's record beside the figures
        written.append(store.export_table(res.dir, out / f"{prefix}_results.csv.gz"))
        record = dict(res.meta)
        try:
            record["summary"] = json.loads((res.dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
        atomic_write_json(out / f"{prefix}_sweep.json", record)
        written.append(out / f"{prefix}_sweep.json")
    return written
