"""The whole experiment, by preset: clean training, adversarial fine-tuning from the clean
weights (in full and through rank-r updates), adversarial training from scratch (when the
preset has it), evaluation, purification measures, figures, and a report (markdown + JSON)
in ``out``.

Every run keeps its initial weights (checkpoints/), every stage its wall time, its time
budget and whether the budget stopped it, and the device it ran on; nothing in the report
is typed in by hand.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sim.common.files import atomic_save_npz, atomic_write_text, atomic_write_via
from sim.common.outdir import prepare_out_dir
from sim.common.validation import ConfigError  # bad parameters: one error type with sim

from cifar import figures
from cifar.config import check_out
from cifar.data import load_cifar10
from cifar.evaluate import Deadline, clean_accuracy, ensemble_attack, masking_checks, pgd_eval, threat_key
from cifar.lowrank import add_lowrank, count_trainable, delta_stats, lowrank_modules, merge_lowrank
from cifar.measures import compare
from cifar.models import build_model, effective_weights, first_conv_name, unwrap
from cifar.presets import DEFAULT_THREATS, PRESETS, Preset, get_preset  # noqa: F401  (re-exported)
from cifar.runtime import Runtime, StageTimer
from cifar.train import train


# --------------------------------------------------------------------------- helpers


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write_via(path, lambda tmp: torch.save(obj, tmp))


def _cpu_state(net) -> dict:
    return {k: v.detach().cpu().clone() for k, v in unwrap(net).state_dict().items()}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


# --------------------------------------------------------------------------- the run


def run(
    preset: Preset | str,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    device: str = "auto",
    quiet: bool = False,
    seed: int | None = None,
    threads: int | None = None,
    command: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the preset end to end; returns the report dict (also written to out/report.json).

    ``out`` follows sim's rule for run folders (sim.common.outdir.prepare_out_dir): a folder
    that holds another run is refused, naming it; ``overwrite`` clears a run folder first.

    Everything is checked, and the data loaded, before ``out`` is created. On the CPU, torch
    uses ``threads`` threads (default: the preset's ``cpu_threads``, else torch's default)
    for the duration of the run. ``command``: the command line, recorded in the report."""
    p = get_preset(preset) if isinstance(preset, str) else preset.validate()
    out = Path(out)
    check_out(out)
    threads = threads if threads is not None else p.cpu_threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    rt = Runtime.create(device)
    if p.expects_gpu and rt.device.type != "cuda" and device == "auto":
        raise ConfigError(
            f"preset {p.name!r} is meant for a CUDA GPU and none was found; "
            "pass --device cpu to run it on the CPU anyway (hours), or use --preset smoke"
        )
    old = torch.get_num_threads()
    if rt.device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        return _run(p, rt, out, data, cache, quiet, p.seed if seed is None else seed, command, overwrite)
    finally:
        torch.set_num_threads(old)


