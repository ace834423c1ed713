"""The presets: everything a run needs besides data location and device. Free of torch,
so the command line lists and validates them before importing it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cifar.config import MODES, ConfigError, EnsembleConfig, MaskingConfig, TrainConfig, check_budget, check_threat

DEFAULT_THREATS = (("linf", 8 / 255), ("l2", 0.5))


@dataclass
class Preset:
    """Everything a run needs besides data location and device.

    Time budgets (seconds, None = none; see docs/cifar_gpu_budget.md): each training run
    has its own in its TrainConfig (``lowrank_budget_s`` replaces the fine-tuning budget for
    the rank-r runs); ``eval_budget_s`` is per model. A stage that reaches its budget stops
    cleanly (training: annealed schedule, fewer steps; evaluation: fewer points, then the
    masking checks and the other threat models skipped) and the report flags it.
    ``budget_s`` is what the whole run is meant to take."""

    name: str
    description: str
    model: str
    model_kwargs: dict
    n_train: int | None
    n_test: int | None
    clean: TrainConfig
    adv_finetune: TrainConfig
    adv_scratch: TrainConfig | None
    ranks: tuple[int, ...]
    lowrank_train_vectors: bool = True
    lowrank_budget_s: float | None = None
    scratch_same_init: bool = True
    eval_batch: int = 1000
    ensemble_batch: int | None = None
    eval_pgd_n: int = 1000
    pgd_steps: int = 50
    pgd_restarts: int = 2
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    eval_budget_s: float | None = None
    clean_target: float | None = None
    eval_amp: bool | None = None
    expects_gpu: bool = False
    budget_s: float | None = None
    save_checkpoints: bool = True
    cpu_threads: int | None = None
    seed: int = 0

    @property
    def threat(self) -> tuple[str, float]:
        return self.adv_finetune.norm, self.adv_finetune.eps

    def lowrank_config(self) -> TrainConfig:
        """The fine-tuning config of the rank-r runs (the full run's, with their own budget)."""
        if self.lowrank_budget_s is None:
            return self.adv_finetune
        return replace(self.adv_finetune, budget_s=self.lowrank_budget_s)

    def validate(self) -> "Preset":
        adv = [self.adv_finetune] + ([self.adv_scratch] if self.adv_scratch is not None else [])
        for cfg in [self.clean] + adv:
            cfg.validate()
        if self.clean.mode != "clean" or any(cfg.mode == "clean" for cfg in adv):
            raise ConfigError("preset: 'clean' must use mode 'clean', the adversarial runs 'pgd' or 'fgsm'")
        if self.adv_scratch is not None and (self.adv_scratch.norm, self.adv_scratch.eps) != self.threat:
            raise ConfigError("preset: fine-tuning and from-scratch adversarial training must share norm and eps")
        if not self.ranks or any(not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ConfigError(f"ranks must be a non-empty list of positive integers, got {self.ranks!r}")
        for name in ("lowrank_budget_s", "eval_budget_s", "budget_s"):
            check_budget(name, getattr(self, name))
        for name in ("eval_batch", "eval_pgd_n", "pgd_steps", "pgd_restarts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ensemble_batch is not None and self.ensemble_batch < 1:
            raise ConfigError(f"ensemble_batch must be >= 1 or None, got {self.ensemble_batch}")
        return self


def _smoke() -> Preset:
    common = dict(batch_size=50, pad=4, guard_checks_per_epoch=1, guard_n=100, guard_steps=3)
    return Preset(
        name="smoke",
        description="CPU plumbing check: tiny CNN, 500 train / 100 test images, every stage, well under a minute.",
        model="small_cnn",
        model_kwargs={"widths": (8, 16, 32)},
        n_train=500,
        n_test=100,
        clean=TrainConfig(mode="clean", epochs=8, lr=0.05, label_smoothing=0.1, warmup=0.2, **common),
        adv_finetune=TrainConfig(mode="pgd", steps=3, epochs=3, lr=0.02, warmup=0.1, **common),
        adv_scratch=TrainConfig(mode="fgsm", epochs=6, lr=0.05, warmup=0.3, **common),
        ranks=(1, 4),
        eval_batch=100,
        eval_pgd_n=64,
        pgd_steps=10,
        pgd_restarts=2,
        ensemble=EnsembleConfig(n=48, apgd_steps=10, n_targets=2, square_queries=50),
        masking=MaskingConfig(n=32, pgd_steps=5, square_queries=50, radii=(0.5, 2.0, 8.0)),
        save_checkpoints=True,
        cpu_threads=1,
    )


def _tiny() -> Preset:
    """The gpu preset's structure at CPU scale, with budgets small enough to bind: the
    rehearsal of scripts/cifar_gpu_run.sh on a machine without a GPU."""
    ft = dict(mode="fgsm", batch_size=100, guard_checks_per_epoch=1, guard_n=64, guard_steps=5)
    return Preset(
        name="tiny",
        description=("CPU rehearsal of the gpu preset (a few minutes): PreActResNet-18 at width 8 on 1,000 train / 200 test "
                     "images, clean training, FGSM-RS fine-tuning in full and at ranks 1/4/16, PGD-10 x2, the ensemble, "
                     "masking checks, with time budgets small enough that some stop their stage."),
        model="preact_resnet18",
        model_kwargs={"width": 8},
        n_train=1000,
        n_test=200,
        clean=TrainConfig(mode="clean", epochs=4, batch_size=100, lr=0.1, label_smoothing=0.1, warmup=0.2, budget_s=40.0),
        adv_finetune=TrainConfig(epochs=2, lr=0.05, warmup=0.1, budget_s=30.0, **ft),
        adv_scratch=None,
        ranks=(1, 4, 16),
        lowrank_budget_s=6.0,
        eval_batch=50,
        ensemble_batch=25,
        eval_pgd_n=100,
        pgd_steps=10,
        pgd_restarts=2,
        ensemble=EnsembleConfig(n=50, apgd_steps=10, n_targets=2, square_queries=50),
        masking=MaskingConfig(n=32, pgd_steps=5, square_queries=50, radii=(0.5, 2.0, 8.0)),
        eval_budget_s=12.0,
        eval_amp=False,
        budget_s=300.0,
        cpu_threads=1,
    )


def _gpu() -> Preset:
    """One H100/H200 in about 7 minutes; the budgets and their reasoning are in
    docs/cifar_gpu_budget.md (planned epochs are upper bounds, the budgets decide)."""
    ft = dict(mode="fgsm", batch_size=512, epochs=10, lr=0.05, warmup=0.1, guard_checks_per_epoch=1, guard_n=256, guard_steps=10)
    return Preset(
        name="gpu",
        description=(
            "The GPU experiment, about 7 minutes on one H100/H200 (time budgets per stage; not yet run on a GPU): "
            "PreActResNet-18 on all 50k images, clean training (target >= 93% test accuracy), FGSM-RS fine-tuning "
            "from the clean weights in full and at ranks 1/4/16, PGD-50 x2 restarts on 1,000 test images, the "
            "APGD-CE/APGD-T/Square ensemble on 500, masking checks, purification measures and filter pictures."
        ),
        model="preact_resnet18",
        model_kwargs={},
        n_train=None,
        n_test=None,
        clean=TrainConfig(mode="clean", epochs=35, batch_size=512, lr=0.2, label_smoothing=0.1, warmup=0.15, budget_s=120.0),
        adv_finetune=TrainConfig(budget_s=38.0, **ft),
        adv_scratch=None,
        ranks=(1, 4, 16),
        lowrank_budget_s=38.0,
        eval_batch=500,
        ensemble_batch=250,
        eval_pgd_n=1000,
        pgd_steps=50,
        pgd_restarts=2,
        ensemble=EnsembleConfig(n=500, apgd_steps=50, n_targets=3, square_queries=1000),
        masking=MaskingConfig(n=200, pgd_steps=20, square_queries=500),
        eval_budget_s=28.0,
        clean_target=0.93,
        eval_amp=False,
        expects_gpu=True,
        budget_s=420.0,
    )


def _fast() -> Preset:
    adv = dict(batch_size=512, mode="fgsm", guard_checks_per_epoch=2, guard_n=512, guard_steps=10)
    return Preset(
        name="fast",
        description="Quicker GPU run (not yet run on a GPU): small CNN on all images, ranks 1..16, lighter evaluation, adversarial training from scratch too.",
        model="small_cnn",
        model_kwargs={"widths": (64, 128, 256)},
        n_train=None,
        n_test=None,
        clean=TrainConfig(mode="clean", epochs=15, batch_size=512, lr=0.2, label_smoothing=0.1, warmup=0.2),
        adv_finetune=TrainConfig(epochs=3, lr=0.05, warmup=0.1, **adv),
        adv_scratch=TrainConfig(epochs=10, lr=0.2, warmup=0.4, **adv),
        ranks=(1, 2, 4, 8, 16),
        eval_pgd_n=1000,
        pgd_steps=20,
        pgd_restarts=1,
        ensemble=EnsembleConfig(n=500, apgd_steps=50, n_targets=3, square_queries=500),
        masking=MaskingConfig(n=200, pgd_steps=20, square_queries=300),
        eval_amp=False,
        expects_gpu=True,
        budget_s=300.0,
    )


PRESETS = {"smoke": _smoke, "tiny": _tiny, "fast": _fast, "gpu": _gpu}


def get_preset(name: str, norm: str | None = None, eps: float | None = None, ranks=None, adv_mode: str | None = None) -> Preset:
    """A preset by name, with optional overrides of the threat model, ranks and adversarial mode."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    p = PRESETS[name]()
    changes = {}
    if norm is not None or eps is not None:
        n = norm if norm is not None else p.threat[0]
        e = eps if eps is not None else (p.threat[1] if n == p.threat[0] else dict(DEFAULT_THREATS).get(n))
        check_threat(n, e)
        changes.update(norm=n, eps=e)
    if adv_mode is not None:
        if adv_mode not in MODES[1:]:
            raise ConfigError(f"adv_mode must be one of {MODES[1:]}, got {adv_mode!r}")
        changes["mode"] = adv_mode
    if changes:
        p.adv_finetune = replace(p.adv_finetune, **changes)
        if p.adv_scratch is not None:
            p.adv_scratch = replace(p.adv_scratch, **changes)
    if ranks is not None:
        p.ranks = tuple(ranks)
    return p.validate()
