"""A clean-training run written to a run directory (`python -m sim train`).

The directory holds everything needed to trust and reuse the run: the full config
(config.json, from which the data regenerate exactly), data.json (acceptance rates and
checksums of the generated sets), metrics.jsonl, snapshots/step_NNNNNNN.npz, and
weights.npz with the final state, and run.json (what marks the folder as this run: see
sim.common.outdir). Every file is written atomically. A folder that holds another run is
refused; resume=True continues a run of the same config from its last snapshot, with the
same numbers as an uninterrupted run; overwrite=True clears the folder first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.common.files import atomic_save_npz, atomic_write_json
from sim.common.meta import versions
from sim.common.outdir import prepare_out_dir
from sim.model.config import RunConfig
from sim.model.data import Dataset, Problem
from sim.model.network import TwoLayerNet

from .loop import evaluate, gradient_descent
from .plateau import Plateau
from .rundir import MetricsLog, array_digest, read_jsonl


def save_net(path: Path, net: TwoLayerNet, step: int | None = None) -> None:
    extra = {} if step is None else {"step": np.int64(step)}
    atomic_save_npz(path, W=net.W, b=net.b, beta=np.float64(net.beta), **extra)


def load_net(path: Path, cfg: RunConfig) -> TwoLayerNet:
    with np.load(path) as z:
        return TwoLayerNet(z["W"], cfg.model, z["b"], float(z["beta"]))


@dataclass
class CleanRun:
    """The outcome of clean training: the problem, its data, the trained net and W at init."""

    cfg: RunConfig
    problem: Problem
    train: Dataset
    test: Dataset
    net: TwoLayerNet
    W_init: np.ndarray
    snapshots: dict
    log: MetricsLog
    seconds: float
    convergence: dict | None = None  # sim.train.plateau.Plateau.record: steps, converged, curve, criterion


def data_summary(train: Dataset, test: Dataset) -> dict:
    return {"train_acceptance_rate": train.acceptance_rate, "test_acceptance_rate": test.acceptance_rate,
            "train_x_sha256": array_digest(train.x), "test_x_sha256": array_digest(test.x),
            "train_positive_share": float(np.mean(train.y > 0)),
            "mean_active_atoms": float(np.mean(np.count_nonzero(train.z, axis=1)))}


RUN_FILES = ("config.json", "metrics.jsonl", "snapshots", "weights.npz")  # a run folder from before run.json


def last_snapshot(out: Path) -> tuple[int, Path] | None:
    """(step, path) of the latest readable snapshot of a run folder, or None."""
    for path in sorted((Path(out) / "snapshots").glob("step_*.npz"), reverse=True):
        try:
            with np.load(path) as z:
                if {"W", "b", "beta"} <= set(z.files):
                    return int(path.stem.split("_")[1]), path
        except (OSError, ValueError):
            continue
    return None


def train_clean(cfg: RunConfig, out: Path | None = None, quiet: bool = False, *, resume: bool = False,
                overwrite: bool = False) -> CleanRun:
    """Generate the data, initialise, train by gradient descent; write `out` if given.

    out must be new, empty, or hold a run of this config with resume=True (training goes on
    from its last snapshot) or any run with overwrite=True (cleared); see sim.common.outdir.
    """
    t0 = time.perf_counter()
    resuming = False
    if out is not None:
        out = Path(out)
        resuming = prepare_out_dir(out, "sim train", cfg.to_dict(), resume=resume, overwrite=overwrite,
                                   run_files=RUN_FILES)
    problem = Problem.from_config(cfg.data)
    train = problem.train_set() if cfg.train.mode == "full_batch" else None
    test = problem.test_set()
    net = TwoLayerNet.init(cfg, np.dtype(cfg.train.dtype))
    W_init = net.W.copy()
    snapshots: dict[int, np.ndarray] = {}
    start, kept_rows = 0, None
    if resuming and (last := last_snapshot(out)) is not None:
        start, path = last
        net = load_net(path, cfg)
        for p in sorted((out / "snapshots").glob("step_*.npz")):
            step = int(p.stem.split("_")[1])
            if step <= start:
                with np.load(p) as z:
                    snapshots[step] = z["W"].copy()
        old = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
        kept_rows = [r for r in old if r.get("step", -1) < start and not r.get("final")]
    if out is not None:
        atomic_write_json(out / "config.json", cfg.to_dict())
        if train is not None:
            atomic_write_json(out / "data.json", data_summary(train, test))

    def on_snapshot(step, n):
        snapshots[step] = n.W.copy()
        if out is not None:
            save_net(out / "snapshots" / f"step_{step:07d}.npz", n, step)

    tc = cfg.train
    # the plateau criterion on the clean accuracy of the training set (full batch; online
    # mode: of the test set), checked every plateau_every steps (0: every eval_every steps,
    # a fixed-length run judged at its end); a resumed run's curve starts where it resumed
    plateau = Plateau("clean accuracy of the " + ("training set" if train is not None else "test set"),
                      tc.plateau_every or tc.eval_every, tc.plateau_min_steps, tc.steps, tc.plateau_tol,
                      enabled=tc.plateau_every > 0)
    check_set = train if train is not None else test

    def on_check(step, n):
        return plateau.update(step, evaluate(n, check_set)["acc"])

    log = MetricsLog(out / "metrics.jsonl" if out is not None else None, keep=kept_rows)
    try:
        gradient_descent(net, problem, train, test, cfg.train, log=log, on_snapshot=on_snapshot,
                         on_check=on_check, check_every=plateau.every, quiet=quiet,
                         desc="clean training" + (f" (resumed at step {start})" if start else ""), start=start)
    finally:
        log.close()
    steps_run = net.steps_run
    seconds = time.perf_counter() - t0
    if out is not None:
        save_net(out / "weights.npz", net, steps_run)
        final = evaluate(net, test)
        atomic_write_json(out / "summary.json", {"test_acc": final["acc"], "test_loss": final["loss"],
                                                "seconds": seconds, "training": plateau.record(steps_run),
                                                "versions": versions()})
    return CleanRun(cfg, problem, train, test, net, W_init, snapshots, log, seconds, plateau.record(steps_run))
