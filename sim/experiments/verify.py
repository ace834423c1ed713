"""`python -m sim verify`: the main job. Clean training, attacks, adversarial training from
the clean weights, purification measures, then a table of the claims of SPEC section 4
(id, what is measured, value, threshold, holds), written with the config and versions to
verify.json, with report.md and the figures beside it.

Each threat model (l2, and l_inf with the dense orthogonal dictionary) gets its own
radius, its own adversarial training (FGM / FGSM, the paper's case) and its own random-
noise control run. A claim that does not hold is reported with its numbers; nothing here
is tuned to pass.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim import attacks, measures
from sim.claims import CLAIMS, Claim, judge
from sim.common.files import atomic_save_npz, atomic_write_json
from sim.common.meta import versions
from sim.common.outdir import prepare_out_dir
from sim.common.threads import limit_blas_once, set_numba_threads
from sim.model.config import (_NESTED, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, _check_choice,
                              _check_int, _check_real, _Frozen)
from sim.model.data import MARGIN_CLASSES, margin_classes
from sim.model.network import TwoLayerNet, ideal_network, ideal_radius
from sim.train.adversarial import run_adversarial
from sim.train.clean import CleanRun, train_clean


@dataclass(frozen=True)
class VerifyConfig(_Frozen):
    """What `verify` runs. Defaults are the documented regime (README, 'The regime').

    tau_l2, tau_linf: the radii of the two threat models. adv_*: adversarial training
    from the clean weights (kind 'fgm' is FGM in l2 and FGSM in l_inf; mode 'online'
    draws fresh samples each step), run until the plateau criterion of sim.train.plateau
    holds: the robust accuracy of FGM + the dense attack on adv_holdout held-out test
    points (test[n_eval : n_eval + adv_holdout], never attacked in the final evaluation)
    moved by < adv_plateau_tol over the last quarter of the run, checked every
    adv_check_every steps, from max(adv_min_steps, adv_beta_ramp) on, capped at adv_steps
    (a capped run is reported as not converged); adv_plateau=False runs adv_steps steps
    and judges the curve at the end. adv_warmup: linear learning-rate warm-up steps;
    adv_lr_decay: inverse-time decay after it (0: none). adv_tau_ramp: the training radius grows
    linearly to tau over the first adv_tau_ramp steps (0: full radius from the start; stopping
    waits for the ramp). adv_retry_tau_ramp: a run that diverged is run once more from the clean
    weights with the radius ramped over this many steps (0: no retry; see
    sim.train.adversarial.run_adversarial). control_steps: the cap of the
    random-noise control run (None: adv_steps), which stops by the same criterion.
    n_eval: test points attacked. pgd_steps x
    pgd_restarts: the PGD of the robust evaluation. radii: multiples of tau for the
    robust-accuracy-against-radius figure. principal_threshold: see sim.measures.
    lower_bound: run the C5 models (sim.lowerbound) at budget lower_bound_scale.
    adv_beta: if set (relative bias only), the bias factor grows linearly from the clean
    network's beta to adv_beta over the first adv_beta_ramp adversarial steps (the
    'schedule' bias mode); None keeps the clean network's bias.
    certify: sound lower bounds (sim.certify) next to every attacked robust accuracy;
    where they differ by more than 10 points the exact verifier (sim.certify.exact) examines up to
    exact_samples gap points, exact_time_limit seconds each.
    """

    run: RunConfig = field(default_factory=lambda: RunConfig(
        DataConfig(k=3.0, sparsity="exact"), ModelConfig(init_scale=4e-5, beta=0.1),
        TrainConfig(lr=1.0, steps=300, snapshots=(0,))))
    norms: tuple = ("l2", "linf")
    tau_l2: float = 0.25
    tau_linf: float = 0.02
    adv_kind: str = "fgm"
    adv_lr: float = 1.0
    adv_steps: int = 2000
    adv_mode: str = "online"
    adv_batch: int = 1024
    adv_measure_every: int = 50
    adv_warmup: int = 50
    adv_lr_decay: float = 0.0
    adv_plateau: bool = True
    adv_check_every: int = 25
    adv_min_steps: int = 200
    adv_plateau_tol: float = 0.005
    adv_holdout: int = 1000
    adv_beta: float | None = 0.2
    adv_beta_ramp: int = 100
    adv_tau_ramp: int = 0
    adv_retry_tau_ramp: int = 0
    control_steps: int | None = None
    n_eval: int = 1000
    pgd_steps: int = 50
    pgd_restarts: int = 5
    radii: tuple = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    principal_threshold: float = 0.5
    lower_bound: bool = True
    lower_bound_scale: float = 1.0
    certify: bool = True
    exact_samples: int = 5
    exact_time_limit: float = 10.0

    def __post_init__(self):
        if not isinstance(self.run, RunConfig):
            raise ConfigError(f"run={self.run!r} is invalid: allowed a RunConfig")
        norms = tuple(self.norms)
        if not norms or any(n not in attacks.NORMS for n in norms):
            raise ConfigError(f"norms={norms!r} is invalid: allowed a non-empty subset of ('l2', 'linf')")
        object.__setattr__(self, "norms", norms)
        _check_real("tau_l2", self.tau_l2, lo=0, lo_open=True)
        _check_real("tau_linf", self.tau_linf, lo=0, lo_open=True)
        _check_choice("adv_kind", self.adv_kind, ("fgm", "pgd"))
        _check_real("adv_lr", self.adv_lr, lo=0, lo_open=True)
        _check_int("adv_steps", self.adv_steps, lo=1)
        _check_choice("adv_mode", self.adv_mode, ("full_batch", "online"))
        _check_int("adv_batch", self.adv_batch, lo=1)
        _check_int("adv_measure_every", self.adv_measure_every, lo=1)
        _check_int("adv_warmup", self.adv_warmup, lo=0)
        _check_real("adv_lr_decay", self.adv_lr_decay, lo=0)
        if not isinstance(self.adv_plateau, bool):
            raise ConfigError(f"adv_plateau={self.adv_plateau!r} is invalid: allowed true or false")
        _check_int("adv_check_every", self.adv_check_every, lo=1)
        _check_int("adv_min_steps", self.adv_min_steps, lo=0)
        _check_real("adv_plateau_tol", self.adv_plateau_tol, lo=0, lo_open=True)
        _check_int("adv_holdout", self.adv_holdout, lo=1)
        if self.adv_beta is not None:
            _check_real("adv_beta", self.adv_beta, lo=0)
            if self.run.model.bias not in ("relative", "schedule"):
                raise ConfigError(f"adv_beta={self.adv_beta!r} is invalid with run.model.bias="
                                  f"{self.run.model.bias!r}: allowed only with 'relative' or 'schedule' biases")
        _check_int("adv_beta_ramp", self.adv_beta_ramp, lo=1)
        _check_int("adv_tau_ramp", self.adv_tau_ramp, lo=0)
        _check_int("adv_retry_tau_ramp", self.adv_retry_tau_ramp, lo=0)
        if self.control_steps is not None:
            _check_int("control_steps", self.control_steps, lo=1)
        _check_int("n_eval", self.n_eval, lo=1, hi=self.run.data.n_test)
        if self.run.data.n_test - self.n_eval < 100:
            raise ConfigError(f"n_eval={self.n_eval!r} is invalid: allowed at most run.data.n_test - 100 "
                              f"(= {self.run.data.n_test - 100}): the plateau criterion needs >= 100 held-out test"
                              " points beyond the evaluated ones (adv_holdout)")
        _check_int("pgd_steps", self.pgd_steps, lo=1)
        _check_int("pgd_restarts", self.pgd_restarts, lo=1)
        _check_real("principal_threshold", self.principal_threshold, lo=0, hi=1, lo_open=True)
        _check_real("lower_bound_scale", self.lower_bound_scale, lo=0, lo_open=True)
        _check_int("exact_samples", self.exact_samples, lo=0)
        _check_real("exact_time_limit", self.exact_time_limit, lo=0, lo_open=True)
        object.__setattr__(self, "radii", tuple(self.radii))

    def tau(self, norm: str) -> float:
        return self.tau_l2 if norm == "l2" else self.tau_linf


def quick_config() -> VerifyConfig:
    """`verify --quick`: the same pipeline on a small problem, under a minute on 2 cores."""
    return VerifyConfig(
        run=RunConfig(DataConfig(d=64, k=2.0, n_train=2000, n_test=1000), ModelConfig(init_scale=1e-4),
                      TrainConfig(lr=1.0, steps=150, snapshots=(0,))),
        tau_l2=0.3, tau_linf=0.04, adv_steps=200, adv_batch=2000, adv_measure_every=20, adv_check_every=10,
        adv_min_steps=60, adv_beta_ramp=50, adv_warmup=20, adv_holdout=500, n_eval=300,
        pgd_steps=20, pgd_restarts=2, radii=(0.5, 1.0, 1.5), lower_bound_scale=0.1)


_NESTED[("VerifyConfig", "run")] = RunConfig  # so VerifyConfig.from_dict builds the nested RunConfig


def _robust(model, X, y, tau, norm, direction, vc: VerifyConfig, seed=0):
    return attacks.evaluate_robustness(model, X, y, tau, norm, direction=direction, pgd_steps=vc.pgd_steps,
                                       pgd_restarts=vc.pgd_restarts, seed=seed)


def _report_dict(rep: attacks.RobustReport, classes) -> dict:
    """A robust-accuracy entry; by_margin: the attacked (and, after _certify_into, the
    certified) accuracy per margin class |<w*, z>| in {1, 2, >=3} with the counts."""
    return {"clean_acc": rep.clean_accuracy, "robust_acc": rep.robust_accuracy, "per_attack": rep.per_attack,
            "masking_flag": rep.masking_flag, "masking_note": rep.masking_note,
            "by_margin": {"attacked": measures.by_margin(~rep.broken, classes)}}


def _certify_into(entry: dict, net, X, y, tau, norm, rep, vc: VerifyConfig, classes, diagnose: bool = True) -> None:
    """Add certified_acc (and its by_margin), the certificate's time and, for a gap > 10
    points (and diagnose), the exact verifier's diagnosis (bound loose or attack weak) to a
    robust-accuracy entry."""
    from sim.certify import certify, certify_gap_diagnosis

    cert = certify(net, X, y, tau, norm, focus=~rep.broken)
    entry["_certified_mask"] = cert.certified  # for masks_{norm}.npz; not in verify.json
    entry["certified_acc"] = cert.certified_accuracy
    entry["by_margin"]["certified"] = measures.by_margin(cert.certified, classes)
    entry["certify_seconds"] = cert.seconds
    entry["certified_but_attacked"] = int(np.sum(cert.certified & rep.broken))
    gap = rep.robust_accuracy - cert.certified_accuracy
    entry["gap"] = gap
    if diagnose and gap > 0.10 and vc.exact_samples > 0:
        t = time.perf_counter()
        diag = certify_gap_diagnosis(net, X, y, tau, norm, rep.broken, n_exact=vc.exact_samples, cert=cert,
                                     time_limit=vc.exact_time_limit)
        entry["gap_diagnosis"] = {k: v for k, v in diag.items() if isinstance(v, (int, float, str, bool))}
        entry["exact_seconds"] = time.perf_counter() - t


def robust_curve(net: TwoLayerNet, clean: CleanRun, vc: VerifyConfig, norm: str, n=300):
    """Robust accuracy (best of FGM, PGD-20x2 and dense) at each radius in vc.radii x tau."""
    te = clean.test
    X, y = te.x[:n], te.y[:n]
    out = []
    for r in vc.radii:
        tau = r * vc.tau(norm)
        rep = attacks.evaluate_robustness(net, X, y, tau, norm, direction=clean.problem.bayes_direction,
                                          pgd_steps=20, pgd_restarts=2, random_draws=2)
        out.append({"tau": tau, "robust_acc": rep.robust_accuracy})
    return out


NETS = ("clean", "adv", "control")


def save_nets(path: Path, nets: dict, W_init: np.ndarray) -> None:
    """weights_{norm}.npz: for each network (clean, adv, control) what rebuilds it: W_NAME,
    b_NAME, beta_NAME and model_NAME (its ModelConfig as JSON), and W_init."""
    arrays = {"W_init": W_init}
    for name, net in nets.items():
        arrays.update({f"W_{name}": net.W, f"b_{name}": net.b, f"beta_{name}": np.float64(net.beta),
                       f"model_{name}": np.array(json.dumps(net.model.to_dict()))})
    atomic_save_npz(path, **arrays)


def load_nets(path: Path) -> dict:
    """The networks of a weights_{norm}.npz written by verify: {'clean': TwoLayerNet, 'adv': ..., 'control': ...}."""
    from sim.model.config import ModelConfig

    nets = {}
    with np.load(path) as z:
        for name in NETS:
            if f"model_{name}" in z.files:
                model = ModelConfig.from_dict(json.loads(str(z[f"model_{name}"])))
                nets[name] = TwoLayerNet(z[f"W_{name}"], model, z[f"b_{name}"], float(z[f"beta_{name}"]))
    return nets


def _save_masks(path: Path, tm: dict, reps: dict, ye: np.ndarray) -> None:
    """masks_{norm}.npz: for the first n_eval test points (index), per network, broken_NAME
    (some attack succeeded or the point is misclassified) and, where certified, certified_NAME."""
    arrays = {"index": np.arange(len(ye)), "y": ye}
    for name, key in (("clean", "clean_net"), ("adv", "adv_net"), ("control", "random_control_net")):
        arrays[f"broken_{name}"] = reps[name].broken
        mask = tm[key].pop("_certified_mask", None)
        if mask is not None:
            arrays[f"certified_{name}"] = mask
    atomic_save_npz(path, **arrays)


RUN_FILES = ("verify.json", "report.md", "clean", "weights_l2.npz", "weights_linf.npz")  # before run.json


def run_verify(vc: VerifyConfig, out: Path, quiet: bool = False, *, resume: bool = False,
               overwrite: bool = False, workers: int | None = None) -> dict:
    """The whole pipeline; writes verify.json, report.md, figures/, weights_{norm}.npz
    (sim.experiments.verify.load_nets rebuilds the networks) and masks_{norm}.npz under out.

    out must be new or empty (or hold a verify run of this config with resume=True: its clean
    training is reused, resumed from its last snapshot if cut short, and every later stage
    is run again; or any run with overwrite=True: cleared first). See sim.common.outdir.
    workers: processes for the threat models (None: one per threat model, at most the cores;
    1: one after the other in this process); the numbers do not depend on it (BLAS runs on one
    thread here and in the workers; the Numba kernels give the same bits for any thread count).
    """
    limit_blas_once()
    t0 = time.perf_counter()
    out = Path(out)
    resuming = prepare_out_dir(out, "sim verify", vc.to_dict(), resume=resume, overwrite=overwrite,
                               run_files=RUN_FILES)
    timings = {}
    clean = _clean_stage(vc, out / "clean", quiet, resuming)
    timings["clean_training"] = clean.seconds
    p, te = clean.problem, clean.test
    Xe, ye = te.x[:vc.n_eval], te.y[:vc.n_eval]
    classes = margin_classes(te.z[:vc.n_eval], p.wstar)
    ideal_beta = vc.adv_beta if vc.adv_beta is not None else clean.net.beta
    ideal = ideal_network(p.M, p.wstar, ideal_beta, dtype=clean.net.W.dtype)
    active = np.count_nonzero(te.z[:vc.n_eval], axis=1)
    results = {"clean": {"test_acc": clean.log.rows[-1]["test_acc"],
                         "dense": measures.summarize_dense(clean.net, p.M, p.wstar, Xe, vc.principal_threshold),
                         "training": clean.convergence},
               "margin_classes": {name: int(np.sum(classes == i)) for i, name in enumerate(MARGIN_CLASSES)},
               "ideal_net": {"beta": ideal_beta, "description": "one neuron per atom (w*_j M_j), relative bias beta "
                             "(the adversarial bias), output weights +1: sim.model.network.ideal_network",
                             "radius_margin1_median_atoms": ideal_radius(ideal_beta, int(np.median(active[classes == 0])))
                             if np.any(classes == 0) else None},
               "threat_models": {}}
    claims: list[Claim] = []
    acc = results["clean"]["test_acc"]
    claims.append(judge("C1-clean", "", "clean network: clean test accuracy", acc))
    claims.append(judge("C2-dense", "", "clean network: cosine of the neurons' dense parts with w* (mean)",
                        results["clean"]["dense"]["dense_cos_mean"]))
    for norm, (tm, norm_claims, norm_timings) in _threat_models(vc, clean, ideal, classes, results["clean"]["dense"],
                                                                out, quiet, workers):
        results["threat_models"][norm] = tm
        claims += norm_claims
        timings.update(norm_timings)
    timings["total"] = time.perf_counter() - t0
    doc = {"claims": [c.to_dict() for c in claims], "config": vc.to_dict(), "versions": versions(),
           "results": results, "timings": timings}
    from .report import write_report

    write_report(doc, clean, out)
    atomic_write_json(out / "verify.json", doc)
    return doc


def _threat_model(norm: str, vc: VerifyConfig, clean: CleanRun, ideal: TwoLayerNet, classes, clean_dense: dict,
                  out: Path, quiet: bool):
    """One threat model: attacks, adversarial training and its control, certificates, measures,
    the C5 table; writes weights_{norm}.npz and masks_{norm}.npz; returns (tm, claims, timings)."""
    p, te = clean.problem, clean.test
    Xe, ye = te.x[:vc.n_eval], te.y[:vc.n_eval]
    timings, claims = {}, []
    tau = vc.tau(norm)
    tm = {"tau": tau}
    t1 = time.perf_counter()
    rep_clean = _robust(clean.net, Xe, ye, tau, norm, p.bayes_direction, vc)
    tm["clean_net"] = _report_dict(rep_clean, classes)
    t2 = time.perf_counter()
    ar = run_adversarial(clean, vc, norm, vc.adv_kind, quiet)
    timings[f"adv_training_{norm}"] = time.perf_counter() - t2
    adv = ar.net
    rep_adv = _robust(adv, Xe, ye, tau, norm, p.bayes_direction, vc, seed=1)
    tm["adv_net"] = _report_dict(rep_adv, classes)
    tm["adv_training"] = ar.convergence
    tm["adv_trace"] = ar.trace
    t2 = time.perf_counter()
    cr = run_adversarial(clean, vc, norm, "random", quiet, track=False, cap=vc.control_steps or vc.adv_steps)
    timings[f"control_training_{norm}"] = time.perf_counter() - t2
    control = cr.net
    rep_ctrl = _robust(control, Xe, ye, tau, norm, p.bayes_direction, vc, seed=2)
    tm["random_control_net"] = _report_dict(rep_ctrl, classes)
    tm["control_training"] = cr.convergence
    rep_ideal = _robust(ideal, Xe, ye, tau, norm, p.bayes_direction, vc, seed=3)
    tm["ideal_net"] = _report_dict(rep_ideal, classes)
    if vc.certify and clean.net.model.activation == "relu":
        t2 = time.perf_counter()
        # the control only has to be broken (its claim reads the attacks): no exact diagnosis of its gap
        for key, net_, rep_ in (("clean_net", clean.net, rep_clean), ("adv_net", adv, rep_adv),
                                ("random_control_net", control, rep_ctrl), ("ideal_net", ideal, rep_ideal)):
            _certify_into(tm[key], net_, Xe, ye, tau, norm, rep_, vc, classes, diagnose=key != "random_control_net")
        timings[f"certify_{norm}"] = time.perf_counter() - t2
    tm["adv_dense"] = measures.summarize_dense(adv, p.M, p.wstar, Xe, vc.principal_threshold)
    tm["purification"] = measures.summarize_purification(clean.net.W, adv.W, clean.W_init, p.M,
                                                         vc.principal_threshold)
    tm["purification"].update(measures.readable_purification(clean.net.W, adv.W, p.M, vc.principal_threshold))
    tm["curve_clean"] = robust_curve(clean.net, clean, vc, norm)
    tm["curve_adv"] = robust_curve(adv, clean, vc, norm)
    timings[f"threat_{norm}"] = time.perf_counter() - t1
    if vc.lower_bound:
        from sim.lowerbound import lower_bound_table

        t2 = time.perf_counter()
        tm["lower_bound"] = lower_bound_table(p, clean.train, te, tau, norm, scale=vc.lower_bound_scale,
                                              n_eval=vc.n_eval, model_cfg=vc.run.model, quiet=quiet)
        timings[f"lower_bound_{norm}"] = time.perf_counter() - t2
    save_nets(out / f"weights_{norm}.npz", {"clean": clean.net, "adv": adv, "control": control}, clean.W_init)
    _save_masks(out / f"masks_{norm}.npz", tm, {"clean": rep_clean, "adv": rep_adv, "control": rep_ctrl}, ye)
    claims += threat_claims(norm, tau, tm, clean_dense, vc)
    if vc.lower_bound:
        claims += lower_bound_claims(norm, tau, tm)
    return tm, claims, timings


def _threat_job(norm, vc, clean, ideal, classes, clean_dense, out, threads):
    """_threat_model in a worker process: BLAS on one thread, Numba on `threads` (the kernels
    and sim.model.linalg give the same bits for any count), no progress bars."""
    limit_blas_once()
    set_numba_threads(threads)
    return _threat_model(norm, vc, clean, ideal, classes, clean_dense, out, True)


def _threat_models(vc: VerifyConfig, clean: CleanRun, ideal, classes, clean_dense, out: Path, quiet: bool,
                   workers: int | None):
    """(norm, (tm, claims, timings)) for each threat model, in vc.norms order: side by side in
    worker processes (workers: how many; None: one per threat model, at most the cores), or
    in this process for workers=1. Every stage is single-threaded BLAS + thread-count-independent
    kernels, so the numbers do not depend on the choice."""
    from sim.common.threads import available_cores

    n = len(vc.norms)
    cores = available_cores()
    workers = min(n, cores) if workers is None else min(int(workers), n)
    if workers <= 1:
        for norm in vc.norms:
            yield norm, _threat_model(norm, vc, clean, ideal, classes, clean_dense, out, quiet)
        return
    import dataclasses
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, cores // workers)
    sent = dataclasses.replace(clean, log=None, snapshots={})  # the open metrics log does not travel (nor is it used)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futures = {norm: ex.submit(_threat_job, norm, vc, sent, ideal, classes, clean_dense, out, threads)
                   for norm in vc.norms}
        for norm in vc.norms:
            res = futures[norm].result()
            if not quiet:
                print(f"verify: threat model {norm} done ({time.perf_counter() - t0:.0f} s, {workers} worker "
                      "processes)", file=sys.stderr, flush=True)
            yield norm, res


def _clean_stage(vc: VerifyConfig, out: Path, quiet: bool, resuming: bool) -> CleanRun:
    """Clean training into out/clean; resuming: from its last snapshot (a finished run
    resumes at its last step: only the final evaluation is redone)."""
    return train_clean(vc.run, out, quiet=quiet, resume=resuming)


def threat_claims(norm, tau, tm, clean_dense, vc) -> list[Claim]:
    """C1-C4 and the random-noise control at one threat model (thresholds: sim.claims.CLAIMS)."""
    tag = f"{norm} tau={tau:g}"
    sfx = f"-{norm}"
    c, a, r = tm["clean_net"], tm["adv_net"], tm["random_control_net"]
    pur, ad = tm["purification"], tm["adv_dense"]
    attack_set = f"best of PGD-{vc.pgd_steps}x{vc.pgd_restarts}, FGM, dense, random"
    ratio = abs(clean_dense["dense_cos_mean"]) / max(abs(ad["dense_cos_mean"]), 1e-12)
    init_corr = max(pur["init_corr_clean"], pur["init_corr_adv"])
    kind = vc.adv_kind.upper()
    rec = tm.get("adv_training")
    if rec is not None:  # the claims table says how far training went, loudly when the cap was hit
        kind += (f" ({rec['steps']} steps, converged)" if rec["converged"]
                 else f" (DIVERGED after {rec['steps']} steps: held-out clean accuracy "
                      f"{rec['held_out_clean_acc']:.3f})" if rec.get("diverged")
                 else f" (NOT CONVERGED: cap of {rec['steps']} steps hit)")
    return [
        judge("C1-robust", sfx, f"clean network: robust accuracy at {tag} ({attack_set})", c["robust_acc"]),
        judge("C3-robust", sfx, f"{kind}-trained network: robust accuracy at {tag} ({attack_set})", a["robust_acc"]),
        *([judge("C3-certified", sfx, f"{kind}-trained network: certified robust accuracy at {tag}"
                 " (sound lower bound: any perturbation in the ball)", a["certified_acc"])]
          if "certified_acc" in a else []),
        judge("C3-clean", sfx, f"{kind}-trained network: clean accuracy", a["clean_acc"]),
        judge("C3-masking", sfx, "no gradient masking: non-gradient attacks break <= 1 % of points FGM and PGD miss"
              " (clean and adversarial networks)", float(c["masking_flag"] or a["masking_flag"])),
        judge("C2C4-align", sfx, CLAIMS["C2C4-align"].measured, ratio),
        judge("C4-purified", sfx, CLAIMS["C4-purified"].measured, pur["purified_share"]),
        judge("C4-init", sfx, CLAIMS["C4-init"].measured, init_corr),
        judge("control", sfx, CLAIMS["control"].measured, r["robust_acc"]),
    ]


def lower_bound_claims(norm, tau, tm) -> list[Claim]:
    """C5 split by class (sim.lowerbound.claims.c5_claims, thresholds from sim.claims: C5-linear,
    C5-poly-degP, C5-ntk): each class judged on its best member, hand-built members included."""
    from sim.lowerbound.claims import c5_claims

    return [Claim(c["id"], c["description"], c["value"], c["threshold"], c["holds"])
            for c in c5_claims(tm["lower_bound"], norm, tau, tm["adv_net"]["robust_acc"])]
