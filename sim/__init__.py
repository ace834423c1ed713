"""Simulation checks of Allen-Zhu & Li's feature purification theory (SPEC.md).

The packages read as the pipeline:

    sim.model        config, data (x = M z + noise), kernels, linalg, network, sparse, tuning
    sim.train        the gradient-descent loop, clean runs, adversarial training (full and low-rank),
                     run directories
    sim.attacks      FGM/FGSM, PGD, dense and random attacks, the masking check
    sim.certify      sound certificates, the exact MILP verifier, the gap diagnosis
    sim.measures     purification measures in the dictionary basis (C2, C4)
    sim.lowerbound   C5: linear, polynomial and NTK models
    sim.claims       the claims table (thresholds, C1-C8) and the C6 window
    sim.experiments  verify, its report, scaling (C6), strategies and low-rank updates (C7, C8)
    sim.sweep        sweeps over any config field, their store, analysis and figures
    sim.bench        the benchmark harness (torch only when it runs)
    sim.common       small shared helpers (validation, atomic files, metadata, figures, ...)
    sim.cli          `python -m sim train|verify|sweep|plot|bench|lowerbound|experiments`

The names below are imported on first use, so `import sim` stays light (no Numba
compilation, no torch).
"""
from __future__ import annotations

import importlib

_API = {
    "ConfigError": "sim.common.validation",
    "DataConfig": "sim.model.config",
    "ModelConfig": "sim.model.config",
    "TrainConfig": "sim.model.config",
    "RunConfig": "sim.model.config",
    "Problem": "sim.model.data",
    "TwoLayerNet": "sim.model.network",
    "gradient_descent": "sim.train.loop",
    "train_clean": "sim.train.clean",
    "adversarial_training": "sim.train.adversarial",
    "make_perturb": "sim.train.adversarial",
    "run_adversarial": "sim.train.adversarial",
    "margin_classes": "sim.model.data",
    "ideal_network": "sim.model.network",
    "evaluate_robustness": "sim.attacks",
    "certify": "sim.certify",
    "certify_radii": "sim.certify",
    "CLAIMS": "sim.claims",
    "VerifyConfig": "sim.experiments.verify",
    "run_verify": "sim.experiments.verify",
    "StrategiesConfig": "sim.experiments.strategies",
    "run_strategies": "sim.experiments.strategies",
    "load_spec": "sim.sweep",
    "run_sweep": "sim.sweep",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
