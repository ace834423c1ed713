"""The job of one sweep cell (run_cell) and its worker wrapper (cell_job).

Local worker processes and Dask pickle `cell_job` by reference, as sim.sweep.job.cell_job: keep this
module and that name stable (a worker imports sim.sweep.job to run it).
"""
from __future__ import annotations

import os
import platform
import threading
import time
import traceback

import numpy as np

from sim.common.threads import limit_blas_once, set_numba_threads
from sim.model.data import MARGIN_TAGS, margin_classes

from .spec import CELL_SCHEMA, LINEAR_MODELS, CellConfig, config_hash


def _row(model, metric, value, norm="", tau=None) -> dict:
    return {"model": model, "metric": metric, "norm": norm, "tau": None if tau is None else float(tau),
            "value": float(value)}


def _margin_rows(model, metric, ok, classes, norm, tau) -> list[dict]:
    """metric:m1 / :m2 / :m3+ rows: the mean of the boolean ok over each margin class present
    (sim.measures.by_margin)."""
    from sim.measures import by_margin

    return [_row(model, f"{metric}:{tag}", m["acc"], norm, tau)
            for tag, m in zip(MARGIN_TAGS, by_margin(ok, classes).values()) if m["n"]]


def linear_rows(train, test, wstar, direction, taus, norm: str) -> list[dict]:
    """The linear models' rows of a cell: linear_clean (logistic regression on the training set),
    linear_bayes (the direction M w*, no bias) and linear_best_robust (the robust logistic model
    refitted at each radius): clean_acc and the exact robust_acc at every radius on the whole test
    set, and robust_acc:m1 / :m2 / :m3+ by margin class |<w*, z>| of the same points (the margin
    windows of sim.sweep.phase need them). A pure function of the data: scripts/linear_by_margin.py
    recomputes it for the cells written before the margin rows existed."""
    from sim.lowerbound import LinearModel, fit_logistic, fit_robust_logistic

    Xt, yt = np.asarray(test.x, np.float64), np.asarray(test.y, np.float64)
    classes = margin_classes(test.z, wstar)
    rows = []

    def robust(name, model, t):
        ok = model.robust_margin(Xt, yt, t, norm) > 0  # exact: a linear model's worst case is closed-form
        rows.append(_row(name, "robust_acc", np.mean(ok), norm, t))
        rows.extend(_margin_rows(name, "robust_acc", ok, classes, norm, t))
    models = {"linear_clean": fit_logistic(train.x, train.y), "linear_bayes": LinearModel(direction, 0.0)}
    for name, model in models.items():
        rows.append(_row(name, "clean_acc", np.mean(yt * model.forward(Xt) > 0), norm, 0.0))
        for t in taus:
            robust(name, model, t)
    for t in taus:
        best, _ = fit_robust_logistic(train.x, train.y, t, norm)
        rows.append(_row("linear_best_robust", "clean_acc", np.mean(yt * best.forward(Xt) > 0), norm, t))
        robust("linear_best_robust", best, t)
    return rows


def add_linear_margin_rows(out, spec) -> dict:
    """Give the finished cells of `spec` in OUT that were written before linear_rows had them
    (schema sim.sweep.cell/2 before 2026-12-02) the linear models' robust_acc:m1 / :m2 / :m3+
    rows, then rebuild OUT/results.csv. The linear models are a pure function of the cell's
    data, so each cell's linear rows are recomputed from its config and must equal the stored
    ones (every clean_acc and robust_acc, to 1e-12) before its margin rows are added; a cell
    where they differ is left as it is and reported. result.json is rewritten atomically with an
    "amended" record. Returns {"added", "present", "mismatch", "no_linear"}: lists of hashes
    (mismatch: {hash: [differing rows]})."""
    from sim.common.files import atomic_write_json
    from sim.common.meta import git_commit
    from sim.model.data import Problem

    from .store import cell_dir, read_result, write_table

    def key(r):
        return r["model"], r["metric"], r["norm"], r["tau"]
    report = {"added": [], "present": [], "mismatch": {}, "no_linear": []}
    for h, point in {p.hash: p for p in spec.points}.items():
        res = read_result(out, h)
        if res is None:
            continue
        cfg = point.config
        if not cfg.linear_models:
            report["no_linear"].append(h)
            continue
        if any(r["model"] in LINEAR_MODELS and ":" in r["metric"] for r in res["rows"]):
            report["present"].append(h)
            continue
        problem = Problem.from_config(cfg.run.data)
        train, test = problem.train_set(), problem.test_set()
        new = [r for norm in cfg.norms for r in linear_rows(train, test, problem.wstar, problem.bayes_direction,
                                                            [x * cfg.tau(norm) for x in cfg.radii], norm)]
        stored = {key(r): r["value"] for r in res["rows"] if r["model"] in LINEAR_MODELS}
        fresh = {key(r): r["value"] for r in new if ":" not in r["metric"]}
        diff = [k for k in stored.keys() | fresh.keys()
                if k not in stored or k not in fresh or abs(stored[k] - fresh[k]) > 1e-12]
        if diff:
            report["mismatch"][h] = sorted(diff, key=str)[:5]
            continue
        res["rows"] = res["rows"] + [r for r in new if ":" in r["metric"]]
        res.setdefault("amended", []).append({"added": "linear models' robust_acc by margin class (linear_rows)",
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **git_commit()})
        atomic_write_json(cell_dir(out, h) / "result.json", res)
        report["added"].append(h)
    write_table(out, spec)
    return report


