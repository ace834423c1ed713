"""Frozen, validated configurations for data, network and training.

Every choice that SPEC.md marks [ours] is a field here with a documented default,
so a user who has the paper can set it. Configs are checked when they are built:
an invalid value stops with a ConfigError naming the parameter, its value and the
allowed range, before any work is done.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from sim.common.validation import ConfigError, _check_choice, _check_int, _check_real, _fail  # noqa: F401 - re-exported


class _Frozen:
    """Shared dict round-trip for the config dataclasses."""

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Frozen) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict, prefix: str = ""):
        known = {f.name: f for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown parameter '{prefix}{key}'; allowed: {', '.join(known)}")
        kwargs = {}
        for key, value in d.items():
            sub = _NESTED.get((cls.__name__, key))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value, prefix=f"{prefix}{key}.")
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DataConfig(_Frozen):
    """The sparse-coding data model x = M z + xi, y = sgn<w*, z> (SPEC section 1).

    d: input dimension. D: number of atoms (None -> d). dictionary: 'orthogonal'
    (Haar-random, D = d), 'identity' (D = d) or 'overcomplete' (D > d unit-norm
    Gaussian atoms). k: number of active atoms; sparsity [ours]: 'bernoulli' (each z_j is
    active with probability k/D, so the count is about Poisson(k)) or 'exact' (every
    sample has exactly n_active() = round(k) atoms, halves rounded up, drawn without
    replacement). magnitude: 'pm1' (|z_j| = 1) or 'uniform' (|z_j| ~ U[a_min, 1]).
    noise: total noise norm sigma*sqrt(d). margin: samples with |<w*, z>| < margin
    are redrawn (None -> 1 for pm1, a_min for uniform). seed: root of the
    SeedSequence from which dictionary, w*, train, test and init streams are spawned.
    """

    d: int = 256
    D: int | None = None
    dictionary: str = "orthogonal"
    k: float = 4.0
    sparsity: str = "bernoulli"
    magnitude: str = "pm1"
    a_min: float = 0.5
    noise: float = 0.05
    margin: float | None = None
    n_train: int = 6000
    n_test: int = 4000
    seed: int = 0

    def __post_init__(self):
        _check_int("d", self.d, lo=1)
        if self.D is None:
            object.__setattr__(self, "D", self.d)
        _check_int("D", self.D, lo=1)
        _check_choice("dictionary", self.dictionary, ("orthogonal", "identity", "overcomplete"))
        if self.dictionary in ("orthogonal", "identity") and self.D != self.d:
            _fail("D", self.D, f"D == d (= {self.d}) for dictionary={self.dictionary!r}")
        if self.dictionary == "overcomplete" and self.D <= self.d:
            _fail("D", self.D, f"D > d (= {self.d}) for dictionary='overcomplete'")
        _check_real("k", self.k, lo=0, hi=self.D, lo_open=True)
        _check_choice("sparsity", self.sparsity, ("bernoulli", "exact"))
        if self.sparsity == "exact" and self.n_active() < 1:
            _fail("k", self.k, "values >= 0.5 for sparsity='exact' (round(k) >= 1 active atoms)")
        _check_choice("magnitude", self.magnitude, ("pm1", "uniform"))
        _check_real("a_min", self.a_min, lo=0, hi=1, lo_open=True)
        _check_real("noise", self.noise, lo=0)
        if self.margin is None:
            object.__setattr__(self, "margin", 1.0 if self.magnitude == "pm1" else float(self.a_min))
        _check_real("margin", self.margin, lo=0)
        _check_int("n_train", self.n_train, lo=1)
        _check_int("n_test", self.n_test, lo=1)
        _check_int("seed", self.seed, lo=0)

    def n_active(self) -> int:
        """The number of active atoms of every sample under sparsity='exact': round(k), halves up."""
        return int(math.floor(self.k + 0.5))


@dataclass(frozen=True)
class ModelConfig(_Frozen):
    """The symmetric two-layer network f(x) = sum_i act(<w_i,x> - b_i) - act(-<w_i,x> - b_i).

    m: width (None -> 2 D). activation: 'relu' or 'smooth_relu' (0 below 0,
    z^q / (q rho^(q-1)) on [0, rho], z - (1 - 1/q) rho above). bias: 'fixed'
    (b_i = bias_value), 'relative' (b_i = beta * |w_i|, not differentiated),
    'trained' (b_i a parameter starting at bias_value) or 'schedule' (b_i =
    beta(t) * |w_i|, beta ramping linearly from beta to beta_end over ramp_steps).
    init_scale: std of the Gaussian init (None -> 0.1 / d).
    """

    m: int | None = None
    activation: str = "relu"
    q: int = 3
    rho: float = 0.1
    bias: str = "relative"
    bias_value: float = 0.0
    beta: float = 0.1
    beta_end: float = 0.3
    ramp_steps: int = 500
    init_scale: float | None = None

    def __post_init__(self):
        if self.m is not None:
            _check_int("m", self.m, lo=1)
        _check_choice("activation", self.activation, ("relu", "smooth_relu"))
        _check_int("q", self.q, lo=2, hi=8)
        _check_real("rho", self.rho, lo=0, lo_open=True)
        _check_choice("bias", self.bias, ("fixed", "relative", "trained", "schedule"))
        _check_real("bias_value", self.bias_value)
        _check_real("beta", self.beta, lo=0)
        _check_real("beta_end", self.beta_end, lo=0)
        _check_int("ramp_steps", self.ramp_steps, lo=1)
        if self.init_scale is not None:
            _check_real("init_scale", self.init_scale, lo=0, lo_open=True)


@dataclass(frozen=True)
class TrainConfig(_Frozen):
    """Gradient descent on the mean logistic loss.

    mode: 'full_batch' (exact gradient of the empirical loss on n_train samples) or
    'online' (a fresh batch of batch_size samples each step). snapshots: steps at
    which W is saved (step 0 is the init); snapshot_every: also every so many steps
    (0: never). eval_every: steps between test-set
    evaluations in the metrics log. dtype: 'float32' or 'float64'.
    warmup: linear learning-rate warm-up over the first `warmup` steps (0: none);
    lr_decay: inverse-time decay lr / (1 + lr_decay (t - warmup)) after it (0: constant).
    plateau_every: clean training stops early when its training accuracy has plateaued
    (sim.train.plateau: moved by < plateau_tol over the last quarter, checked every
    plateau_every steps, from plateau_min_steps on; steps is the cap); 0: a fixed-length
    run (its curve is still judged by the criterion at the end, every eval_every steps).
    """

    lr: float = 1.0
    steps: int = 300
    mode: str = "full_batch"
    batch_size: int = 1000
    dtype: str = "float32"
    snapshots: tuple = (0,)
    snapshot_every: int = 0
    eval_every: int = 25
    warmup: int = 0
    lr_decay: float = 0.0
    plateau_every: int = 0
    plateau_min_steps: int = 0
    plateau_tol: float = 0.005

    def __post_init__(self):
        _check_real("lr", self.lr, lo=0, lo_open=True)
        _check_int("steps", self.steps, lo=0)
        _check_choice("mode", self.mode, ("full_batch", "online"))
        _check_int("batch_size", self.batch_size, lo=1)
        _check_choice("dtype", self.dtype, ("float32", "float64"))
        snaps = tuple(self.snapshots)
        for s in snaps:
            _check_int("snapshots[]", s, lo=0, hi=self.steps)
        object.__setattr__(self, "snapshots", tuple(sorted(set(snaps))))
        _check_int("snapshot_every", self.snapshot_every, lo=0)
        _check_int("eval_every", self.eval_every, lo=1)
        _check_int("warmup", self.warmup, lo=0)
        _check_real("lr_decay", self.lr_decay, lo=0)
        _check_int("plateau_every", self.plateau_every, lo=0)
        _check_int("plateau_min_steps", self.plateau_min_steps, lo=0)
        _check_real("plateau_tol", self.plateau_tol, lo=0, lo_open=True)


@dataclass(frozen=True)
class RunConfig(_Frozen):
    """A whole clean-training run: data, model and training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def width(self) -> int:
        return self.model.m if self.model.m is not None else 2 * self.data.D

    def init_scale(self) -> float:
        s = self.model.init_scale
        return s if s is not None else 0.1 / self.data.d

    def __post_init__(self):
        for name, typ in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), typ):
                _fail(name, getattr(self, name), f"a {typ.__name__}")


_NESTED = {("RunConfig", "data"): DataConfig, ("RunConfig", "model"): ModelConfig,
           ("RunConfig", "train"): TrainConfig}