def _run(p: Preset, rt: Runtime, out: Path, data, cache, quiet: bool, seed: int, command: str | None,
         overwrite: bool = False) -> dict:
    t_start = time.perf_counter()
    timer = StageTimer(rt)
    progress = not quiet
    budgets: dict[str, dict] = {}

    def log(msg: str) -> None:
        if not quiet:
            print(f"[cifar {time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    log(f"preset {p.name} on {rt.device} (bf16 autocast: {rt.amp}, channels_last: {rt.channels_last})")
    with timer("data"):
        ds = load_cifar10(data, cache, p.n_train, p.n_test, seed)
        xtr = torch.from_numpy(ds.train_x).to(rt.device)
        ytr = torch.from_numpy(ds.train_y).to(rt.device)
        xte = torch.from_numpy(ds.test_x).to(rt.device)
        yte = torch.from_numpy(ds.test_y).to(rt.device)
    log(f"data: {ds.source} {ds.path} ({len(ytr)} train / {len(yte)} test, checksum verified: {ds.verified})")
    # only now: bad data or settings leave nothing behind; a folder of another run is refused
    prepare_out_dir(out, "cifar run", {"preset": asdict(p), "seed": seed}, overwrite=overwrite,
                    run_files=("report.json", "report.md", "checkpoints"))

    ckpt = out / "checkpoints"
    models: dict[str, torch.nn.Module] = {}
    histories: dict[str, dict] = {}
    inits: dict[str, dict] = {}
    lowrank_info: dict[str, dict] = {}

    def fresh(state: dict | None):
        torch.manual_seed(seed)
        net = build_model(p.model, **p.model_kwargs)
        if state is not None:
            net.load_state_dict(state)
        return rt.wrap(net)

    def save(name: str, obj) -> None:
        if p.save_checkpoints:
            atomic_torch_save(obj, ckpt / f"{name}.pt")

    def fit(name: str, model, cfg, msg: str, **kw) -> None:
        stage = f"train:{name}"
        with timer(stage):
            log(msg + (f" (budget {cfg.budget_s:.0f}s)" if cfg.budget_s else ""))
            h = histories[name] = train(model, xtr, ytr, cfg, seed=kw.pop("train_seed"), progress=progress, desc=name, **kw)
        budgets[stage] = {"budget_s": cfg.budget_s, "used_s": timer.seconds[stage], "stopped": h["budget_stopped"],
                          "reached": f"{h['steps']}/{h['steps_planned']} steps"}
        if h["budget_stopped"]:
            log(f"{name}: budget reached after {h['steps']} of {h['steps_planned']} steps (schedule annealed)")

    # clean training
    clean = fresh(None)
    init_state = _cpu_state(clean)
    save("clean_init", init_state)
    fit("clean", clean, p.clean, "clean training", train_seed=seed)
    clean_state = _cpu_state(clean)
    save("clean_final", clean_state)
    models["clean"], inits["clean"] = clean, init_state

    # adversarial fine-tuning, full
    ft = fresh(clean_state)
    fit("adv_ft_full", ft, p.adv_finetune, f"adversarial fine-tuning ({p.adv_finetune.mode}), all weights", train_seed=seed + 1)
    save("adv_ft_full_final", _cpu_state(ft))
    models["adv_ft_full"], inits["adv_ft_full"] = ft, clean_state

    # adversarial fine-tuning, rank r
    for r in p.ranks:
        name = f"adv_ft_rank{r}"
        m = fresh(clean_state)
        params = add_lowrank(m, r, seed=seed + r, train_vectors=p.lowrank_train_vectors)
        v_init = {k: v.V.detach().cpu().clone() for k, v in lowrank_modules(m).items()}  # U starts at 0
        fit(name, m, p.lowrank_config(), f"adversarial fine-tuning ({p.adv_finetune.mode}), rank-{r} updates", params=params, train_seed=seed + 1)
        factors = {k: {"U": v.U.detach().cpu(), "V": v.V.detach().cpu()} for k, v in lowrank_modules(m).items()}
        lowrank_info[name] = {"rank": r, "trainable_params": count_trainable(params), "layers": delta_stats(m)}
        merge_lowrank(m)
        save(f"{name}_final", {"merged": _cpu_state(m), "factors": factors, "V_init": v_init, "base": "clean_final"})
        models[name], inits[name] = m, clean_state

    init_files = {"clean": "checkpoints/clean_init.pt", "adv_ft_full": "checkpoints/clean_final.pt"}
    init_files.update({f"adv_ft_rank{r}": f"checkpoints/clean_final.pt, U = 0, V from 'V_init' in checkpoints/adv_ft_rank{r}_final.pt" for r in p.ranks})

    # adversarial training from scratch (optional)
    sc = None
    if p.adv_scratch is not None:
        scratch_init = init_state if p.scratch_same_init else None
        if scratch_init is not None:
            sc = fresh(scratch_init)
        else:
            torch.manual_seed(seed + 12345)
            sc = rt.wrap(build_model(p.model, **p.model_kwargs))
            scratch_init = _cpu_state(sc)
            save("adv_scratch_init", scratch_init)
        fit("adv_scratch", sc, p.adv_scratch, f"adversarial training from scratch ({p.adv_scratch.mode})", train_seed=seed + 2)
        save("adv_scratch_final", _cpu_state(sc))
        models["adv_scratch"], inits["adv_scratch"] = sc, scratch_init
        init_files["adv_scratch"] = "checkpoints/" + ("clean_init.pt" if p.scratch_same_init else "adv_scratch_init.pt")

    # evaluation: clean accuracy, PGD (training threat), the ensemble, then -- while the
    # budget lasts -- the masking checks and PGD at the other threat models
    norm, eps = p.threat
    others = [t for t in DEFAULT_THREATS if t != (norm, eps)]
    n_pgd = min(p.eval_pgd_n, len(yte))
    results: dict[str, dict] = {}
    for name, m in models.items():
        stage = f"eval:{name}"
        with timer(stage), rt.autotune(False):
            log(f"evaluating {name}" + (f" (budget {p.eval_budget_s:.0f}s)" if p.eval_budget_s else ""))
            deadline = Deadline(p.eval_budget_s)
            if p.eval_amp is not None:
                m.amp = p.eval_amp
            res = {"clean_acc": clean_accuracy(m, xte, yte, p.eval_batch), "n_clean": len(yte), "pgd": {}, "pgd_n": {}, "n_pgd": n_pgd, "skipped": []}
            main = pgd_eval(m, xte[:n_pgd], yte[:n_pgd], norm, eps, p.pgd_steps, p.pgd_restarts, p.eval_batch, seed, deadline)
            res["pgd"][threat_key(norm, eps)], res["pgd_n"][threat_key(norm, eps)] = main["acc"], main["n"]
            res["ensemble"] = ensemble_attack(m, xte, yte, norm, eps, p.ensemble, p.ensemble_batch or p.eval_batch, deadline)
            if name != "clean":
                if deadline.expired():
                    res["skipped"].append("masking checks")
                else:
                    res["masking"] = masking_checks(m, xte, yte, norm, eps, p.masking, p.eval_batch)
            for tn, te in others:  # one restart for the other threat models
                key = threat_key(tn, te)
                if deadline.expired():
                    res["pgd"][key], res["pgd_n"][key] = None, 0
                    res["skipped"].append(f"PGD {key}")
                    continue
                o = pgd_eval(m, xte[:n_pgd], yte[:n_pgd], tn, te, p.pgd_steps, 1, p.eval_batch, seed, deadline)
                res["pgd"][key], res["pgd_n"][key] = o["acc"], o["n"]
            results[name] = res
        truncated = [k for k, v in res["pgd_n"].items() if 0 < v < n_pgd] + (["ensemble"] if res["ensemble"]["budget_stopped"] else [])
        budgets[stage] = {"budget_s": p.eval_budget_s, "used_s": timer.seconds[stage], "stopped": bool(deadline.hit),
                          "reached": ", ".join([f"PGD {key} on {res['pgd_n'][key]}/{n_pgd}" for key in res["pgd_n"]]
                                               + [f"ensemble on {res['ensemble']['n']}/{res['ensemble']['n_planned']}"]),
                          "truncated": truncated, "skipped": res["skipped"]}
        if deadline.hit:
            log(f"{name}: evaluation budget reached ({budgets[stage]['reached']}; skipped: {', '.join(res['skipped']) or 'nothing'})")

    # purification measures
    with timer("measures"):
        log("purification measures")
        w_init = effective_weights(fresh(init_state))
        w_clean = effective_weights(clean)
        purif, controls = {}, {}
        for name, m in models.items():
            if name == "clean":
                continue
            own_init = effective_weights(fresh(inits[name])) if name == "adv_scratch" else w_clean
            c = compare(w_clean, effective_weights(m), init=w_init, adv_init=own_init, match_first=(name == "adv_scratch"))
            arrays = {f"{layer}__{k}": v for layer, arrs in c.pop("neurons").items() for k, v in arrs.items()}
            atomic_save_npz(out / "measures" / f"{name}.npz", **arrays)
            purif[name] = c
        controls["clean_vs_init"] = compare(w_clean, w_init)["overall"]

    # figures
    with timer("figures"):
        log("figures")
        first = first_conv_name(clean)
        filt = {"init": w_init[first], "clean": w_clean[first], "adv fine-tuned": effective_weights(ft)[first],
                f"adv rank {max(p.ranks)}": effective_weights(models[f"adv_ft_rank{max(p.ranks)}"])[first]}
        if sc is not None:
            filt["adv from scratch"] = effective_weights(sc)[first]
        key = threat_key(norm, eps)
        figs = {
            "filters": figures.plot_filters(filt, out / "figures" / "filters.png"),
            "share": figures.plot_share({k: v["layers"] for k, v in purif.items()}, out / "figures" / "purification_share.png"),
            "lowrank": figures.plot_lowrank(
                [{"rank": lowrank_info[k]["rank"], "clean_acc": results[k]["clean_acc"], "robust_acc": results[k]["pgd"][key]} for k in lowrank_info],
                {"clean_acc": results["adv_ft_full"]["clean_acc"], "robust_acc": results["adv_ft_full"]["pgd"][key]},
                out / "figures" / "lowrank.png",
            ),
        }
        curves = {k: v["masking"]["radius_curve"] for k, v in results.items() if "masking" in v}
        if curves:
            figs["radius"] = figures.plot_radius(curves, out / "figures" / "radius.png", norm)

    total = time.perf_counter() - t_start
    report = {
        "preset": p.name,
        "description": p.description,
        "command": command,
        "config": asdict(p),
        "seed": seed,
        "data": ds.describe(),
        "runtime": rt.describe(),
        "threat": {"norm": norm, "eps": eps, "key": threat_key(norm, eps)},
        "timings_s": timer.seconds,
        "total_s": total,
        "budget_s": p.budget_s,
        "budgets": budgets,
        "budget_stopped": sorted(k for k, v in budgets.items() if v["stopped"]),
        "training": histories,
        "lowrank": lowrank_info,
        "results": results,
        "purification": purif,
        "controls": controls,
        "figures": {k: str(v.relative_to(out)) for k, v in figs.items()},
        "initial_weights": init_files,
        "checkpoints": sorted(str(f.relative_to(out)) for f in ckpt.glob("*.pt")) if p.save_checkpoints else [],
    }
    report["clean_target"] = None if p.clean_target is None else {
        "target": p.clean_target, "achieved": results["clean"]["clean_acc"], "reached": results["clean"]["clean_acc"] >= p.clean_target,
    }
    report["notes"] = _notes(p, rt, ds, report)
    report = _jsonable(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out / "report.md", render_markdown(report))
    log(f"done in {total:.1f}s; report at {out / 'report.md'}")
    return report


def _notes(p: Preset, rt: Runtime, ds, report: dict) -> list[str]:
    notes = []
    if ds.caveat:
        notes.append(ds.caveat)
    if p.name == "smoke":
        notes.append("Smoke preset: a tiny CNN on a few hundred images, trained for seconds. The numbers test the "
                     "pipeline end to end; they say nothing about the paper's claims.")
    if p.name == "tiny":
        notes.append("Tiny preset: a narrow PreActResNet-18 on a thousand images with small time budgets, the gpu "
                     "preset's structure at CPU scale. The numbers test the pipeline and the budgets; they say "
                     "nothing about the paper's claims.")
    if p.expects_gpu and rt.device.type != "cuda":
        notes.append(f"Preset {p.name!r} is meant for a GPU but ran on {rt.device}; timings are not comparable with the GPU budget.")
    if p.budget_s is not None:
        state = "within" if report["total_s"] <= p.budget_s else "OVER"
        notes.append(f"Wall time {report['total_s']:.0f}s, {state} the preset's budget of {p.budget_s:.0f}s.")
    for stage in report["budget_stopped"]:
        b = report["budgets"][stage]
        extra = f"; skipped: {', '.join(b['skipped'])}" if b.get("skipped") else ""
        notes.append(f"BUDGET: {stage} reached its budget of {b['budget_s']:.0f}s and stopped cleanly ({b['reached']}{extra}).")
    if p.adv_scratch is not None and p.scratch_same_init:
        notes.append("The from-scratch adversarial run starts from the same random weights as the clean run, so neurons can "
                     "be compared one to one; even so, neurons of independently trained nets need not stay aligned "
                     "(permutation symmetry): read per-neuron clean-vs-scratch numbers with that in mind "
                     "(the first layer also has a permutation-matched |cos|).")
    if p.adv_scratch is None:
        notes.append("This preset does not train adversarially from scratch (time): every adversarial model is fine-tuned from the clean weights.")
    notes.append("share |beta w'| > |v| is the share of neurons with |cos(w, w')| > 1/sqrt(2); for fine-tuned models w' starts "
                 "at w, so compare with how far w' moved (rel_dist_adv_from_clean) and with the clean-vs-init control.")
    if p.eval_amp is False and rt.amp:
        notes.append("Training used bf16 autocast; evaluation and attacks ran in fp32 (TF32 matmuls) to avoid precision-induced masking.")
    for name, res in report["results"].items():
        if res.get("masking", {}).get("suspicious"):
            flags = [k for k, v in res["masking"]["flags"].items() if v]
            notes.append(f"Gradient-masking check flagged {name}: {', '.join(flags)}.")
    for name, h in report["training"].items():
        if h.get("stopped_early"):
            notes.append(f"{name}: catastrophic-overfitting guard fired; best weights restored, training stopped at step {h['steps']}.")
    return notes


def render_markdown(r: dict) -> str:
    """The human-readable report, from the JSON report only."""
    key = r["threat"]["key"]
    cfg = r["config"]
    L = [f"# Feature purification on CIFAR-10 — preset `{r['preset']}`", "", r["description"], ""]
    for n in r["notes"]:
        L.append(f"> {n}")
        L.append(">")
    d, rtm = r["data"], r["runtime"]
    L += ["", "## Setup", "",
          f"- data: {d['source']} at `{d['path']}`, {d['n_train']} train / {d['n_test']} test images, "
          f"sha256 `{(d['sha256'] or 'n/a')[:16]}…`, checksum verified: {d['checksum_verified']}",
          f"- model: {cfg['model']} {cfg['model_kwargs'] or ''}; seed {r['seed']}",
          f"- device: {rtm['device']}{' (' + rtm['gpu'] + ')' if 'gpu' in rtm else ''}, bf16 autocast {rtm['amp_bf16']}, "
          f"channels_last {rtm['channels_last']}, torch {rtm['torch']}"
          + (f", CUDA {rtm.get('cuda')}, cuDNN {rtm.get('cudnn')}" if 'gpu' in rtm else ""),
          f"- threat model for training and the ensemble: {key}; total wall time {r['total_s']:.1f}s"
          + (f" (budget {r['budget_s']:.0f}s)" if r.get("budget_s") else ""),
          f"- command: `{r['command']}`" if r.get("command") else "- command: (called from Python)", ""]
    L += ["| run | mode | steps done/planned | epochs begun/planned | lr | batch | steps (PGD) | trainable params | train s | budget s | budget stopped | guard fired |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, h in r["training"].items():
        c = h["config"]
        L.append(f"| {name} | {c['mode']} | {h['steps']}/{h.get('steps_planned', '?')} | {len(h['epochs'])}/{c['epochs']} | {c['lr']} | {c['batch_size']} | "
                 f"{c['steps'] if c['mode'] == 'pgd' else '-'} | {h['trainable_params']:,} | {h['seconds']:.1f} | "
                 f"{c.get('budget_s') or '-'} | {h.get('budget_stopped', False)} | {h['stopped_early']} |")
    res = r["results"]
    keys = list(next(iter(res.values()))["pgd"])
    L += ["", "## Accuracy", "",
          f"Clean accuracy on {next(iter(res.values()))['n_clean']} test images; PGD-{cfg['pgd_steps']} with {cfg['pgd_restarts']} "
          f"restart(s) for {key} (1 for the other threat) on the first {next(iter(res.values()))['n_pgd']}; ensemble = APGD-CE → APGD-DLR-targeted "
          f"({cfg['ensemble']['n_targets']} targets) → Square ({cfg['ensemble']['square_queries']} queries) on the first {cfg['ensemble']['n']}. "
          "A column's (n) is the number of points it was measured on where a time budget cut it short.", "",
          "| model | clean | " + " | ".join(f"PGD {k}" for k in keys) + f" | ensemble {key} | after APGD-CE | after APGD-T |",
          "|---|---|" + "---|" * len(keys) + "---|---|---|"]

    def cell(acc, n, planned):
        return _pct(acc) + (f" (n={n})" if acc is not None and n is not None and n < planned else "")

    for name, x in res.items():
        e = x["ensemble"]
        n_of = x.get("pgd_n", {})
        L.append(f"| {name} | {_pct(x['clean_acc'])} | " + " | ".join(cell(x["pgd"][k], n_of.get(k), x["n_pgd"]) for k in keys)
                 + f" | {cell(e['robust_acc'], e.get('n'), e.get('n_planned', e.get('n')))} | {_pct(e['after']['apgd-ce'])} | {_pct(e['after']['apgd-t'])} |")
    skipped = {name: x["skipped"] for name, x in res.items() if x.get("skipped")}
    if skipped:
        L += ["", "Skipped when the evaluation budget ran out: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in skipped.items()) + "."]
    if r.get("clean_target"):
        t = r["clean_target"]
        L += ["", f"Clean-accuracy target {_pct(t['target'])}: {'reached' if t['reached'] else 'NOT reached'} ({_pct(t['achieved'])})."]
    L += ["", "## Gradient-masking checks", "",
          "| model | PGD acc | Square acc | broken only by Square | zero-gradient share | accuracy vs radius | flags |", "|---|---|---|---|---|---|---|"]
    for name, x in res.items():
        if "masking" not in x:
            continue
        mk = x["masking"]
        curve = " → ".join(_pct(c["acc"]) for c in mk["radius_curve"])
        flags = ", ".join(k for k, v in mk["flags"].items() if v) or "none"
        L.append(f"| {name} | {_pct(mk['whitebox_pgd_acc'])} | {_pct(mk['blackbox_square_acc'])} | {mk['broken_only_by_square']} | "
                 f"{_pct(mk['zero_gradient_share'])} | {curve} | {flags} |")
    radii = next((x["masking"]["radius_curve"] for x in res.values() if "masking" in x), [])
    L += ["", "Radii: " + ", ".join(f"{c['radius']:.4g}" for c in radii) + "."]
    L += ["", "## Low-rank adversarial fine-tuning (W = W_clean + U V^T in every conv/linear layer)", "",
          f"| rank | trainable params | clean | PGD {key} | ensemble | mean |UV^T|/|W| | max numerical rank |", "|---|---|---|---|---|---|---|"]
    full = res["adv_ft_full"]
    L.append(f"| full | {r['training']['adv_ft_full']['trainable_params']:,} | {_pct(full['clean_acc'])} | {_pct(full['pgd'][key])} | "
             f"{_pct(full['ensemble']['robust_acc'])} | - | - |")
    for name, info in r["lowrank"].items():
        x = res[name]
        rel = np.mean([v["relative_update"] for v in info["layers"].values()])
        mx = max(v["numerical_rank"] for v in info["layers"].values())
        L.append(f"| {info['rank']} | {info['trainable_params']:,} | {_pct(x['clean_acc'])} | {_pct(x['pgd'][key])} | "
                 f"{_pct(x['ensemble']['robust_acc'])} | {rel:.3g} | {mx} |")
    L += ["", "## Purification: clean w_i = beta_i w'_i + v_i (w' adversarial)", "",
          "| adversarial model | neurons | share |beta w'| > |v| | layers with majority | control: clean vs init share | "
          "mean rel. dist. clean–init | mean rel. dist. adv–init |", "|---|---|---|---|---|---|---|"]
    for name, c in r["purification"].items():
        o = c["overall"]
        L.append(f"| {name} | {o['neurons']} | {_pct(o['share_dominated'])} | {o['layers_with_majority_dominated']}/{o['layers']} | "
                 f"{_pct(o.get('control_share_clean_vs_init'))} | {o.get('mean_rel_dist_clean_from_init', float('nan')):.3g} | "
                 f"{o.get('mean_rel_dist_adv_from_init', float('nan')):.3g} |")
    for name in ("adv_ft_full", "adv_scratch"):
        c = r["purification"].get(name)
        if not c:
            continue
        L += ["", f"Per layer, {name}:", "",
              "| layer | neurons | share | median beta | median cos(w,w') | median cos(w,init) | median cos(w',init) | rel. dist. w'–w |",
              "|---|---|---|---|---|---|---|---|"]
        for row in c["layers"]:
            L.append(f"| {row['layer']} | {row['neurons']} | {_pct(row['share_dominated'])} | {row['beta']['median']:.3f} | "
                     f"{row['cos_clean_adv']['median']:.3f} | {row['cos_clean_init']['median']:.3f} | {row['cos_adv_init']['median']:.3f} | "
                     f"{row['rel_dist_adv_from_clean']:.3f} |")
        if "matched_abs_cos_clean_adv" in c["layers"][0]:
            L.append(f"\nFirst layer, permutation-matched mean |cos(w, w')|: {c['layers'][0]['matched_abs_cos_clean_adv']:.3f}.")
    L += ["", "## Figures", ""] + [f"![{k}]({v})" for k, v in r["figures"].items()]
    L += ["", "## Timings (seconds, device synchronised) and time budgets", "", "| stage | s | budget s | stopped by budget | reached |", "|---|---|---|---|---|"]
    bud = r.get("budgets", {})
    for k, v in r["timings_s"].items():
        b = bud.get(k, {})
        L.append(f"| {k} | {v:.2f} | {b.get('budget_s') or '-'} | {'**yes**' if b.get('stopped') else ('no' if b else '-')} | {b.get('reached', '')} |")
    L += [f"| total | {r['total_s']:.2f} | {r.get('budget_s') or '-'} | | |", ""]
    return "\n".join(L)