def run_cell(cfg: CellConfig) -> dict:
    """The job of one cell: train, attack, measure; returns the rows and the records.

    Rows: clean_net / adv_net (and control_net): clean_acc (tau 0), robust_acc and the
    per-attack accuracies 'attack:NAME' and masking_flag at every radius, certified_acc
    (if certify), the C2 measures (summarize_dense) and, for adv_net, the C4 measures
    (summarize_purification); linear_clean / linear_best_robust / linear_bayes: clean_acc
    and exact robust_acc at every radius, also by margin class (linear_rows); 'c5:MODEL_TRAINING@FN' rows of the lower-bound
    table. norm is the threat model ('' for the clean network's weight measures), tau the
    radius of the evaluation (0 for clean accuracy, None for weight measures).

    Adversarial (and control) training is verify's: run until the plateau criterion holds
    (sim.train.adversarial.run_adversarial); rows adv_steps / adv_converged (and
    control_steps / control_converged), clean_net train_steps / train_converged, the curves
    in the logs. By margin class |<w*, z>| in {1, 2, >=3}: robust_acc:m1 / :m2 / :m3+ and
    certified_acc:m1 ... beside every robust_acc / certified_acc, and n_eval:m1 ... (the
    counts, model 'eval_set'); ideal_net: the ideal purified network from M and w*
    (sim.model.network.ideal_network at the adversarial bias), attacked and certified at
    every radius; adv_net also carries the readable C4 measures
    (sim.measures.readable_purification).
    """
    from sim import attacks, measures
    from sim.common.meta import versions
    from sim.train.clean import data_summary, train_clean
    from sim.model.network import ideal_network
    from sim.lowerbound.atoms import (AtomPolynomial, lagrangian_certificate, step_coefficients, threat_box,
                                      threat_geometry)
    from sim.train.adversarial import run_adversarial

    t0, cpu0 = time.perf_counter(), time.process_time()
    timings = {}
    clean = train_clean(cfg.run, None, quiet=True)
    timings["clean_training"] = clean.seconds
    p, te = clean.problem, clean.test
    train = clean.train if clean.train is not None else p.train_set()
    Xe, ye = te.x[:cfg.n_eval], te.y[:cfg.n_eval]
    direction = p.bayes_direction
    classes = margin_classes(te.z[:cfg.n_eval], p.wstar)
    rows = [_row("clean_net", "clean_acc", clean.log.rows[-1]["test_acc"], tau=0.0),
            _row("clean_net", "train_steps", clean.convergence["steps"]),
            _row("clean_net", "train_converged", clean.convergence["converged"])]
    for i, tag in enumerate(MARGIN_TAGS):
        rows.append(_row("eval_set", f"n_eval:{tag}", np.sum(classes == i)))

    def per_margin(name, metric, ok, norm, t):
        rows.extend(_margin_rows(name, metric, ok, classes, norm, t))

    for k, v in measures.summarize_dense(clean.net, p.M, p.wstar, Xe, cfg.principal_threshold).items():
        rows.append(_row("clean_net", k, v))
    logs = {"clean": clean.log.rows}
    pictures, weights = {}, {}
    if cfg.save_weights:
        weights.update(W_init=clean.W_init, W_clean=clean.net.W)

    def curve(net, name, norm, taus, seed0, certified=None, per_attack=True):
        """Attacked rows at every radius; certified rows from sim.certify for the ReLU networks, or
        from certified(t) -> mask for another model (the per-atom polynomials)."""
        for j, t in enumerate(taus):
            rep = attacks.evaluate_robustness(net, Xe, ye, t, norm, direction=direction, pgd_steps=cfg.pgd_steps,
                                              pgd_restarts=cfg.pgd_restarts, random_draws=cfg.random_draws,
                                              seed=seed0 + j)
            rows.append(_row(name, "robust_acc", rep.robust_accuracy, norm, t))
            per_margin(name, "robust_acc", ~rep.broken, norm, t)
            rows.append(_row(name, "masking_flag", rep.masking_flag, norm, t))
            for a, v in (rep.per_attack.items() if per_attack else ()):
                rows.append(_row(name, f"attack:{a}", v, norm, t))
        if certified is not None:
            for t in taus:
                mask = certified(t)
                rows.append(_row(name, "certified_acc", np.mean(mask), norm, t))
                per_margin(name, "certified_acc", mask, norm, t)
        elif cfg.certify and cfg.run.model.activation == "relu":
            from sim.certify import certify_radii

            for t, res in zip(taus, certify_radii(net, Xe, ye, taus, norm, cfg.certify_method,
                                                  steps=cfg.certify_steps)):
                rows.append(_row(name, "certified_acc", res.certified_accuracy, norm, t))
                per_margin(name, "certified_acc", res.certified, norm, t)

    for ni, norm in enumerate(cfg.norms):
        tau = cfg.tau(norm)
        taus = [r * tau for r in cfg.radii]
        t1 = time.perf_counter()
        ar = run_adversarial(clean, cfg, norm, cfg.adv_kind, True, track=False)
        adv = ar.net
        timings[f"adv_training_{norm}"] = time.perf_counter() - t1
        logs[f"adv_{norm}"] = ar.log.rows
        logs[f"adv_curve_{norm}"] = [ar.convergence]  # one line: the record with its curve
        rows.append(_row("adv_net", "adv_steps", ar.convergence["steps"], norm))
        rows.append(_row("adv_net", "adv_converged", ar.convergence["converged"], norm))
        rows.append(_row("adv_net", "adv_diverged", ar.convergence.get("diverged", False), norm))
        rows.append(_row("adv_net", "adv_retried", "retry" in ar.convergence, norm))
        t1 = time.perf_counter()
        rows.append(_row("adv_net", "clean_acc", adv.accuracy(te.x, te.y), norm, 0.0))
        curve(clean.net, "clean_net", norm, taus, 1000 * ni)
        curve(adv, "adv_net", norm, taus, 1000 * ni + 100)
        ideal = ideal_network(p.M, p.wstar, cfg.adv_beta if cfg.adv_beta is not None else clean.net.beta,
                              dtype=clean.net.W.dtype)
        curve(ideal, "ideal_net", norm, taus, 1000 * ni + 300)
        timings[f"attacks_{norm}"] = time.perf_counter() - t1
        for k, v in measures.summarize_dense(adv, p.M, p.wstar, Xe, cfg.principal_threshold).items():
            rows.append(_row("adv_net", k, v, norm))
        for k, v in measures.summarize_purification(clean.net.W, adv.W, clean.W_init, p.M,
                                                    cfg.principal_threshold).items():
            rows.append(_row("adv_net", k, v, norm))
        for k, v in measures.readable_purification(clean.net.W, adv.W, p.M, cfg.principal_threshold).items():
            if v is not None:
                rows.append(_row("adv_net", k, v, norm))
        t1 = time.perf_counter()
        geometry = threat_geometry(p.M, norm) if cfg.atom_degrees else None  # once, not at every radius
        for P in cfg.atom_degrees:  # the hand-built per-atom polynomials: attacked, certified by the Lagrangian bound
            poly = AtomPolynomial(p.M, p.wstar, step_coefficients(P))

            def certified(t, poly=poly, norm=norm):
                box, radius2 = threat_box(p.M, t, norm, geometry)
                return lagrangian_certificate(poly, Xe, ye, t, box=box, radius2=radius2) > 0
            rows.append(_row(f"atom_poly{P}", "clean_acc", np.mean(np.asarray(te.y, np.float64) * poly.forward(
                np.asarray(te.x, np.float64)) > 0), norm, 0.0))
            curve(poly, f"atom_poly{P}", norm, taus, 1000 * ni + 400 + 10 * P, certified=certified, per_attack=False)
        if cfg.atom_degrees:
            timings[f"atom_polys_{norm}"] = time.perf_counter() - t1
        if cfg.control:
            cr = run_adversarial(clean, cfg, norm, "random", True, track=False, cap=cfg.control_steps or cfg.adv_steps)
            ctrl = cr.net
            logs[f"control_curve_{norm}"] = [cr.convergence]
            rows.append(_row("control_net", "control_steps", cr.convergence["steps"], norm))
            rows.append(_row("control_net", "control_converged", cr.convergence["converged"], norm))
            rows.append(_row("control_net", "clean_acc", ctrl.accuracy(te.x, te.y), norm, 0.0))
            curve(ctrl, "control_net", norm, [tau], 1000 * ni + 200)
        if cfg.linear_models:
            t1 = time.perf_counter()
            rows += linear_rows(train, te, p.wstar, direction, taus, norm)
            timings[f"linear_{norm}"] = time.perf_counter() - t1
        if cfg.lower_bound:
            from sim.lowerbound import lower_bound_table

            t1 = time.perf_counter()
            for r in cfg.lower_bound_radii:
                for lb in lower_bound_table(p, train, te, r * tau, norm, scale=cfg.lower_bound_scale,
                                            n_eval=cfg.n_eval, quiet=True, n_factors=cfg.lower_bound_factors,
                                            model_cfg=cfg.run.model):
                    fct = "" if lb["n_train"] is None else f"@{lb['n_train'] // len(train.y)}N"
                    name = f"c5:{lb['model']}_{lb['training']}{fct}"
                    rows.append(_row(name, "clean_acc", lb["clean_acc"], norm, 0.0))
                    rows.append(_row(name, "robust_acc", lb["robust_acc"], norm, r * tau))
            timings[f"lower_bound_{norm}"] = time.perf_counter() - t1
        if ni == 0:
            pictures = measures.dictionary_picture(measures.coefficients(clean.net.W, p.M),
                                                   measures.coefficients(adv.W, p.M))
        if cfg.save_weights:
            weights[f"W_adv_{norm}"] = adv.W
    timings["total"] = time.perf_counter() - t0
    timings["cpu"] = time.process_time() - cpu0  # CPU seconds of the worker process (all its threads)
    return {"status": "ok", "schema": CELL_SCHEMA, "hash": config_hash(cfg), "config": cfg.to_dict(), "rows": rows,
            "data": data_summary(train, te), "timings": timings, "versions": versions(), "host": platform.node(),
            "logs": logs, "pictures": pictures, "weights": weights}


