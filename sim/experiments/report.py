"""report.md and the figures of `sim verify` (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim import measures  # noqa: E402
from sim.claims import _fmt, claims_table  # noqa: E402
from sim.common.figures import save_figure  # noqa: E402
from sim.common.files import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path):
    save_figure(fig, path)


def figure_robust_curves(doc, path):
    tms = doc["results"]["threat_models"]
    fig, axes = plt.subplots(1, len(tms), figsize=(5 * len(tms), 3.6), squeeze=False)
    for ax, (norm, tm) in zip(axes[0], tms.items()):
        for key, label in (("curve_clean", "clean training"), ("curve_adv", "adversarial training")):
            pts = tm[key]
            ax.plot([q["tau"] for q in pts], [q["robust_acc"] for q in pts], "o-", label=label)
            cert = [q for q in pts if "certified_acc" in q]
            if cert:
                ax.plot([q["tau"] for q in cert], [q["certified_acc"] for q in cert], "x--",
                        label=f"{label}, certified")
        ax.axvline(tm["tau"], color="grey", ls=":", lw=1)
        ax.set(xlabel=f"radius ({norm})", ylabel="robust accuracy", ylim=(-0.02, 1.02), title=f"{norm} threat model")
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_trace(doc, path):
    tms = doc["results"]["threat_models"]
    fig, axes = plt.subplots(1, len(tms), figsize=(5 * len(tms), 3.6), squeeze=False)
    for ax, (norm, tm) in zip(axes[0], tms.items()):
        tr = tm["adv_trace"]
        steps = [t["step"] for t in tr]
        for key, label in (("dense_cos_mean", "dense-part cosine with w*"), ("purified_share", "purified share"),
                           ("robust_acc_fgm_dense", "robust acc (FGM, dense)"), ("dense_ratio_mean", "dense/principal norm")):
            ax.plot(steps, [t[key] for t in tr], "o-", ms=3, label=label)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="adversarial training step", title=f"measures along {norm} adversarial training")
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_convergence(doc, path):
    """The plateau criterion's curves: held-out light robust accuracy against the step, for the
    adversarial and the random-noise control run of each threat model (and the clean
    training's accuracy curve); a run that hit its cap is marked 'not converged'."""
    tms = doc["results"]["threat_models"]
    fig, axes = plt.subplots(1, len(tms) + 1, figsize=(4.6 * (len(tms) + 1), 3.6), squeeze=False)
    ct = doc["results"]["clean"].get("training")
    ax = axes[0][0]
    if ct:
        ax.plot([q["step"] for q in ct["curve"]], [q["value"] for q in ct["curve"]], "o-", ms=3)
        ax.set(title="clean training" + ("" if ct["converged"] else " (NOT converged)"), xlabel="step",
               ylabel="clean accuracy (plateau measure)")
    for ax, (norm, tm) in zip(axes[0][1:], tms.items()):
        for key, label in (("adv_training", "adversarial"), ("control_training", "random-noise control")):
            rec = tm.get(key)
            if not rec:
                continue
            lab = f"{label}: {rec['steps']} steps" + ("" if rec["converged"] else ", NOT converged")
            ax.plot([q["step"] for q in rec["curve"]], [q["value"] for q in rec["curve"]], "o-", ms=3, label=lab)
        ax.set(xlabel="step", ylabel="held-out robust acc (FGM, dense)", ylim=(-0.02, 1.02),
               title=f"{norm} tau={tm['tau']:g}: training curves")
        ax.legend(fontsize=8)
    _save(fig, path)


def _acc(v):
    return "-" if v is None else f"{v:.3f}"


def margin_table(tm) -> list[str]:
    """Robust accuracy by margin class |<w*, z>| (attacked; certified where computed)."""
    keys = (("clean_net", "clean training"), ("adv_net", "adversarial training"),
            ("random_control_net", "random-noise control"), ("ideal_net", "ideal purified network (from M, w*)"))
    first = tm["adv_net"]["by_margin"]["attacked"]
    names = list(first)
    lines = ["| network | " + " | ".join(f"margin {c} (n={first[c]['n']}) [certified, attacked]" for c in names) + " |",
             "| --- |" + " --- |" * len(names)]
    for key, label in keys:
        if key not in tm:
            continue
        bm = tm[key]["by_margin"]
        cells = []
        for c in names:
            att = bm["attacked"][c]["acc"]
            cells.append(f"[{_acc(bm['certified'][c]['acc'])}, {_acc(att)}]" if "certified" in bm else _acc(att))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _convergence_line(name, rec) -> str:
    if rec is None:
        return ""
    retry = rec.get("retry")
    if retry:
        name = (f"{name} (retried with the radius ramped over {retry['tau_ramp']} steps: the first run diverged, "
                f"held-out clean accuracy {retry['first_held_out_clean_acc']:.3f} after {retry['first_steps']} steps)")
    if rec["converged"]:
        return f"{name}: converged after {rec['steps']} steps ({rec['criterion']})."
    if rec.get("diverged"):
        return (f"**{name}: DIVERGED**: after {rec['steps']} steps its clean accuracy on the held-out points is "
                f"{rec['held_out_clean_acc']:.3f} (a dead network; not converged); its numbers are a training "
                "failure, not the end point of training. A training radius ramped up over 200 steps prevented "
                "it at k = 4, not at an adversarial bias of 0.3 (`--set adv_tau_ramp=200`, or "
                "`--set adv_retry_tau_ramp=200` to ramp only a run that diverged; README, 'Adversarial training "
                "can kill the network').")
    return (f"**{name}: NOT CONVERGED**: it reached the cap of {rec['steps']} steps before its curve met the "
            f"criterion ({rec['criterion']}); its numbers are not the end point of training.")


def _c4_lines(pur) -> list[str]:
    if "principal_kept_share" not in pur:
        return []
    kept = pur["purified_share_kept"]
    return [f"C4 read per neuron: the split w_i = beta_i w'_i + v_i holds for {100 * pur['purified_share']:.1f} % of the "
            f"learned neurons; {100 * pur['principal_kept_share']:.1f} % keep their principal atom through adversarial "
            f"training, and among those the split holds for "
            + ("- (none)" if kept is None else f"{100 * kept:.1f} %")
            + f". Clean neurons: median share of the largest atom in the norm, max_j |c_ij| / |w_i|, "
            f"{pur['clean_top_atom_share_median']:.3f}; median |principal part| / |w_i| "
            f"{pur['clean_principal_norm_share_median']:.3f} (feature-dominated clean training has both near 1).", ""]


def figure_weights(clean, W_adv, path, threshold=0.5, n_neurons=48, n_atoms=64):
    """|c_ij| for neurons (rows) sorted by principal atom, atoms (columns), before and after: the
    atoms shown include each shown neuron's principal atom (sim.measures.dictionary_picture)."""
    p = clean.problem
    pic = measures.dictionary_picture(measures.coefficients(clean.net.W, p.M), measures.coefficients(W_adv, p.M),
                                      n_neurons, n_atoms)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, title in ((axes[0], "clean", "clean training"), (axes[1], "adv", "after adversarial training")):
        ax.imshow(pic[key], aspect="auto", cmap="magma", vmin=0, vmax=1)
        ax.set(title=f"{title}: |M^T w_i| / max", xlabel="atom", ylabel="neuron (sorted by principal atom)")
    _save(fig, path)


def _acc(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def c5_table(tm: dict, norm: str, adv_kind: str) -> list[str]:
    """The C5 table of one threat model: every model tried, by class, with robust accuracy as
    [certified, attacked]: certified is a sound lower bound (per-atom polynomials; exact linear
    numbers are both), attacked the best of the attacks (exact for linear models)."""
    lines = [f"Low-complexity models (C5) at {norm} tau = {tm['tau']:g}, by class (claims C5-linear, C5-poly-degP, "
             "C5-ntk judge each class on its best member):", "",
             "| class | model | training | n_train | clean acc | certified | attacked | kind |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in tm["lower_bound"]:
        exact = r["robust_kind"] == "exact"
        cert = r["robust_acc"] if exact else r.get("certified_acc")
        lines.append(f"| {r.get('class', r['model'])} | {r['model']} | {r['training']} | {r['n_train'] or '-'} | "
                     f"{r['clean_acc']:.3f} | {_acc(cert)} | {r['robust_acc']:.3f} | {r['robust_kind']} |")
    net = tm["adv_net"]
    lines.append(f"| network | network | {adv_kind} adversarial | - | {net['clean_acc']:.3f} | "
                 f"{_acc(net.get('certified_acc'))} | {net['robust_acc']:.3f} | attacked |")
    return lines


def model_doc_link(out: Path) -> str:
    """docs/MODEL.md of this checkout, relative to the folder of the report (the path in the
    repository if sim is not run from a checkout, or the two are on different drives)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "MODEL.md"
    if doc.is_file():
        try:
            return Path(os.path.relpath(doc, Path(out).resolve())).as_posix()
        except ValueError:
            pass
    return "docs/MODEL.md"


def write_report(doc, clean, out: Path):
    out = Path(out)
    figs = out / "figures"
    figure_robust_curves(doc, figs / "robust_vs_radius.png")
    figure_trace(doc, figs / "measures_along_training.png")
    figure_convergence(doc, figs / "convergence.png")
    first = next(iter(doc["results"]["threat_models"]))
    with np.load(out / f"weights_{first}.npz") as z:
        figure_weights(clean, z["W_adv"], figs / "weights_dictionary_basis.png")
    cfg = doc["config"]
    lines = ["# sim verify: feature purification claims", "",
             f"Data: d={cfg['run']['data']['d']}, k={cfg['run']['data']['k']}, {cfg['run']['data']['dictionary']} "
             f"dictionary, N={cfg['run']['data']['n_train']}; network m={clean.net.width}, "
             f"bias {cfg['run']['model']['bias']} (beta={cfg['run']['model']['beta']}); adversarial training "
             f"{cfg['adv_kind']} ({cfg['adv_mode']}, batch {cfg['adv_batch']}, lr {cfg['adv_lr']} with "
             f"{cfg['adv_warmup']} warm-up steps, until the plateau criterion holds, cap {cfg['adv_steps']} steps).", "",
             "## Claims", "", "The model and the claims C1-C8 (what each id measures, which choices are the paper's and "
             "which are ours): [docs/MODEL.md](" + model_doc_link(out) + ") in the repository.", "",
             claims_table(doc["claims"]), ""]
    holds = sum(c["holds"] for c in doc["claims"])
    lines += [f"{holds} of {len(doc['claims'])} claims hold.", ""]
    res = doc["results"]
    if res["clean"].get("training"):
        lines += [_convergence_line("Clean training", res["clean"]["training"]), ""]
    if "margin_classes" in res:
        lines += ["Margin classes |<w*, z>| of the evaluated test points: "
                  + ", ".join(f"{k}: {v}" for k, v in res["margin_classes"].items())
                  + f". The ideal purified network (sim.model.network.ideal_network, beta {res['ideal_net']['beta']:g})"
                  " holds a margin-1 point with a active atoms up to (1 - beta) / sqrt(a) in l2"
                  + (f" (= {res['ideal_net']['radius_margin1_median_atoms']:.3f} at the median a)"
                     if res["ideal_net"].get("radius_margin1_median_atoms") is not None else "") + ".", ""]
    for norm, tm in doc["results"]["threat_models"].items():
        lines += [f"## {norm}, tau = {tm['tau']:g}", ""]
        for key, name in (("adv_training", "Adversarial training"), ("control_training", "Random-noise control training")):
            if key in tm:
                lines += [_convergence_line(name, tm[key]), ""]
        lines += ["| network | clean acc | robust acc [certified, best attack] | per attack |", "| --- | --- | --- | --- |"]
        for key, name in (("clean_net", "clean training"), ("adv_net", "adversarial training"),
                          ("random_control_net", "random-noise control"), ("ideal_net", "ideal purified network")):
            if key not in tm:
                continue
            r = tm[key]
            per = ", ".join(f"{k} {v:.3f}" for k, v in r["per_attack"].items())
            rob = f"{r['robust_acc']:.3f}"
            if "certified_acc" in r:
                rob = f"[{r['certified_acc']:.3f}, {r['robust_acc']:.3f}]"
            lines.append(f"| {name} | {r['clean_acc']:.3f} | {rob} | {per} |")
        if "by_margin" in tm["adv_net"]:
            lines += ["", f"By margin class ({norm} tau = {tm['tau']:g}):", ""] + margin_table(tm)
        if "lower_bound" in tm:
            lines += ["", *c5_table(tm, norm, doc["config"]["adv_kind"])]
        for key, name in (("clean_net", "clean"), ("adv_net", "adversarially trained")):
            r = tm[key]
            if "certified_acc" in r:
                line = (f"Certificate, {name} network: [certified, attacked] = [{r['certified_acc']:.3f}, "
                        f"{r['robust_acc']:.3f}] in {r['certify_seconds']:.1f} s")
                if r["gap"] > 0.10:
                    diag = r.get("gap_diagnosis", {})
                    line += f"; gap {100 * r['gap']:.1f} points > 10: {diag.get('verdict', 'exact verifier not run')}"
                lines += ["", line + "."]
        lines += ["", f"Gradient-masking check: clean net: {tm['clean_net']['masking_note']}; "
                      f"adversarial net: {tm['adv_net']['masking_note']}.", "",
                  *_c4_lines(tm["purification"]),
                  "Purification: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tm["purification"].items()), "",
                  "Dense parts after adversarial training: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tm["adv_dense"].items()),
                  ""]
    lines += ["Dense parts after clean training: " + ", ".join(f"{k} {_fmt(v)}" for k, v in doc["results"]["clean"]["dense"].items()),
              "", "## Figures", "", "![robust accuracy against radius](figures/robust_vs_radius.png)", "",
              "![measures along adversarial training](figures/measures_along_training.png)", "",
              "![training curves and the plateau criterion](figures/convergence.png)", "",
              "![weights in the dictionary basis](figures/weights_dictionary_basis.png)", "",
              "## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in doc["timings"].items()), ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
