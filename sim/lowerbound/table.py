"""Claim C5, the complexity lower bound: the table model x training -> clean and robust accuracy.

`lower_bound_table` trains the low-complexity models on the same data as the network,
at N and 10 N samples, and measures them at the same radius with the same attacks:

  linear   clean (logistic regression), adversarial (PGD-trained from the clean weights),
           robust_logistic (the exact minimiser of the robust logistic loss: the best
           robust *loss*, which at l2 0.25 is w = 0 and robust accuracy 0),
           best_accuracy (the linear model of best exact robust *accuracy* found:
           linear.fit_robust_accuracy from M w*, the trained rows and robust-logistic
           minimisers at 0.5 and 2 tau, never worse than M w* beyond selection noise),
           bayes (M w*); robust accuracy exact (closed form y f(x) - tau |w|_*), attacked
           as a cross-check;
  polyP    degree-P polynomial kernel machines on landmarks (sim.lowerbound.polynomial),
           clean and adversarial (`degrees`); and, for P in `atom_degrees`, per-atom
           polynomials f(x) = sum_j a_j p(<m_j, x>) (sim.lowerbound.atoms): 'oracle'
           (P = 3: a = w*, p = t^3, hand-built from M and w*), 'oracle_step' (P >= 5: a = w*,
           p the flat step of degree P; t^P is far weaker there, measured at d = 256, l2
           0.25: t^5 37.5 %, t^7 27 % against 100 % for the steps) and 'atom_adversarial'
           (c and a trained by PGD adversarial training from p = t^P, a = 0, on the
           largest training set). Per-atom rows carry certified_acc, a sound lower bound
           (atoms.lagrangian_certificate; exact image of the ball for orthogonal M in l2, a
           relaxation in l_inf);
  ntk      the linearised network at its initialisation (sim.lowerbound.ntk), clean and
           adversarial, at N and 10 N.

Every row has `class` (linear, polyP, ntk): the class it is a member of, for the split
claims of sim.lowerbound.claims.

Attacked robust accuracy is sim.attacks.evaluate_robustness (FGM, PGD with restarts, the
dense attack along problem.bayes_direction, random noise) on the first n_eval test
points. f_lin of the NTK is discontinuous (its gates jump), so its exact gradient hides
the jumps; it is attacked twice, through the exact gradient and through a smooth
relaxation of the gates (SmoothedNTK), and a point counts as robust only if both leave
it standing. Its adversarial training uses the relaxed gradient as well (training on
the masked gradient gives a model that only looks robust).

Parity. The data are symmetric: (x, y) and (-x, -y) are equally likely. So for any f,
robust_acc(f) <= (1 + robust_acc(f_odd)) / 2, f_odd(x) = (f(x) - f(-x))/2: if both x and -x
are robust, then for every delta, y f_odd(x + delta) = (y f(x + delta) + (-y) f(-x - delta))/2 > 0.
A constant reaches 1/2 without reading x, so a class with constants (or even parts) is
judged against 1/2, and its robustness beyond chance is that of its odd part. parity
'odd' (default) restricts every model to odd functions, like the network (f(-x) = -f(x),
no output bias); then robust accuracy near 0, not 1/2, is the failure the claim predicts.
parity 'full' keeps intercepts / even powers.

Costs (d = 256, 2 shared cores): see `Budget`; the 10 N runs cost the same per step as
N (mini-batch training); the timings measured are in the README (issue 13).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np

from sim import attacks
from sim.common.progress import progress
from sim.model.config import ModelConfig, RunConfig
from sim.model.data import STREAM_ATTACK, STREAM_INIT, STREAM_TRAIN, Problem, stream
from sim.model.network import TwoLayerNet

from .fit import adam_fit, check_int, check_norm_tau, check_parity, check_pos, fail
from .atoms import AtomPolynomial, lagrangian_certificate, monomial_coefficients, step_coefficients, threat_box
from .linear import LinearModel, fit_logistic, fit_robust_accuracy, fit_robust_logistic
from .ntk import NTKModel
from .polynomial import PolynomialModel

C5_KEY = 5  # sub-key of the data streams reserved for the lower bound (extra samples, landmarks, attacks)


@dataclass(frozen=True)
class Budget:
    """Training and attack budgets at scale 1 (steps and sizes shrink with `scale`).

    clean_steps / adv_steps: Adam steps of clean / adversarial training (batch `batch`);
    adv_pgd_steps: PGD steps per batch in adversarial training (random start, step
    2.5/steps tau); eval_pgd_steps x eval_pgd_restarts: PGD of the evaluation;
    landmarks: Nystrom landmarks of the polynomial kernels (at least 1.25 d); lr_*: Adam step sizes;
    ridge: L2 penalty on theta; ntk_temperature: gate relaxation T/|w0_i| of SmoothedNTK;
    atom_adv_steps: PGD adversarial training steps of the per-atom polynomials;
    linear_stages x linear_steps: the continuation of the best-accuracy linear model;
    cert_grid: grid points per atom of the per-atom polynomials' certificate.
    """

    clean_steps: int = 400
    adv_steps: int = 150
    batch: int = 256
    adv_pgd_steps: int = 3
    eval_pgd_steps: int = 20
    eval_pgd_restarts: int = 2
    landmarks: int = 1024
    lr_linear: float = 0.05
    lr_poly: float = 0.01
    lr_ntk: float = 0.01
    ridge: float = 1e-4
    ntk_temperature: float = 0.01
    atom_adv_steps: int = 120
    lr_atom: float = 0.02
    linear_stages: int = 6
    linear_steps: int = 100
    cert_grid: int = 65

    def scaled(self, scale: float) -> "Budget":
        s = float(scale)
        return Budget(clean_steps=max(20, round(self.clean_steps * s)), adv_steps=max(10, round(self.adv_steps * s)),
                      batch=self.batch, adv_pgd_steps=self.adv_pgd_steps,
                      eval_pgd_steps=max(5, round(self.eval_pgd_steps * min(1.0, 2 * s))),
                      eval_pgd_restarts=1 if s < 0.5 else self.eval_pgd_restarts,
                      landmarks=max(256, round(self.landmarks * min(s, 1.0))), lr_linear=self.lr_linear,
                      lr_poly=self.lr_poly, lr_ntk=self.lr_ntk, ridge=self.ridge, ntk_temperature=self.ntk_temperature,
                      atom_adv_steps=max(20, round(self.atom_adv_steps * s)), lr_atom=self.lr_atom,
                      linear_stages=max(3, round(self.linear_stages * min(1.0, 2 * s))),
                      linear_steps=max(30, round(self.linear_steps * s)), cert_grid=self.cert_grid)


def more_data(problem: Problem, train, factor: int):
    """(X, y) of factor * N samples: the given N plus (factor - 1) N fresh ones (own stream)."""
    if factor == 1:
        return np.asarray(train.x, np.float64), np.asarray(train.y, np.float64)
    extra = problem.sample((factor - 1) * len(train.y), stream(problem.cfg, STREAM_TRAIN, C5_KEY, factor))
    return np.concatenate([train.x, extra.x]), np.concatenate([train.y, extra.y])


class OraclePolynomial:
    """f(x) = sum_j w*_j <m_j, x>^p (odd p): the sparse-coding polynomial of degree p."""

    def __init__(self, M, wstar, degree):
        self.M, self.w, self.p = np.asarray(M, np.float64), np.asarray(wstar, np.float64), int(degree)

    def forward(self, X):
        return (np.asarray(X, np.float64) @ self.M) ** self.p @ self.w

    def output_gradient(self, X):
        C = np.asarray(X, np.float64) @ self.M
        return (self.p * C ** (self.p - 1) * self.w) @ self.M.T, C ** self.p @ self.w


def _attacked(model, X, y, tau, norm, direction, budget, seed, relaxed=None):
    rep = attacks.evaluate_robustness(model, X, y, tau, norm, direction=direction, pgd_steps=budget.eval_pgd_steps,
                                      pgd_restarts=budget.eval_pgd_restarts, seed=seed)
    per = dict(rep.per_attack)
    broken, flag, note = rep.broken, rep.masking_flag, rep.masking_note
    if relaxed is not None:
        rep2 = attacks.evaluate_robustness(relaxed, X, y, tau, norm, direction=direction,
                                           pgd_steps=budget.eval_pgd_steps, pgd_restarts=budget.eval_pgd_restarts,
                                           seed=seed + 1)
        per.update({f"relaxed_{k}": v for k, v in rep2.per_attack.items() if k.startswith(attacks.GRADIENT_ATTACKS)})
        broken = broken | rep2.broken
        flag = flag or rep2.masking_flag
        note = f"exact gradient: {note}; relaxed gates: {rep2.masking_note}"
    return float(np.mean(~broken)), per, flag, note


def lower_bound_table(problem: Problem, train, test, tau: float, norm: str, *, scale: float = 1.0, seed: int = 0,
                      n_eval: int = 1000, quiet: bool = False, degrees=(2, 3), n_factors=(1, 10),
                      parity: str = "odd", model_cfg: ModelConfig | None = None, oracle: bool = True,
                      atom_degrees=(3, 5, 7), ntk: bool = True, budget: Budget | None = None,
                      dtype=np.float32) -> list[dict]:
    """Rows {model, class, training, n_train, clean_acc, robust_acc, robust_kind, seconds, ...} of claim C5.

    problem/train/test: the data of the network's runs; tau/norm: the threat model.
    scale: budget factor (1: the default budget; 0.1: the quick one). n_eval: test points
    attacked (exact linear numbers use the whole test set; at scale < 1 n_eval shrinks
    to max(200, n_eval * scale)). degrees: kernel polynomial degrees. n_factors:
    training-set sizes as multiples of N = len(train). parity: 'odd' or 'full' (module
    docstring; the per-atom polynomials and the best-accuracy linear model are odd in
    both). model_cfg: the network's ModelConfig (its init W0 is the NTK's; default
    ModelConfig()). oracle: add the hand-built per-atom rows. atom_degrees: odd degrees
    of the per-atom polynomials (hand-built and adversarially trained; () for none).
    ntk: add the NTK rows.
    budget: training/attack budgets (Budget, scaled by `scale`). dtype: compute dtype
    of the polynomial and NTK models (float32: twice as fast; parameters stay float64).
    Extra keys per row: tau, norm, parity, n_eval (points behind robust_acc), per_attack,
    masking_flag and masking_note (the gradient-masking check of sim.attacks), note (how
    the model was obtained); linear rows also attacked_acc (the attacks' number on the
    n_eval attacked points) and exact_acc_eval (the exact number on the same points):
    attacked >= exact always, equal up to rounding since FGM is exact on linear models;
    per-atom rows also certified_acc (sound, on the same n_eval points).
    """
    check_norm_tau(norm, tau)
    tau = float(tau)
    check_pos("scale", scale)
    check_int("n_eval", n_eval, 1)
    check_parity(parity)
    degrees = tuple(degrees)
    for p in degrees:
        check_int("degree", p, 1)
    atom_degrees = tuple(atom_degrees)
    for p in atom_degrees:
        check_int("atom_degrees[]", p, 1)
        if p % 2 == 0:
            fail("atom_degrees[]", p, "odd integers >= 1")
    for fct in n_factors:
        check_int("n_factors[]", fct, 1)
    if train.x.shape[1] != problem.cfg.d or test.x.shape[1] != problem.cfg.d:
        fail("train/test", (train.x.shape, test.x.shape), f"inputs of dimension d = {problem.cfg.d}")
    budget = (budget or Budget()).scaled(scale)
    n_eval = min(len(test.y), n_eval if scale >= 1 else max(200, round(n_eval * scale)))
    Xt, yt = np.asarray(test.x, np.float64), np.asarray(test.y, np.float64)
    Xe, ye = Xt[:n_eval], yt[:n_eval]
    direction = problem.bayes_direction
    intercept = parity == "full"
    cfg = problem.cfg
    net0 = TwoLayerNet.init(RunConfig(data=cfg, model=model_cfg or ModelConfig()), np.float64)
    common = {"tau": tau, "norm": norm, "parity": parity}
    N = len(train.y)
    big = max(n_factors)
    box, radius2 = threat_box(problem.M, tau, norm)

    jobs = []
    for fct in n_factors:
        jobs += [("linear", "clean", fct), ("linear", "adversarial", fct), ("linear", "robust_logistic", fct),
                 ("linear", "best_accuracy", fct)]
        for p in degrees:
            jobs += [(f"poly{p}", "clean", fct), (f"poly{p}", "adversarial", fct)]
        if ntk:
            jobs += [("ntk", "clean", fct), ("ntk", "adversarial", fct)]
    jobs.append(("linear", "bayes", None))
    for p in atom_degrees:
        if oracle:  # t^P for P = 3 (the flat step of degree 3); the flat step beats t^P for P >= 5
            jobs.append((f"poly{p}", "oracle" if p < 5 else "oracle_step", None))
        jobs.append((f"poly{p}", "atom_adversarial", big))

    rows: list[dict] = []
    data_cache: dict[int, tuple] = {}
    trained: dict[tuple, object] = {}
    bar = progress(jobs, desc=f"C5 lower bound ({norm}, tau={tau:g})", quiet=quiet, leave=False)
    for j, (model_name, training, fct) in enumerate(bar):
        bar.set_postfix_str(f"{model_name} {training} {'' if fct is None else f'{fct}N'}")
        t0, c0 = time.perf_counter(), time.process_time()
        rng = stream(cfg, STREAM_ATTACK, C5_KEY, seed, j)
        row = {"model": model_name, "class": model_name, "training": training,
               "n_train": None if fct is None else fct * N, **common}
        if fct is not None:
            if fct not in data_cache:
                data_cache[fct] = more_data(problem, train, fct)
            X, y = data_cache[fct]
        adv = {"tau": tau, "norm": norm, "steps": budget.adv_pgd_steps}
        note = ""
        if model_name == "linear":
            if training == "clean":
                model = fit_logistic(X, y, ridge=budget.ridge, intercept=intercept)
                note = "L-BFGS on the logistic loss"
            elif training == "adversarial":
                clean = trained[("linear", "clean", fct)]
                model = LinearModel(clean.w, clean.c, intercept)
                adam_fit(model, X, y, steps=budget.adv_steps, batch=budget.batch, lr=budget.lr_linear,
                         ridge=budget.ridge, adversarial=adv, rng=rng, quiet=quiet, desc="linear adversarial")
                note = f"from the clean model, PGD-{budget.adv_pgd_steps} batches"
            elif training == "robust_logistic":
                model, info = fit_robust_logistic(X, y, tau, norm, intercept=intercept)
                note = ("minimiser of the robust logistic loss: w = 0 exactly (|mean s y x| = {:.4g} <= tau mean s"
                        " = {:.4g})".format(*info["zero_test"]) if info["zero_optimal"]
                        else f"minimiser of the robust logistic loss: L-BFGS, {info['n_iter']} iterations, final "
                             f"gradient norm {info['grad_norm']:.2e}")
            elif training == "best_accuracy":
                starts = {"M w*": direction}
                for t in ("clean", "adversarial", "robust_logistic"):
                    starts[f"{t} linear"] = trained[("linear", t, fct)].w
                for f in (0.5, 2.0):
                    starts[f"robust-logistic minimiser at {f:g} tau"] = fit_robust_logistic(
                        X, y, f * tau, norm, ridge=budget.ridge, maxiter=200)[0].w
                model, info = fit_robust_accuracy(X, y, tau, norm, starts, rng=rng, stages=budget.linear_stages,
                                                  steps=budget.linear_steps)
                note = (f"best exact robust accuracy found: {info['how']} (validation {info['val_acc']:.3f} vs "
                        f"M w* {info['ref_val_acc']:.3f})")
                row["start_val_acc"] = info["start_val_acc"]
            else:
                model = LinearModel(direction, 0.0, intercept)
                note = "M w*, not trained"
            trained[(model_name, training, fct)] = model
            margin = model.robust_margin(Xt, yt, tau, norm)
            att, per, flag, anote = _attacked(model, Xe, ye, tau, norm, direction, budget, seed)
            row.update(clean_acc=float(np.mean(yt * model.forward(Xt) > 0)), robust_acc=float(np.mean(margin > 0)),
                       robust_kind="exact", n_eval=len(yt), attacked_acc=att,
                       exact_acc_eval=float(np.mean(margin[:n_eval] > 0)), per_attack=per, masking_flag=flag,
                       masking_note=anote, note=note)
        else:
            relaxed = None
            certified = None
            if training in ("oracle", "oracle_step", "atom_adversarial"):
                P = int(model_name[4:])
                if training == "oracle":
                    model = AtomPolynomial(problem.M, problem.wstar, monomial_coefficients(P), dtype=dtype)
                    note = f"sum_j w*_j <m_j, x>^{P}, hand-built from M and w*, not trained"
                elif training == "oracle_step":
                    c = step_coefficients(P)
                    model = AtomPolynomial(problem.M, problem.wstar, c, dtype=dtype)
                    note = (f"sum_j w*_j p(<m_j, x>), p the flat step of degree {P} (p(1) = 1, p' = 0 at 1 to order "
                            f"{(P - 3) // 2}, p = O(t^3) at 0; coefficients of t^3.. {np.round(c[1:], 4).tolist()}), "
                            "hand-built, not trained")
                else:
                    model = AtomPolynomial(problem.M, np.zeros(problem.M.shape[1]), monomial_coefficients(P),
                                           dtype=dtype)
                    adam_fit(model, X, y, steps=budget.atom_adv_steps, batch=budget.batch, lr=budget.lr_atom,
                             ridge=budget.ridge, adversarial=adv, rng=rng, quiet=quiet, desc=f"{model_name} per atom")
                    cos = float(model.a @ problem.wstar / max(np.linalg.norm(model.a) * np.linalg.norm(problem.wstar),
                                                               1e-300))
                    note = (f"sum_j a_j p(<m_j, x>), p and a trained by PGD-{budget.adv_pgd_steps} adversarial "
                            f"training ({budget.atom_adv_steps} steps) from p = t^{P}, a = 0; learned p coefficients "
                            f"(t, t^3, ..) {np.round(model.c, 3).tolist()}, cos(a, w*) = {cos:.3f}")
                model64 = AtomPolynomial(problem.M, model.a, model.c)
                certified = float(np.mean(lagrangian_certificate(model64, Xe, ye, tau, box=box, radius2=radius2,
                                                                 grid=budget.cert_grid) > 0))
                note += ("; certified: Lagrangian bound " + ("(exact image of the l2 ball)" if norm == "l2"
                                                            else "(l_inf ball relaxed to its l2 and box hull)"))
            else:
                if training == "clean":
                    if model_name == "ntk":
                        model = NTKModel.from_net(net0, parity, dtype)
                        lr = budget.lr_ntk
                    else:
                        lrng = stream(cfg, STREAM_INIT, C5_KEY, fct)
                        r = max(budget.landmarks, cfg.d + cfg.d // 4)  # > d, so the span holds every linear map
                        idx = lrng.choice(len(y), size=min(r, len(y)), replace=False)
                        model = PolynomialModel(X[idx], int(model_name[4:]), parity, dtype=dtype)
                        lr = budget.lr_poly
                        note = f"kernel on {len(idx)} landmarks" + (
                            " (odd part of degree 2 = linear)" if model.is_linear and model.degree > 1 else "")
                    adam_fit(model, X, y, steps=budget.clean_steps, batch=budget.batch, lr=lr, ridge=budget.ridge,
                             rng=rng, quiet=quiet, desc=f"{model_name} clean")
                else:
                    clean = trained[(model_name, "clean", fct)]
                    model = copy.copy(clean)
                    model.theta = clean.theta.copy()
                    lr = budget.lr_ntk if model_name == "ntk" else budget.lr_poly
                    target = model.smoothed(budget.ntk_temperature) if model_name == "ntk" else model
                    note = (f"from the clean model, PGD-{budget.adv_pgd_steps} batches"
                            + (" through the relaxed gates" if model_name == "ntk" else " (kernel on landmarks)"))
                    adam_fit(target, X, y, steps=budget.adv_steps, batch=budget.batch, lr=lr, ridge=budget.ridge,
                             adversarial=adv, rng=rng, quiet=quiet, desc=f"{model_name} adversarial")
                if model_name == "ntk":
                    relaxed = model.smoothed(budget.ntk_temperature)
                    note = (note + "; " if note else "") + "attacked through the exact and the relaxed-gate gradient"
            trained[(model_name, training, fct)] = model
            rob, per, flag, anote = _attacked(model, Xe, ye, tau, norm, direction, budget, seed, relaxed)
            row.update(clean_acc=float(np.mean(yt * model.forward(Xt) > 0)), robust_acc=rob, robust_kind="attacked",
                       n_eval=len(ye), per_attack=per, masking_flag=flag, masking_note=anote, note=note)
            if certified is not None:
                row["certified_acc"] = certified
        row["seconds"] = time.perf_counter() - t0
        row["cpu_seconds"] = time.process_time() - c0
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text rendering of the rows (one line each)."""
    head = (f"{'model':8s} {'training':16s} {'n_train':>8s} {'clean':>7s} {'robust':>7s} {'cert':>7s} {'kind':8s} "
            f"{'s':>6s}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        n = "-" if r["n_train"] is None else str(r["n_train"])
        extra = r.get("note", "")
        if "attacked_acc" in r:
            extra = (f"attacked {100 * r['attacked_acc']:.1f} % vs exact {100 * r['exact_acc_eval']:.1f} % on the "
                     f"attacked points" + (f"; {extra}" if extra else ""))
        cert = f"{100 * r['certified_acc']:6.1f}%" if "certified_acc" in r else f"{'-':>7s}"
        lines.append(f"{r['model']:8s} {r['training']:16s} {n:>8s} {100 * r['clean_acc']:6.1f}% "
                     f"{100 * r['robust_acc']:6.1f}% {cert} {r['robust_kind']:8s} {r['seconds']:6.1f}  {extra}")
    return "\n".join(lines)