_JOB_LOCK = threading.Lock()


def cell_job(cfg_dict: dict, threads: int) -> dict:
    """Run one cell in a worker (local process or Dask); never raises: an error becomes a
    failure record. One cell at a time per process (Dask workers may have several threads)."""
    t0 = time.perf_counter()
    with _JOB_LOCK:
        try:
            _inject_fault(cfg_dict)
            limit_blas_once()
            set_numba_threads(threads)
            return run_cell(CellConfig.from_dict(cfg_dict))
        except BaseException as exc:  # noqa: BLE001 - a cell's failure must not end the sweep
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                    "host": platform.node(), "seconds": time.perf_counter() - t0}


FAULT_ENV = "SIM_SWEEP_INJECT_FAULT"


def _inject_fault(cfg_dict: dict) -> None:
    """Fault injection for the tests: SIM_SWEEP_INJECT_FAULT='HASH:raise' makes that cell's
    job raise, 'HASH:exit' kills its worker process (as a segfault or the OOM killer would)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    h = config_hash(CellConfig.from_dict(cfg_dict))
    for item in spec.split(","):
        target, _, kind = item.partition(":")
        if target == h:
            if kind == "exit":
                os._exit(13)
            raise RuntimeError(f"injected fault in cell {h}")


def _init_worker(threads: int, parent: int) -> None:
    limit_blas_once()
    set_numba_threads(threads)

    def watchdog():  # a worker whose driver was killed (SIGKILL) exits instead of running on
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
