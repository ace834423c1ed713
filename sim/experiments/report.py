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
    first = next(iter(doc["results"]["threat_models"]))
    with np.load(out / f"weights_{first}.npz") as z:
        figure_weights(clean, z["W_adv"], figs / "weights_dictionary_basis.png")
    cfg = doc["config"]
    lines = ["# sim verify: feature purification claims", "",
             f"Data: d={cfg['run']['data']['d']}, k={cfg['run']['data']['k']}, {cfg['run']['data']['dictionary']} "
             f"dictionary, N={cfg['run']['data']['n_train']}; network m={clean.net.width}, "
             f"bias {cfg['run']['model']['bias']} (beta={cfg['run']['model']['beta']}); adversarial training "
             f"{cfg['adv_kind']} ({cfg['adv_mode']}, {cfg['adv_steps']} steps, lr {cfg['adv_lr']}).", "",
             "## Claims", "", "The model and the claims C1-C8 (what each id measures, which choices are the paper's and "
             "which are ours): [docs/MODEL.md](" + model_doc_link(out) + ") in the repository.", "",
             claims_table(doc["claims"]), ""]
    holds = sum(c["holds"] for c in doc["claims"])
    lines += [f"{holds} of {len(doc['claims'])} claims hold.", ""]
    for norm, tm in doc["results"]["threat_models"].items():
        lines += [f"## {norm}, tau = {tm['tau']:g}", "",
                  "| network | clean acc | robust acc [certified, best attack] | per attack |", "| --- | --- | --- | --- |"]
        for key, name in (("clean_net", "clean training"), ("adv_net", "adversarial training"),
                          ("random_control_net", "random-noise control")):
            r = tm[key]
            per = ", ".join(f"{k} {v:.3f}" for k, v in r["per_attack"].items())
            rob = f"{r['robust_acc']:.3f}"
            if "certified_acc" in r:
                rob = f"[{r['certified_acc']:.3f}, {r['robust_acc']:.3f}]"
            lines.append(f"| {name} | {r['clean_acc']:.3f} | {rob} | {per} |")
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
                  "Purification: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tm["purification"].items()), "",
                  "Dense parts after adversarial training: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tm["adv_dense"].items()),
                  ""]
    lines += ["Dense parts after clean training: " + ", ".join(f"{k} {_fmt(v)}" for k, v in doc["results"]["clean"]["dense"].items()),
              "", "## Figures", "", "![robust accuracy against radius](figures/robust_vs_radius.png)", "",
              "![measures along adversarial training](figures/measures_along_training.png)", "",
              "![weights in the dictionary basis](figures/weights_dictionary_basis.png)", "",
              "## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in doc["timings"].items()), ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
