"""`python -m sim experiments strategies`: adversarial-training strategies compared (C7),
the shape of the adversarial update and low-rank adversarial training (C8).

From the same clean-trained network (the verify regime), adversarial training runs with
- fgm: FGM, the paper's perturbation (FGSM in l_inf);
- fgm_rs: FGM from a uniform random start in the ball, step rs_step * tau, projection back
  (FGSM-RS of Wong et al. 2020; sim.adversarial.Perturb kind 'fgm_rs');
- pgdK: PGD with K steps from a random start (sim.attacks.pgd, one restart);
all at the same radius, learning rate, batch and step cap. Each run stops when it has
converged: a cheap robust accuracy on held-out test points (the best of FGM, the dense
attack, PGD-10x1 and one random draw, on n_check points disjoint from the n_eval points
of the final evaluation) spans less than plateau_tol over the last quarter of the run
(checked every check_every steps, not before min_steps); max_steps caps it (then
converged is False). Compute is counted in gradient evaluations over the batch: one per
attack step plus one for the weight gradient (fgm and fgm_rs 2, pgdK K + 1), and in
training seconds (checks excluded; shared machines make seconds noisy).

Each final network is evaluated as verify does: attacked robust accuracy (best of
PGD-pgd_steps x pgd_restarts, FGM, dense, random; sim.attacks.evaluate_robustness) and
certified (sim.certify.certify), overall and by margin class |<w*, z>| (1, 2, >= 3 for
pm1 codes).

C7 (SPEC): the single-step strategy with a random start and the iterative one both
robustify (attacked robust accuracy >= robust_threshold, the C3 threshold), and PGD
reaches reach_level (95 %) of the FGM plateau (its cheap robust accuracy averaged over
its last quarter) in fewer training steps than FGM-RS; the gradient evaluations and
seconds to that level are reported next to it (the compute question has no threshold).

Shape of the update (for every run and for the random-noise control, trained for as
many steps as FGM): singular values of W_adv - W_clean and of (W_adv - W_clean) M (the
dictionary basis; with an orthogonal M the two spectra coincide and only the right
singular vectors rotate), the share of the squared Frobenius norm in the top 1, 2, 4
directions, and |cos| of the top right singular vector with M w* (with w* in the
dictionary basis).

C8: low-rank adversarial training W = W_clean + U V^T (sim.lowrank, FGM perturbation,
exact factor gradients, U = 0 and V random at the start, so the run starts exactly at
W_clean) for r in ranks; 'full' is the fgm run itself. Two optimisers of the factors
(lowrank_methods): 'scaled', ScaledGD (each factor's gradient right-preconditioned by the
other's damped Gram matrix, sim.lowrank.LowRankUpdate), step adv_lr / 2 so that W's step
within the learned subspace, -lr (G P_V + P_U G), equals full training's, V of unit
columns (the step does not depend on the factors' scale); and 'gd', plain gradient
descent on the factors. The claim C8-rank is read from 'scaled'; C8-rank-gd reports plain
GD. Step and scale for plain GD: a product moves W by -lr (G V V^T + U U^T G),
i.e. with an effective step lr (|u|^2 + |v|^2) along a learned direction. With the
learning rate of full training and unit-norm factors this grows past the stable step as
the factors grow (measured: the rank-1 run then oscillates, its update reaches twice the
norm of the full one and clean accuracy falls to chance), and with a small V it starts
lr |v|^2 times slower. By default (lowrank_lr, lowrank_init None) the scales are matched
to the full run instead: with s1 the top singular value of the FGM update, V's columns
get norm sqrt(s1) and the factors the step adv_lr / (2 s1), so that the effective step
is adv_lr / 2 at the start and adv_lr at a balanced rank-1 end point of size s1 (a rule
fixed in advance from the full run, not a search over values). Measured: at that step plain
GD turns V towards the useful directions too slowly (a rate lr^2 |G|^2): in the committed
run ranks 1-4 stay at the clean network's robustness and rank 16 gains 40 % of the full
update's gain in 600 steps (ScaledGD: 68 %). gain(r) = robust(r) - robust(clean) (attacked); C8 holds if the
smallest rank with gain >= gain_level * gain(full) is at most c8_max_rank [ours], and the
FGM update has at least c8_energy_min of its energy in its top c8_energy_k directions
[ours] and more than the random-noise control.

Resumable: the clean network and every run (strategy, control, rank) is written to its
own file under OUT/pieces as soon as it is done, with a hash of the config it depends
on; a rerun with the same config skips finished pieces, and a rerun with a larger
max_steps continues the runs that the old cap stopped from their last state (the same
bits as one uninterrupted run).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import attacks
from .adversarial import make_perturb
from .config import (_NESTED, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, _check_choice, _check_int,
                     _check_real, _Frozen)
from .data import Problem
from .lowrank import AdvRun, FullUpdate, LowRankUpdate, Plateau, train_adversarial
from .network import TwoLayerNet
from .rundir import atomic_save_npz, atomic_write_bytes, atomic_write_json

_STRATEGY = re.compile(r"^(fgm|fgm_rs|pgd([1-9][0-9]*))$")
MARGIN_CLASSES = ("<1", "1", "2", ">=3")


@dataclass(frozen=True)
class StrategiesConfig(_Frozen):
    """What `experiments strategies` runs. The regime is verify's (sim.verify.VerifyConfig:
    N = 6000, clean lr 1 for 300 steps, online adversarial training with 6000 fresh samples
    a step, lr 0.5, bias 0.1 -> 0.2 over 100 steps) on verify --quick's problem and radius
    (d = 64, k = 2, l2 tau = 0.3, init 1e-4): the compute this experiment could have on a
    shared 2-core machine (README). At d = 64 with k = 4 and tau = 0.25 the clean network is
    already 38 % robust and FGM reaches 47 %: too small a gain to measure C8 on.

    run: the clean training. norm, tau: the threat model. strategies: 'fgm', 'fgm_rs',
    'pgdK'. rs_step: step of fgm_rs in units of tau. adv_lr, adv_batch (online, fresh
    samples each step), adv_beta, adv_beta_ramp: as in verify. max_steps: step cap of every
    run; check_every, plateau_tol, plateau_window, plateau_min_checks, min_steps (None:
    adv_beta_ramp; default 400, because FGM-RS was measured to sit flat for 50 steps near
    0.5 and rise again to 0.97), lowrank_max_steps (None: max_steps): the stopping rule
    (sim.lowrank.Plateau) on the cheap robust accuracy of
    n_check held-out points. n_eval, pgd_steps, pgd_restarts, certify: the final
    evaluation. ranks, lowrank_methods ('scaled': ScaledGD, 'gd': plain GD on the factors),
    lowrank_init (column norm of V), lowrank_lr: low-rank training (None: the rules of the
    module docstring).
    reach_level, robust_threshold, gain_level, c8_max_rank, c8_energy_k, c8_energy_min:
    the claims' levels.
    """

    run: RunConfig = field(default_factory=lambda: RunConfig(
        DataConfig(d=64, k=2.0), ModelConfig(init_scale=1e-4), TrainConfig(lr=1.0, steps=300, snapshots=(0,))))
    norm: str = "l2"
    tau: float = 0.3
    strategies: tuple = ("fgm", "fgm_rs", "pgd3", "pgd10")
    rs_step: float = 1.25
    adv_lr: float = 0.5
    adv_batch: int = 6000
    adv_beta: float | None = 0.2
    adv_beta_ramp: int = 100
    max_steps: int = 1500
    check_every: int = 10
    plateau_tol: float = 0.005
    plateau_window: float = 0.25
    plateau_min_checks: int = 4
    min_steps: int | None = 400
    lowrank_max_steps: int | None = 600
    n_check: int = 1000
    n_eval: int = 1000
    pgd_steps: int = 50
    pgd_restarts: int = 5
    certify: bool = True
    control: bool = True
    ranks: tuple = (1, 2, 4, 16)
    lowrank_methods: tuple = ("scaled", "gd")
    lowrank_init: float | None = None
    lowrank_lr: float | None = None
    reach_level: float = 0.95
    robust_threshold: float = 0.90
    gain_level: float = 0.90
    c8_max_rank: int = 4
    c8_energy_k: int = 2
    c8_energy_min: float = 0.5

    def __post_init__(self):
        if not isinstance(self.run, RunConfig):
            raise ConfigError(f"run={self.run!r} is invalid: allowed a RunConfig")
        _check_choice("norm", self.norm, attacks.NORMS)
        _check_real("tau", self.tau, lo=0, lo_open=True)
        strategies = tuple(self.strategies)
        if "fgm" not in strategies or len(set(strategies)) != len(strategies) \
                or any(not isinstance(s, str) or not _STRATEGY.match(s) for s in strategies):
            raise ConfigError(f"strategies={strategies!r} is invalid: allowed distinct names among 'fgm', 'fgm_rs',"
                              " 'pgdK' (K >= 1), including 'fgm' (the reference)")
        object.__setattr__(self, "strategies", strategies)
        _check_real("rs_step", self.rs_step, lo=0, lo_open=True)
        _check_real("adv_lr", self.adv_lr, lo=0, lo_open=True)
        _check_int("adv_batch", self.adv_batch, lo=1)
        if self.adv_beta is not None:
            _check_real("adv_beta", self.adv_beta, lo=0)
            if self.run.model.bias not in ("relative", "schedule"):
                raise ConfigError(f"adv_beta={self.adv_beta!r} is invalid with run.model.bias="
                                  f"{self.run.model.bias!r}: allowed only with 'relative' or 'schedule' biases")
        if self.run.model.bias == "trained":
            raise ConfigError("run.model.bias='trained' is invalid here: allowed 'fixed', 'relative', 'schedule'")
        _check_int("adv_beta_ramp", self.adv_beta_ramp, lo=1)
        _check_int("max_steps", self.max_steps, lo=1)
        _check_int("check_every", self.check_every, lo=1, hi=self.max_steps)
        _check_real("plateau_tol", self.plateau_tol, lo=0, lo_open=True)
        _check_real("plateau_window", self.plateau_window, lo=0, hi=1, lo_open=True)
        _check_int("plateau_min_checks", self.plateau_min_checks, lo=2)
        if self.min_steps is not None:
            _check_int("min_steps", self.min_steps, lo=0, hi=self.max_steps)
        if self.lowrank_max_steps is not None:
            _check_int("lowrank_max_steps", self.lowrank_max_steps, lo=1)
        _check_int("n_eval", self.n_eval, lo=1, hi=self.run.data.n_test - 1)
        _check_int("n_check", self.n_check, lo=1, hi=self.run.data.n_test - self.n_eval)
        _check_int("pgd_steps", self.pgd_steps, lo=1)
        _check_int("pgd_restarts", self.pgd_restarts, lo=1)
        ranks = tuple(self.ranks)
        for r in ranks:
            _check_int("ranks[]", r, lo=1, hi=min(self.run.width(), self.run.data.d))
        object.__setattr__(self, "ranks", tuple(sorted(set(ranks))))
        methods = tuple(self.lowrank_methods)
        if len(set(methods)) != len(methods) or any(m not in ("scaled", "gd") for m in methods):
            raise ConfigError(f"lowrank_methods={methods!r} is invalid: allowed distinct names among 'scaled', 'gd'")
        object.__setattr__(self, "lowrank_methods", methods)
        if self.lowrank_init is not None:
            _check_real("lowrank_init", self.lowrank_init, lo=0, lo_open=True)
        if self.lowrank_lr is not None:
            _check_real("lowrank_lr", self.lowrank_lr, lo=0, lo_open=True)
        _check_real("reach_level", self.reach_level, lo=0, hi=1, lo_open=True)
        _check_real("robust_threshold", self.robust_threshold, lo=0, hi=1)
        _check_real("gain_level", self.gain_level, lo=0, hi=1, lo_open=True)
        _check_int("c8_max_rank", self.c8_max_rank, lo=1)
        _check_int("c8_energy_k", self.c8_energy_k, lo=1)
        _check_real("c8_energy_min", self.c8_energy_min, lo=0, hi=1)

    def plateau(self) -> Plateau:
        return Plateau(self.plateau_tol, self.plateau_window, self.plateau_min_checks,
                       self.adv_beta_ramp if self.min_steps is None else self.min_steps)


_NESTED[("StrategiesConfig", "run")] = RunConfig


def quick_config() -> StrategiesConfig:
    """`--quick`: the same experiment at d = 64 (verify --quick's problem), about 2 minutes."""
    return StrategiesConfig(
        run=RunConfig(DataConfig(d=64, k=2.0, n_train=1000, n_test=600), ModelConfig(init_scale=1e-4),
                      TrainConfig(lr=1.0, steps=150, snapshots=(0,))),
        tau=0.3, adv_batch=1000, adv_beta_ramp=50, max_steps=100, check_every=10, n_check=200, n_eval=200,
        pgd_steps=10, pgd_restarts=1, ranks=(1, 4), min_steps=50, lowrank_max_steps=None)


def grad_evals_per_step(kind: str) -> int:
    """Gradient evaluations over the batch per training step: attack steps + the weight gradient."""
    if kind in ("fgm", "fgm_rs"):
        return 2
    if kind == "random":
        return 1
    return int(kind[3:]) + 1


def _perturb(cfg: StrategiesConfig, kind: str):
    if kind.startswith("pgd"):
        return make_perturb("pgd", cfg.tau, cfg.norm, cfg.run.data, pgd_steps=int(kind[3:]))
    return make_perturb(kind, cfg.tau, cfg.norm, cfg.run.data, rs_step=cfg.rs_step)


# ----------------------------------------------------------------------------- measures

def margin_class(margins: np.ndarray) -> np.ndarray:
    """The class label of each |<w*, z>|: '<1', '1' ([1, 2)), '2' ([2, 3)), '>=3'."""
    idx = np.clip(np.floor(margins + 1e-9).astype(int), 0, 3)
    return np.array(MARGIN_CLASSES)[idx]


def evaluate(net: TwoLayerNet, X, y, margins, cfg: StrategiesConfig, direction, seed: int = 0) -> dict:
    """Attacked (and certified) robust accuracy, overall and by margin class."""
    rep = attacks.evaluate_robustness(net, X, y, cfg.tau, cfg.norm, direction=direction, pgd_steps=cfg.pgd_steps,
                                      pgd_restarts=cfg.pgd_restarts, seed=seed)
    out = {"clean_acc": rep.clean_accuracy, "robust_acc": rep.robust_accuracy, "per_attack": rep.per_attack,
           "masking_flag": rep.masking_flag}
    certified = None
    if cfg.certify and net.model.activation == "relu":
        from .certify import certify

        cert = certify(net, X, y, cfg.tau, cfg.norm, focus=~rep.broken)
        certified = cert.certified
        out["certified_acc"] = cert.certified_accuracy
        out["certify_seconds"] = cert.seconds
    cls = margin_class(margins)
    out["by_margin"] = {}
    for c in MARGIN_CLASSES:
        sel = cls == c
        if not sel.any():
            continue
        entry = {"n": int(sel.sum()), "robust_acc": float(np.mean(~rep.broken[sel]))}
        if certified is not None:
            entry["certified_acc"] = float(np.mean(certified[sel]))
        out["by_margin"][c] = entry
    return out


def update_shape(W_clean, W_adv, M, wstar, top=(1, 2, 4), keep: int = 32) -> dict:
    """Spectrum of the update Delta = W_adv - W_clean and of Delta M (dictionary basis).

    Besides the singular values, energy shares and |cos| of the top right singular vector
    with M w*: along_wstar_share, the share of |Delta|_F^2 along M w*/|M w*|, and
    against_clean_share, the share of that part (per neuron, (Delta_i . v)^2) whose sign
    opposes the clean neuron's own component W_i . v: 1 when the update removes the
    neurons' w* components (purification), 0 when it adds to them.
    """
    delta = np.asarray(W_adv, np.float64) - np.asarray(W_clean, np.float64)
    v = M @ wstar
    out = {"frobenius": float(np.linalg.norm(delta))}
    # sign: does the update remove each neuron's component along M w* or add to it?
    a, c = delta @ v, np.asarray(W_clean, np.float64) @ v
    e = a ** 2
    out["against_clean_share"] = float(np.sum(e[a * c < 0]) / e.sum()) if e.sum() > 0 else 0.0
    out["along_wstar_share"] = float(e.sum() / (np.linalg.norm(v) ** 2 * max(np.sum(delta ** 2), 1e-300)))
    for tag, A, ref in (("", delta, v), ("_dict", delta @ M, wstar)):
        _, s, Vt = np.linalg.svd(A, full_matrices=False)
        e = s ** 2
        total = e.sum()
        share = np.cumsum(e) / total if total > 0 else np.zeros_like(e)
        out[f"singular_values{tag}"] = s[:keep].tolist()
        out[f"energy_top{tag}"] = {str(k): float(share[min(k, len(s)) - 1]) for k in top}
        out[f"energy_cumulative{tag}"] = share[:keep].tolist()
        out[f"cos_top_right{tag}"] = float(abs(Vt[0] @ ref) / np.linalg.norm(ref)) if total > 0 else 0.0
    return out


def reach(curve: list[dict], level: float, evals_per_step: int) -> dict:
    """The first checked step whose cheap robust accuracy is >= level: step, gradient
    evaluations and training seconds to it (None if never)."""
    for c in curve:
        if c["value"] >= level:
            return {"step": c["step"], "grad_evals": c["step"] * evals_per_step, "seconds": c["seconds"]}
    return {"step": None, "grad_evals": None, "seconds": None}


# ----------------------------------------------------------------------------- pieces

def config_hash(cfg: StrategiesConfig) -> str:
    """What every piece depends on: the config without the lists of runs, the claim levels,
    the step caps and min_steps (a finished run stays valid or goes on from its last state
    when they change, see _run_piece)."""
    d = cfg.to_dict()
    for k in ("strategies", "ranks", "reach_level", "robust_threshold", "gain_level", "c8_max_rank", "c8_energy_k",
              "c8_energy_min", "control", "max_steps", "lowrank_methods", "min_steps", "lowrank_max_steps"):
        d.pop(k)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class Pieces:
    """OUT/pieces/NAME.json (+ NAME.npz weights), each written atomically when done."""

    def __init__(self, out: Path, chash: str):
        self.dir = Path(out) / "pieces"
        self.chash = chash

    def load(self, name: str):
        j, z = self.dir / f"{name}.json", self.dir / f"{name}.npz"
        if not (j.exists() and z.exists()):
            return None
        doc = json.loads(j.read_text())
        if doc.get("config_hash") != self.chash:
            return None
        with np.load(z) as f:
            return doc, {k: f[k] for k in f.files}

    def save(self, name: str, doc: dict, **arrays) -> None:
        atomic_save_npz(self.dir / f"{name}.npz", **arrays)
        atomic_write_json(self.dir / f"{name}.json", {**doc, "config_hash": self.chash})


@dataclass
class _Ctx:
    cfg: StrategiesConfig
    problem: Problem
    net: TwoLayerNet  # clean
    Xe: np.ndarray
    ye: np.ndarray
    me: np.ndarray
    Xc: np.ndarray
    yc: np.ndarray
    pieces: Pieces
    quiet: bool

    def adv_start(self) -> TwoLayerNet:
        net = self.net.copy()
        if self.cfg.adv_beta is not None:
            net.model = net.model.replace(bias="schedule", beta=net.beta, beta_end=self.cfg.adv_beta,
                                          ramp_steps=self.cfg.adv_beta_ramp)
        return net

    def check(self, step, net) -> dict:
        rep = attacks.evaluate_robustness(net, self.Xc, self.yc, self.cfg.tau, self.cfg.norm,
                                          direction=self.problem.bayes_direction, pgd_steps=10, pgd_restarts=1,
                                          random_draws=1, seed=0)
        return {"value": rep.robust_accuracy, "clean_acc": rep.clean_accuracy}

    def final(self, net, seed) -> dict:
        return evaluate(net, self.Xe, self.ye, self.me, self.cfg, self.problem.bayes_direction, seed=seed)


def _clean(cfg: StrategiesConfig, out: Path, quiet: bool) -> tuple[Problem, TwoLayerNet, dict]:
    from .run import train_clean

    pieces = Pieces(out, config_hash(cfg))
    got = pieces.load("clean")
    problem = Problem.from_config(cfg.run.data)
    if got is not None:
        doc, arr = got
        return problem, TwoLayerNet(arr["W"], cfg.run.model, arr["b"], float(arr["beta"])), doc
    run = train_clean(cfg.run, None, quiet=quiet)
    doc = {"test_acc": run.log.rows[-1]["test_acc"], "seconds": run.seconds}
    pieces.save("clean", doc, W=run.net.W, b=run.net.b, beta=np.float64(run.net.beta))
    return problem, run.net, doc


def update_init(update) -> float:
    """The mean column norm of V at the start (U = 0 then)."""
    return float(np.mean(np.linalg.norm(update.V0, axis=0)))


def _run_piece(ctx: _Ctx, name: str, kind: str, rank: int | None, seed: int, fixed_steps: int | None = None,
               s1: float | None = None, method: str = "gd"):
    cfg = ctx.cfg
    cap = cfg.max_steps if rank is None or cfg.lowrank_max_steps is None else cfg.lowrank_max_steps
    max_steps = fixed_steps if fixed_steps is not None else cap
    min_steps = cfg.plateau().min_steps
    if rank is None:
        lr, init = cfg.adv_lr, None
    elif method == "scaled":  # scale-free: W's step in the learned subspace is full training's
        init = cfg.lowrank_init if cfg.lowrank_init is not None else 1.0
        lr = cfg.lowrank_lr if cfg.lowrank_lr is not None else cfg.adv_lr / 2
    else:  # plain GD: the factors' step and scale follow the FGM update (module docstring)
        init = cfg.lowrank_init if cfg.lowrank_init is not None else float(np.sqrt(s1))
        lr = cfg.lowrank_lr if cfg.lowrank_lr is not None else cfg.adv_lr / (2 * s1)
    got = ctx.pieces.load(name)
    resume = None
    if got is not None and (got[0]["lr"] != lr or got[0].get("init") != init):
        got = None  # made with another step or scale (the FGM run it follows has changed)
    if got is not None:
        doc, arr = got
        # A run is the same under another cap or minimum as long as its stop is still a stop:
        # converged at or after min_steps (no earlier check could converge, the rule at a
        # step does not depend on min_steps otherwise), or stopped by this very cap. One
        # stopped earlier (a lower cap, or converged before a raised min_steps) goes on from
        # its last state, which gives the bits of one uninterrupted run.
        if fixed_steps is not None:
            done = doc["steps"] == fixed_steps
            go_on = doc["steps"] < fixed_steps
        else:
            done = (min_steps <= doc["steps"] <= max_steps) if doc["converged"] else doc["steps"] == max_steps
            go_on = doc["steps"] < max_steps and (not doc["converged"] or doc["steps"] < min_steps)
        if done:
            return doc, arr["W"]
        if go_on:
            resume = AdvRun(None, doc["curve"], doc["steps"], False, doc["train_seconds"])
    net = ctx.adv_start()
    if rank is None:
        update = FullUpdate(ctx.net.W if resume is None else arr["W"])
    else:
        update = LowRankUpdate(ctx.net.W, rank, init, cfg.run.data, scaled=method == "scaled")
        if resume is not None:
            update.restore(arr["U"], arr["V"])
    plateau = None if fixed_steps is not None else cfg.plateau()
    run = train_adversarial(net, ctx.problem, _perturb(cfg, kind), update, lr=lr, max_steps=max_steps,
                            batch_size=cfg.adv_batch, check=ctx.check, check_every=cfg.check_every,
                            plateau=plateau, quiet=ctx.quiet, desc=name, resume=resume)
    t0 = time.perf_counter()
    final = ctx.final(run.net, seed)
    doc = {"name": name, "kind": kind, "rank": rank, "method": None if rank is None else method, "lr": lr,
           "init": init, "steps": run.steps,
           "resumed_from": None if resume is None else resume.steps,
           "init_scale": None if rank is None else update_init(update), "converged": run.converged,
           "stopping": "fixed steps" if fixed_steps is not None else "plateau",
           "train_seconds": run.seconds, "grad_evals_per_step": grad_evals_per_step(kind),
           "grad_evals": run.steps * grad_evals_per_step(kind), "curve": run.curve, "final": final,
           "eval_seconds": time.perf_counter() - t0,
           "shape": update_shape(ctx.net.W, run.net.W, ctx.problem.M, ctx.problem.wstar)}
    if rank is None:
        ctx.pieces.save(name, doc, W=run.net.W)
    else:
        ctx.pieces.save(name, doc, W=run.net.W, U=run.factors["U"], V=run.factors["V"])
    return doc, run.net.W


# ----------------------------------------------------------------------------- the experiment

def run_strategies(cfg: StrategiesConfig, out: Path, quiet: bool = False, figures: Path | None = None,
                   command: str | None = None) -> dict:
    """Run (or resume) everything; write OUT/strategies.json and the figures."""
    from .run import versions

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problem, clean_net, clean_doc = _clean(cfg, out, quiet)
    te = problem.test_set()
    n0, n1 = cfg.n_eval, cfg.n_eval + cfg.n_check
    ctx = _Ctx(cfg, problem, clean_net, te.x[:n0], te.y[:n0], np.abs(te.z[:n0] @ problem.wstar),
               te.x[n0:n1], te.y[n0:n1], Pieces(out, config_hash(cfg)), quiet)
    got = ctx.pieces.load("clean_eval")
    if got is None:
        clean_eval = {"final": ctx.final(clean_net, seed=0), "check": ctx.check(0, clean_net)}
        ctx.pieces.save("clean_eval", clean_eval, W=clean_net.W)
    else:
        clean_eval = got[0]
    def shaped(doc, W):  # the shape measures of the current code, from the saved weights
        return {**doc, "shape": update_shape(clean_net.W, W, problem.M, problem.wstar)}

    runs = {}
    for i, s in enumerate(cfg.strategies):
        runs[s] = shaped(*_run_piece(ctx, f"strategy_{s}", s, None, seed=1 + i))
    control = None
    if cfg.control:
        control = shaped(*_run_piece(ctx, "control_random", "random", None, seed=50,
                                     fixed_steps=runs["fgm"]["steps"]))
    lowrank = {}
    s1 = runs["fgm"]["shape"]["singular_values"][0]
    for method in cfg.lowrank_methods:
        lowrank[method] = {}
        for r in cfg.ranks:
            name = f"lowrank_r{r}" if method == "gd" else f"lowrank_{method}_r{r}"
            lowrank[method][str(r)] = shaped(*_run_piece(ctx, name, "fgm", r, seed=100 + r, s1=s1, method=method))
    doc = {"config": cfg.to_dict(), "versions": versions(), "command": command,
           "clean": {**clean_doc, **clean_eval}, "strategies": runs, "control_random": control,
           "lowrank": lowrank}
    doc["summary"] = summarize(doc, cfg)
    doc["claims"] = claims(doc["summary"], cfg)
    doc["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "strategies.json", doc)
    write_figures(doc, figures if figures is not None else out / "figures", command)
    return doc


def summarize(doc: dict, cfg: StrategiesConfig) -> dict:
    """The numbers C7 and C8 are read from."""
    pl = cfg.plateau()
    fgm = doc["strategies"]["fgm"]
    fgm_plateau = pl.plateau_value(fgm["curve"])
    level = cfg.reach_level * fgm_plateau
    rows = {}
    for s, r in doc["strategies"].items():
        rows[s] = {"steps": r["steps"], "converged": r["converged"], "grad_evals": r["grad_evals"],
                   "train_seconds": r["train_seconds"], "plateau_cheap": pl.plateau_value(r["curve"]),
                   "robust_acc": r["final"]["robust_acc"], "certified_acc": r["final"].get("certified_acc"),
                   "clean_acc": r["final"]["clean_acc"],
                   "reach": reach(r["curve"], level, r["grad_evals_per_step"]),
                   "energy_top": r["shape"]["energy_top"], "cos_top_right": r["shape"]["cos_top_right"],
                   "along_wstar_share": r["shape"]["along_wstar_share"],
                   "against_clean_share": r["shape"]["against_clean_share"]}
    clean_robust = doc["clean"]["final"]["robust_acc"]
    full_gain = fgm["final"]["robust_acc"] - clean_robust
    ranks, smallest = {}, {}
    for method, runs in doc["lowrank"].items():
        ranks[method] = {}
        for r, x in runs.items():
            gain = x["final"]["robust_acc"] - clean_robust
            ranks[method][r] = {
                "steps": x["steps"], "converged": x["converged"], "lr": x["lr"], "init": x.get("init"),
                "robust_acc": x["final"]["robust_acc"], "certified_acc": x["final"].get("certified_acc"),
                "clean_acc": x["final"]["clean_acc"], "gain": gain,
                "gain_share": gain / full_gain if full_gain > 0 else None, "frobenius": x["shape"]["frobenius"],
                "cos_top_right": x["shape"]["cos_top_right"], "along_wstar_share": x["shape"]["along_wstar_share"],
                "against_clean_share": x["shape"]["against_clean_share"]}
        smallest[method] = next((int(r) for r, x in sorted(ranks[method].items(), key=lambda kv: int(kv[0]))
                                 if x["gain_share"] is not None and x["gain_share"] >= cfg.gain_level), None)
    ctrl = doc.get("control_random")
    return {"fgm_plateau_cheap": fgm_plateau, "reach_level_cheap": level, "strategies": rows,
            "clean_robust_acc": clean_robust, "clean_certified_acc": doc["clean"]["final"].get("certified_acc"),
            "full_gain": full_gain, "ranks": ranks, "smallest_rank_reaching": smallest,
            "control": None if ctrl is None else {
                "steps": ctrl["steps"], "robust_acc": ctrl["final"]["robust_acc"],
                "certified_acc": ctrl["final"].get("certified_acc"), "energy_top": ctrl["shape"]["energy_top"],
                "cos_top_right": ctrl["shape"]["cos_top_right"], "along_wstar_share": ctrl["shape"]["along_wstar_share"],
                "against_clean_share": ctrl["shape"]["against_clean_share"]}}


def claims(summary: dict, cfg: StrategiesConfig) -> list[dict]:
    from .verify import Claim

    out = []
    tag = f"{cfg.norm} tau={cfg.tau:g}"
    rows = summary["strategies"]
    attack = f"best of PGD-{cfg.pgd_steps}x{cfg.pgd_restarts}, FGM, dense, random"
    for s, r in rows.items():
        if s == "fgm":
            continue
        cert = r["certified_acc"]
        out.append(Claim(f"C7-robust-{s}", f"{s}-trained network: robust accuracy at {tag} ({attack}); certified "
                         f"{'n/a' if cert is None else f'{cert:.3f}'}; {'converged' if r['converged'] else 'NOT converged'}"
                         f" after {r['steps']} steps", r["robust_acc"], f">= {cfg.robust_threshold:g}",
                         r["robust_acc"] >= cfg.robust_threshold))
    single = rows.get("fgm_rs")
    for s, r in rows.items():
        if not s.startswith("pgd") or single is None:
            continue
        a, b = r["reach"], single["reach"]
        ratio = None if a["step"] is None or b["step"] is None else a["step"] / max(b["step"], 1)
        holds = a["step"] is not None and (b["step"] is None or a["step"] < b["step"])
        ev = None if ratio is None else a["grad_evals"] / max(b["grad_evals"], 1)
        out.append(Claim(
            f"C7-steps-{s}", f"training steps of {s} / steps of fgm_rs to reach {cfg.reach_level:g} x the FGM plateau "
            f"of the cheap robust accuracy ({summary['reach_level_cheap']:.3f}): {a['step']} vs {b['step']} steps; "
            f"gradient evaluations {a['grad_evals']} vs {b['grad_evals']} (ratio "
            f"{'n/a' if ev is None else f'{ev:.2f}'}), seconds "
            f"{_f(a['seconds'])} vs {_f(b['seconds'])}", ratio, "< 1", holds))
    ctrl = summary["control"]
    fgm_e = rows["fgm"]["energy_top"][str(cfg.c8_energy_k)] if str(cfg.c8_energy_k) in rows["fgm"]["energy_top"] \
        else None
    if fgm_e is not None:
        ctrl_e = None if ctrl is None else ctrl["energy_top"][str(cfg.c8_energy_k)]
        out.append(Claim(
            "C8-spectrum", f"share of the FGM update's energy (|W_adv - W_clean|_F^2) in its top {cfg.c8_energy_k} "
            f"directions; random-noise control {'n/a' if ctrl_e is None else f'{ctrl_e:.3f}'}; |cos| of the top "
            f"direction with M w*: {rows['fgm']['cos_top_right']:.3f}", fgm_e,
            f">= {cfg.c8_energy_min:g} [ours] and > control", fgm_e >= cfg.c8_energy_min
            and (ctrl_e is None or fgm_e > ctrl_e)))
    names = {"scaled": "ScaledGD", "gd": "plain GD"}
    for method, ranks in summary["ranks"].items():
        if not ranks:
            continue
        sm = summary["smallest_rank_reaching"][method]
        shares = ", ".join(f"r={r}: {_f(x['gain_share'])}{'' if x['converged'] else ' (cap)'}" for r, x in
                           sorted(ranks.items(), key=lambda kv: int(kv[0])))
        out.append(Claim(
            "C8-rank" + ("" if method == "scaled" else f"-{method}"),
            f"smallest rank r of W_clean + U V^T (FGM training, {names[method]} on the factors) whose robust-accuracy "
            f"gain reaches {cfg.gain_level:g} x the full update's ({summary['full_gain']:.3f}); gain shares {shares}",
            sm, f"<= {cfg.c8_max_rank} [ours]", sm is not None and sm <= cfg.c8_max_rank))
    return [c.to_dict() for c in out]


def _f(v, fmt=".3g"):
    return "n/a" if v is None else format(v, fmt)


# ----------------------------------------------------------------------------- figures

def _save(fig, out: Path, stem: str, sidecar: dict) -> list[Path]:
    """PNG + SVG + a JSON sidecar, each written atomically (as sim.plot does)."""
    import io

    import matplotlib.pyplot as plt

    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        kw = {"dpi": 110} if fmt == "png" else {"metadata": {"Date": None}}
        fig.savefig(buf, format=fmt, bbox_inches="tight", **kw)
        atomic_write_bytes(out / f"{stem}.{fmt}", buf.getvalue())
        paths.append(out / f"{stem}.{fmt}")
    plt.close(fig)
    atomic_write_json(out / f"{stem}.json", {**sidecar, "figure": stem, "files": [p.name for p in paths]})
    return paths + [out / f"{stem}.json"]


def write_figures(doc: dict, out: Path, command: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sweep import git_commit

    out = Path(out)
    cfg = doc["config"]
    base = {"command": command, "git": git_commit(), "config": cfg, "claims": doc["claims"]}
    written = []
    tag = f"d={cfg['run']['data']['d']}, {cfg['norm']} tau={cfg['tau']:g}"
    # robust accuracy against steps, gradient evaluations, seconds
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (s, r) in enumerate(doc["strategies"].items()):
        col = f"C{i}"
        steps = np.array([c["step"] for c in r["curve"]])
        val = [c["value"] for c in r["curve"]]
        xs = (steps, steps * r["grad_evals_per_step"], [c["seconds"] for c in r["curve"]])
        for ax, x in zip(axes, xs):
            ax.plot(x, val, "-", color=col, lw=1.3,
                    label=f"{s} ({'converged' if r['converged'] else 'cap'} at {r['steps']})")
        f = r["final"]
        lo = f.get("certified_acc", f["robust_acc"])
        axes[0].errorbar([r["steps"]], [(lo + f["robust_acc"]) / 2], yerr=[[(f["robust_acc"] - lo) / 2]] * 2,
                         fmt="o", color=col, ms=4, capsize=3)
    lvl = doc["summary"]["reach_level_cheap"]
    for ax, xl in zip(axes, ("training step", "gradient evaluations (batch passes)", "training seconds")):
        ax.axhline(lvl, color="grey", ls=":", lw=1)
        ax.set(xlabel=xl, ylabel="robust accuracy (cheap, held-out)", ylim=(-0.02, 1.02))
    axes[0].set_title(f"strategies, {tag}\n(bars at the end: [certified, attacked], strong evaluation)", fontsize=9)
    axes[0].legend(fontsize=8)
    written += _save(fig, out, "strategies_robust_vs_compute", {**base, "data": doc["summary"]["strategies"]})
    # spectrum of the update
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    shapes = {s: r["shape"] for s, r in doc["strategies"].items()}
    if doc.get("control_random"):
        shapes["random control"] = doc["control_random"]["shape"]
    for i, (s, sh) in enumerate(shapes.items()):
        sv = np.array(sh["singular_values"])
        k = np.arange(1, len(sv) + 1)
        axes[0].semilogy(k, sv / sv[0], "o-", ms=3, color=f"C{i}",
                         label=f"{s} (|cos v1, Mw*| {sh['cos_top_right']:.2f}; against clean "
                               f"{sh['against_clean_share']:.2f})")
        axes[1].plot(k, sh["energy_cumulative"], "o-", ms=3, color=f"C{i}", label=s)
    axes[0].set(xlabel="index i", ylabel="s_i / s_1", title=f"singular values of W_adv - W_clean ({tag})")
    axes[1].set(xlabel="k", ylabel="energy share of the top k directions", ylim=(0, 1.02),
                title="cumulative energy of the update")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    written += _save(fig, out, "strategies_update_spectrum", {**base, "data": {
        s: {k: sh[k] for k in ("singular_values", "energy_top", "energy_top_dict", "cos_top_right", "cos_top_right_dict",
                               "along_wstar_share", "against_clean_share")}
        for s, sh in shapes.items()}})
    # robust accuracy against rank
    if any(doc["lowrank"].values()):
        d = cfg["run"]["data"]["d"]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        full = doc["strategies"]["fgm"]["final"]
        names = {"scaled": "ScaledGD", "gd": "plain GD"}
        for i, (method, runs) in enumerate(doc["lowrank"].items()):
            ranks = sorted(runs, key=int)
            xs = [int(r) for r in ranks] + [d]
            att = [runs[r]["final"]["robust_acc"] for r in ranks] + [full["robust_acc"]]
            cer = [runs[r]["final"].get("certified_acc", np.nan) for r in ranks] + [full.get("certified_acc", np.nan)]
            ax.semilogx(xs, att, "o-", base=2, color=f"C{i}", label=f"{names[method]}: attacked (strong)")
            ax.semilogx(xs, cer, "x--", base=2, color=f"C{i}", label=f"{names[method]}: certified")
        cr = doc["summary"]["clean_robust_acc"]
        ax.axhline(cr, color="grey", ls=":", lw=1, label="clean network")
        ax.axhline(cr + doc["config"]["gain_level"] * doc["summary"]["full_gain"], color="C3", ls=":", lw=1,
                   label=f"{doc['config']['gain_level']:g} of the full gain")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs[:-1]] + [f"full ({d})"])
        ax.set(xlabel="rank r of the update U V^T", ylabel="robust accuracy", ylim=(-0.02, 1.02),
               title=f"low-rank FGM training, {tag}\n(full = FGM training of W itself)")
        ax.legend(fontsize=8)
        written += _save(fig, out, "strategies_robust_vs_rank", {**base, "data": doc["summary"]["ranks"]})
    return written


# ----------------------------------------------------------------------------- command line

def config_with_sets(cfg: StrategiesConfig, sets: list[str]) -> StrategiesConfig:
    """cfg with FIELD=VALUE (or run.data.d=VALUE) overrides, validated."""
    from .cli import parse_assignment

    d = cfg.to_dict()
    for text in sets:
        path, value = parse_assignment(text)
        node = d
        for key in path[:-1]:
            if key not in node or not isinstance(node[key], dict):
                raise ConfigError(f"--set {text!r}: unknown section {key!r}")
            node = node[key]
        if path[-1] not in node:
            raise ConfigError(f"--set {text!r}: unknown parameter {'.'.join(path)!r}")
        node[path[-1]] = value
    data = d["run"]["data"]
    if data["d"] != cfg.run.data.d and data["D"] == cfg.run.data.D == cfg.run.data.d:
        data["D"] = None  # D followed d (the default D = d): let it follow the new d
    return StrategiesConfig.from_dict(d)


def _cmd_strategies(args) -> int:
    from .report import claims_table

    cfg = config_with_sets(quick_config() if args.quick else StrategiesConfig(), args.set)
    command = "python -m sim " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m sim experiments strategies"
    doc = run_strategies(cfg, Path(args.out), quiet=args.quiet, figures=Path(args.figures) if args.figures else None,
                         command=command)
    print(claims_table(doc["claims"]))
    holds = sum(c["holds"] for c in doc["claims"])
    print(f"\n{holds} of {len(doc['claims'])} claims hold; {doc['seconds']:.0f} s; {Path(args.out) / 'strategies.json'}")
    return 0


def add_experiments_command(sub) -> None:
    """`python -m sim experiments strategies ...` on the top-level subparsers."""
    e = sub.add_parser("experiments", help="further experiments of the paper (strategies and low-rank updates)")
    esub = e.add_subparsers(dest="experiment", required=True)
    p = esub.add_parser("strategies", help="C7 and C8: FGM / FGM-RS / PGD-k training compared; low-rank updates")
    p.add_argument("--quick", action="store_true", help="the small version (d = 64), about 2 minutes")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a StrategiesConfig field, e.g. --set max_steps=300 or --set run.data.d=256")
    p.add_argument("--out", default="runs/strategies", help="output directory (default runs/strategies)")
    p.add_argument("--figures", help="where the figures go (default OUT/figures)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_strategies)
