"""The whole experiment, by preset: clean training, adversarial fine-tuning from the clean
weights (in full and through rank-r updates), adversarial training from scratch,
evaluation, purification measures, figures, and a report (markdown + JSON) in ``out``.

Every run keeps its initial weights (checkpoints/), every stage its wall time and the
device it ran on; nothing in the report is typed in by hand.
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
from sim.common.validation import ConfigError  # bad parameters: one error type with sim

from cifar import figures
from cifar.config import check_out
from cifar.data import load_cifar10
from cifar.evaluate import clean_accuracy, ensemble_attack, masking_checks, pgd_accuracy, threat_key
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
) -> dict:
    """Run the preset end to end; returns the report dict (also written to out/report.json).

    On the CPU, torch uses ``threads`` threads (default: the preset's ``cpu_threads``, else
    torch's default) for the duration of the run."""
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
        return _run(p, rt, out, data, cache, quiet, p.seed if seed is None else seed)
    finally:
        torch.set_num_threads(old)


def _run(p: Preset, rt: Runtime, out: Path, data, cache, quiet: bool, seed: int) -> dict:
    t_start = time.perf_counter()
    timer = StageTimer(rt)
    progress = not quiet

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
    out.mkdir(parents=True, exist_ok=True)  # only now: bad data or settings leave nothing behind

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

    # clean training
    clean = fresh(None)
    init_state = _cpu_state(clean)
    save("clean_init", init_state)
    with timer("train:clean"):
        log("clean training")
        histories["clean"] = train(clean, xtr, ytr, p.clean, seed=seed, progress=progress, desc="clean")
    clean_state = _cpu_state(clean)
    save("clean_final", clean_state)
    models["clean"], inits["clean"] = clean, init_state

    # adversarial fine-tuning, full
    ft = fresh(clean_state)
    with timer("train:adv_ft_full"):
        log(f"adversarial fine-tuning ({p.adv_finetune.mode}), all weights")
        histories["adv_ft_full"] = train(ft, xtr, ytr, p.adv_finetune, seed=seed + 1, progress=progress, desc="adv ft full")
    save("adv_ft_full_final", _cpu_state(ft))
    models["adv_ft_full"], inits["adv_ft_full"] = ft, clean_state

    # adversarial fine-tuning, rank r
    for r in p.ranks:
        name = f"adv_ft_rank{r}"
        m = fresh(clean_state)
        params = add_lowrank(m, r, seed=seed + r, train_vectors=p.lowrank_train_vectors)
        v_init = {k: v.V.detach().cpu().clone() for k, v in lowrank_modules(m).items()}  # U starts at 0
        with timer(f"train:{name}"):
            log(f"adversarial fine-tuning ({p.adv_finetune.mode}), rank-{r} updates")
            histories[name] = train(m, xtr, ytr, p.adv_finetune, params=params, seed=seed + 1, progress=progress, desc=f"adv ft r={r}")
        factors = {k: {"U": v.U.detach().cpu(), "V": v.V.detach().cpu()} for k, v in lowrank_modules(m).items()}
        lowrank_info[name] = {"rank": r, "trainable_params": count_trainable(params), "layers": delta_stats(m)}
        merge_lowrank(m)
        save(f"{name}_final", {"merged": _cpu_state(m), "factors": factors, "V_init": v_init, "base": "clean_final"})
        models[name], inits[name] = m, clean_state

    # adversarial training from scratch
    scratch_init = init_state if p.scratch_same_init else None
    sc = fresh(scratch_init) if scratch_init is not None else None
    if sc is None:
        torch.manual_seed(seed + 12345)
        sc = rt.wrap(build_model(p.model, **p.model_kwargs))
        scratch_init = _cpu_state(sc)
        save("adv_scratch_init", scratch_init)
    with timer("train:adv_scratch"):
        log(f"adversarial training from scratch ({p.adv_scratch.mode})")
        histories["adv_scratch"] = train(sc, xtr, ytr, p.adv_scratch, seed=seed + 2, progress=progress, desc="adv scratch")
    save("adv_scratch_final", _cpu_state(sc))
    models["adv_scratch"], inits["adv_scratch"] = sc, scratch_init
    init_files = {
        "clean": "checkpoints/clean_init.pt",
        "adv_ft_full": "checkpoints/clean_final.pt",
        "adv_scratch": "checkpoints/" + ("clean_init.pt" if p.scratch_same_init else "adv_scratch_init.pt"),
    }
    init_files.update({f"adv_ft_rank{r}": f"checkpoints/clean_final.pt, U = 0, V from 'V_init' in checkpoints/adv_ft_rank{r}_final.pt" for r in p.ranks})

    # evaluation
    norm, eps = p.threat
    threats = [(norm, eps)] + [t for t in DEFAULT_THREATS if t != (norm, eps)]
    n_pgd = min(p.eval_pgd_n, len(yte))
    results: dict[str, dict] = {}
    for name, m in models.items():
        with timer(f"eval:{name}"):
            log(f"evaluating {name}")
            if p.eval_amp is not None:
                m.amp = p.eval_amp
            res = {"clean_acc": clean_accuracy(m, xte, yte, p.eval_batch), "n_clean": len(yte), "pgd": {}, "n_pgd": n_pgd}
            for i, (tn, te) in enumerate(threats):  # restarts for the training threat, one for the others
                res["pgd"][threat_key(tn, te)] = pgd_accuracy(
                    m, xte[:n_pgd], yte[:n_pgd], tn, te, p.pgd_steps, p.pgd_restarts if i == 0 else 1, p.eval_batch, seed
                )
            res["ensemble"] = ensemble_attack(m, xte, yte, norm, eps, p.ensemble, p.eval_batch)
            if name != "clean":
                res["masking"] = masking_checks(m, xte, yte, norm, eps, p.masking, p.eval_batch)
            results[name] = res

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
                f"adv rank {max(p.ranks)}": effective_weights(models[f"adv_ft_rank{max(p.ranks)}"])[first],
                "adv from scratch": effective_weights(sc)[first]}
        key = threat_key(norm, eps)
        figs = {
            "filters": figures.plot_filters(filt, out / "figures" / "filters.png"),
            "share": figures.plot_share({k: v["layers"] for k, v in purif.items()}, out / "figures" / "purification_share.png"),
            "lowrank": figures.plot_lowrank(
                [{"rank": lowrank_info[k]["rank"], "clean_acc": results[k]["clean_acc"], "robust_acc": results[k]["pgd"][key]} for k in lowrank_info],
                {"clean_acc": results["adv_ft_full"]["clean_acc"], "robust_acc": results["adv_ft_full"]["pgd"][key]},
                out / "figures" / "lowrank.png",
            ),
            "radius": figures.plot_radius({k: v["masking"]["radius_curve"] for k, v in results.items() if "masking" in v}, out / "figures" / "radius.png", norm),
        }

    total = time.perf_counter() - t_start
    report = {
        "preset": p.name,
        "description": p.description,
        "config": asdict(p),
        "seed": seed,
        "data": ds.describe(),
        "runtime": rt.describe(),
        "threat": {"norm": norm, "eps": eps, "key": threat_key(norm, eps)},
        "timings_s": timer.seconds,
        "total_s": total,
        "budget_s": p.budget_s,
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
    if p.expects_gpu and rt.device.type != "cuda":
        notes.append(f"Preset {p.name!r} is meant for a GPU but ran on {rt.device}; timings are not comparable with the GPU budget.")
    if p.budget_s is not None:
        state = "within" if report["total_s"] <= p.budget_s else "OVER"
        notes.append(f"Wall time {report['total_s']:.0f}s, {state} the preset's budget of {p.budget_s:.0f}s "
                     f"(the budget is an estimate made without a GPU until a run on one records otherwise).")
    if p.scratch_same_init:
        notes.append("The from-scratch adversarial run starts from the same random weights as the clean run, so neurons can "
                     "be compared one to one; even so, neurons of independently trained nets need not stay aligned "
                     "(permutation symmetry): read per-neuron clean-vs-scratch numbers with that in mind "
                     "(the first layer also has a permutation-matched |cos|).")
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
          f"channels_last {rtm['channels_last']}, torch {rtm['torch']}",
          f"- threat model for training and the ensemble: {key}; total wall time {r['total_s']:.1f}s", ""]
    L += ["| run | mode | epochs | lr | batch | steps (PGD) | trainable params | train s | guard fired |", "|---|---|---|---|---|---|---|---|---|"]
    for name, h in r["training"].items():
        c = h["config"]
        L.append(f"| {name} | {c['mode']} | {len(h['epochs'])}/{c['epochs']} | {c['lr']} | {c['batch_size']} | "
                 f"{c['steps'] if c['mode'] == 'pgd' else '-'} | {h['trainable_params']:,} | {h['seconds']:.1f} | {h['stopped_early']} |")
    res = r["results"]
    keys = list(next(iter(res.values()))["pgd"])
    L += ["", "## Accuracy", "",
          f"Clean accuracy on {next(iter(res.values()))['n_clean']} test images; PGD-{cfg['pgd_steps']} with {cfg['pgd_restarts']} "
          f"restart(s) for {key} (1 for the other threat) on the first {next(iter(res.values()))['n_pgd']}; ensemble = APGD-CE → APGD-DLR-targeted "
          f"({cfg['ensemble']['n_targets']} targets) → Square ({cfg['ensemble']['square_queries']} queries) on the first {cfg['ensemble']['n']}.", "",
          "| model | clean | " + " | ".join(f"PGD {k}" for k in keys) + f" | ensemble {key} | after APGD-CE | after APGD-T |",
          "|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for name, x in res.items():
        e = x["ensemble"]
        L.append(f"| {name} | {_pct(x['clean_acc'])} | " + " | ".join(_pct(x["pgd"][k]) for k in keys)
                 + f" | {_pct(e['robust_acc'])} | {_pct(e['after']['apgd-ce'])} | {_pct(e['after']['apgd-t'])} |")
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
    L += ["", "## Timings (seconds, device synchronised)", "", "| stage | s |", "|---|---|"]
    L += [f"| {k} | {v:.2f} |" for k, v in r["timings_s"].items()]
    L += [f"| total | {r['total_s']:.2f} |", ""]
    return "\n".join(L)
