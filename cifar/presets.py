"""The presets: everything a run needs besides data location and device. Free of torch,
so the command line lists and validates them before importing it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cifar.config import MODES, ConfigError, EnsembleConfig, MaskingConfig, TrainConfig, check_threat

DEFAULT_THREATS = (("linf", 8 / 255), ("l2", 0.5))


@dataclass
class Preset:
    """Everything a run needs besides data location and device."""

    name: str
    description: str
    model: str
    model_kwargs: dict
    n_train: int | None
    n_test: int | None
    clean: TrainConfig
    adv_finetune: TrainConfig
    adv_scratch: TrainConfig
    ranks: tuple[int, ...]
    lowrank_train_vectors: bool = True
    scratch_same_init: bool = True
    eval_batch: int = 1000
    eval_pgd_n: int = 1000
    pgd_steps: int = 50
    pgd_restarts: int = 2
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
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

    def validate(self) -> "Preset":
        for cfg in (self.clean, self.adv_finetune, self.adv_scratch):
            cfg.validate()
        if self.clean.mode != "clean" or self.adv_finetune.mode == "clean" or self.adv_scratch.mode == "clean":
            raise ConfigError("preset: 'clean' must use mode 'clean', the adversarial runs 'pgd' or 'fgsm'")
        if (self.adv_scratch.norm, self.adv_scratch.eps) != self.threat:
            raise ConfigError("preset: fine-tuning and from-scratch adversarial training must share norm and eps")
        if not self.ranks or any(not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ConfigError(f"ranks must be a non-empty list of positive integers, got {self.ranks!r}")
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


def _gpu() -> Preset:
    adv = dict(batch_size=512, mode="fgsm", guard_checks_per_epoch=2, guard_n=512, guard_steps=10)
    return Preset(
        name="gpu",
        description=(
            "Full experiment for one GPU (H100/H200 class; not yet run on one): PreActResNet-18 on all 50k images, clean training "
            "(target >= 93% test accuracy), FGSM-RS fine-tuning from the clean weights in full and at ranks 1/4/16, "
            "FGSM-RS from scratch, PGD-50 x2 restarts and the APGD/Square ensemble."
        ),
        model="preact_resnet18",
        model_kwargs={},
        n_train=None,
        n_test=None,
        clean=TrainConfig(mode="clean", epochs=30, batch_size=512, lr=0.2, label_smoothing=0.1, warmup=0.15),
        adv_finetune=TrainConfig(epochs=5, lr=0.05, warmup=0.1, **adv),
        adv_scratch=TrainConfig(epochs=15, lr=0.2, warmup=0.4, **adv),
        ranks=(1, 4, 16),
        eval_batch=1000,
        eval_pgd_n=1000,
        pgd_steps=50,
        pgd_restarts=2,
        ensemble=EnsembleConfig(n=500, apgd_steps=50, n_targets=3, square_queries=1000),
        masking=MaskingConfig(n=200, pgd_steps=20, square_queries=500),
        clean_target=0.93,
        eval_amp=False,
        expects_gpu=True,
        budget_s=600.0,
    )


def _fast() -> Preset:
    adv = dict(batch_size=512, mode="fgsm", guard_checks_per_epoch=2, guard_n=512, guard_steps=10)
    return Preset(
        name="fast",
        description="Quick GPU run (a few minutes): small CNN on all images, ranks 1..16, lighter evaluation.",
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


PRESETS = {"smoke": _smoke, "fast": _fast, "gpu": _gpu}


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
        p.adv_scratch = replace(p.adv_scratch, **changes)
    if ranks is not None:
        p.ranks = tuple(ranks)
    return p.validate()
