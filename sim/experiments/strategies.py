"""`python -m sim experiments strategies`: adversarial-training strategies compared (C7),
the shape of the adversarial update and low-rank adversarial training (C8).

From the same clean-trained network (the verify regime), adversarial training runs with
- fgm: FGM, the paper's perturbation (FGSM in l_inf);
- fgm_rs: FGM from a uniform random start in the ball, step rs_step * tau, projection back
  (FGSM-RS of Wong et al. 2020; sim.train.adversarial.Perturb kind 'fgm_rs');
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
robustify (attacked robust accuracy >= the C3 threshold: C7-robust in sim.claims), and PGD
reaches reach_level (95 %) of the FGM plateau (its cheap robust accuracy averaged over
its last quarter) in fewer training steps than FGM-RS; the gradient evaluations and
seconds to that level are reported next to it (the compute question has no threshold).

Shape of the update (for every run and for the random-noise control, trained for as
many steps as FGM): singular values of W_adv - W_clean and of (W_adv - W_clean) M (the
dictionary basis; with an orthogonal M the two spectra coincide and only the right
singular vectors rotate), the share of the squared Frobenius norm in the top 1, 2, 4
directions, and |cos| of the top right singular vector with M w* (with w* in the
dictionary basis).

C8: low-rank adversarial training W = W_clean + U V^T (sim.train.lowrank, FGM perturbation,
exact factor gradients, U = 0 and V random at the start, so the run starts exactly at
W_clean) for r in ranks; 'full' is the fgm run itself. Two optimisers of the factors
(lowrank_methods): 'scaled', ScaledGD (each factor's gradient right-preconditioned by the
other's damped Gram matrix, sim.train.lowrank.LowRankUpdate), step adv_lr / 2 so that W's step
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
update's gain in 600 steps (ScaledGD: 68 %). gain(r) = robust(r) - robust(clean)
(attacked); C8-rank holds if the smallest rank with gain >= gain_level * gain(full) is at
most its threshold, C8-spectrum if the FGM update has at least its threshold's share of
its energy in its top c8_energy_k directions and more than the random-noise control (the
thresholds, [ours], are in sim.claims; the claims and figures in strategies_report.py).

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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim import attacks
from sim.common.files import atomic_save_npz, atomic_write_json
from sim.common.meta import versions
from sim.common.overrides import apply_sets
from sim.model.config import (_NESTED, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, _check_choice,
                              _check_int, _check_real, _Frozen)
from sim.model.data import Problem
from sim.model.network import TwoLayerNet
from sim.train.adversarial import make_perturb
from sim.train.lowrank import AdvRun, FullUpdate, LowRankUpdate, Plateau, train_adversarial

from .strategies_report import claims, reach, summarize, write_figures  # noqa: F401 (reach: part of the API)

_STRATEGY = re.compile(r"^(fgm|fgm_rs|pgd([1-9][0-9]*))$")
MARGIN_CLASSES = ("<1", "1", "2", ">=3")


@dataclass(frozen=True)
class StrategiesConfig(_Frozen):
    """What `experiments strategies` runs. The regime is verify's (sim.experiments.verify.VerifyConfig:
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
    (sim.train.lowrank.Plateau) on the cheap robust accuracy of
    n_check held-out points. n_eval, pgd_steps, pgd_restarts, certify: the final
    evaluation. ranks, lowrank_methods ('scaled': ScaledGD, 'gd': plain GD on the factors),
    lowrank_init (column norm of V), lowrank_lr: low-rank training (None: the rules of the
    module docstring).
    reach_level, gain_level, c8_energy_k: what the claims measure (their thresholds are in
    sim.claims: C7-robust, C7-steps, C8-spectrum, C8-rank).
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
    gain_level: float = 0.90
    c8_energy_k: int = 2

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
        _check_real("gain_level", self.gain_level, lo=0, hi=1, lo_open=True)
        _check_int("c8_energy_k", self.c8_energy_k, lo=1)

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
        from sim.certify import certify

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


# ----------------------------------------------------------------------------- pieces

def config_hash(cfg: StrategiesConfig) -> str:
    """What every piece depends on: the config without the lists of runs, the claim levels,
    the step caps and min_steps (a finished run stays valid or goes on from its last state
    when they change, see _run_piece)."""
    d = cfg.to_dict()
    for k in ("strategies", "ranks", "reach_level", "robust_threshold", "gain_level", "c8_max_rank", "c8_energy_k",
              "c8_energy_min", "control", "max_steps", "lowrank_methods", "min_steps", "lowrank_max_steps"):
        d.pop(k, None)  # (robust_threshold, c8_max_rank, c8_energy_min: fields once, now sim.claims)
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
    from sim.train.clean import train_clean

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


def config_with_sets(cfg: StrategiesConfig, sets: list[str]) -> StrategiesConfig:
    """cfg with `--set FIELD=VALUE` (or run.data.d=VALUE) overrides, validated; a D that
    followed d (the default D = d) follows the new d."""
    d = apply_sets(cfg.to_dict(), sets)
    data = d["run"]["data"]
    if data["d"] != cfg.run.data.d and data["D"] == cfg.run.data.D == cfg.run.data.d:
        data["D"] = None
    return StrategiesConfig.from_dict(d)
