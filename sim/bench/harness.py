"""The timing harness: problems (cells), the engine's operations, interleaved repeats,
the dense and sparse cells, the report tables and run_bench."""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from sim.common.threads import blas_threads, set_numba_threads

from .config import ALT_LABEL, LR, TAU, BenchConfig
from .memory import PeakMemory
from .references import (blas_fgm, blas_pgd, blas_step, np_fgm_step, np_pgd, np_step, torch_fgm_step, torch_pgd,
                         torch_step)


# ---------------------------------------------------------------------------------------------
# problems


@dataclass
class Cell:
    d: int
    n: int
    dtype: str
    k: float = 4.0
    noise: float = 0.05
    m: int = 0

    def __post_init__(self):
        self.m = self.m or 2 * self.d

    @property
    def name(self) -> str:
        return f"d={self.d} N={self.n} m={self.m} {self.dtype}" + (f" k={self.k:g} noise={self.noise:g}")


@dataclass
class Instance:
    cell: Cell
    X: np.ndarray
    y: np.ndarray
    W: np.ndarray
    beta: float
    M: np.ndarray | None = None
    codes: object = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def input_bytes(self) -> int:
        return self.X.nbytes + self.y.nbytes + self.W.nbytes

    @property
    def budget_bytes(self) -> int:
        return 2 * (self.input_bytes + self.cell.n * self.cell.m * self.X.itemsize)


def make_instance(cell: Cell, seed: int = 0, keep_codes: bool = False) -> Instance:
    """Data of the sparse-coding model (SPEC section 1) and the default init of sim.

    The codes come from sim.data's sampler (margin redraw included) and the dictionary from
    sim.model.data.make_dictionary; x = M z is formed from the sparse codes (k terms per sample, the
    same numbers as z @ M.T up to rounding) and the noise is added in blocks, so that large
    cells do not need the float64 copies of Problem.sample.
    """
    from sim.model.config import DataConfig, ModelConfig, RunConfig
    from sim.model.data import STREAM_TRAIN, Problem, stream
    from sim.model.network import TwoLayerNet
    from sim.model.sparse import Codes, _codes_preacts

    t0 = time.perf_counter()
    dtype = np.dtype(cell.dtype)
    dcfg = DataConfig(d=cell.d, k=float(cell.k), noise=float(cell.noise), n_train=cell.n, n_test=1, seed=seed)
    problem = Problem.from_config(dcfg)
    rng = stream(dcfg, STREAM_TRAIN)
    z, _ = problem.sample_codes(cell.n, rng)
    y = np.sign(z @ problem.wstar)
    codes = Codes.from_dense(z)
    del z
    X = np.empty((cell.n, cell.d), dtype=dtype)
    MT = np.ascontiguousarray(problem.M.T, dtype=dtype)
    _codes_preacts(MT, codes.indptr, codes.indices, codes.values.astype(dtype), X)
    if cell.noise > 0:
        sigma = cell.noise / np.sqrt(cell.d)
        for lo in range(0, cell.n, 4096):
            hi = min(cell.n, lo + 4096)
            X[lo:hi] += (rng.standard_normal((hi - lo, cell.d)) * sigma).astype(dtype)
    rcfg = RunConfig(dcfg, ModelConfig(m=cell.m))
    net = TwoLayerNet.init(rcfg, dtype)
    inst = Instance(cell, X, y, net.W, float(net.beta), problem.M if keep_codes else None,
                    codes if keep_codes else None)
    inst.seconds = time.perf_counter() - t0
    return inst


# ---------------------------------------------------------------------------------------------
# the engine


def engine_step(net, X, y):
    _, gW, _, _ = net.loss_and_grad(X, y)
    return net.W - net.W.dtype.type(LR) * gW


def engine_fgm_step(net, X, y):
    """As sim.train runs FGM adversarial training (sim.train.adversarial.Perturb, fused in l2)."""
    from sim.train.adversarial import make_perturb

    _, gW, _, _ = make_perturb("fgm", TAU, "l2", None).loss_and_grad(net, X, y, 0)
    return net.W - net.W.dtype.type(LR) * gW


def alt_fgm_step(net, X, y):
    """The alternative: attack (sim.attacks.fgm), then the step on the perturbed points."""
    from sim import attacks

    Xa = np.ascontiguousarray(attacks.fgm(net, X, y, TAU, "l2").x_adv, dtype=net.W.dtype)
    return engine_step(net, Xa, y)


def alt_pgd(net, X, y, steps=20):
    """The alternative: PGD on the pre-activations through W W^T (TwoLayerNet.pgd_margins)."""
    return net.pgd_margins(X, y, TAU, steps=steps, restarts=1, random_start=False)


def engine_pgd(net, X, y, steps=20):
    from sim import attacks

    return attacks.pgd(net, X, y, TAU, "l2", steps=steps, restarts=1, random_start=False).margin


# ---------------------------------------------------------------------------------------------
# timing


def _set_threads(threads: int):
    import torch

    set_numba_threads(threads)
    torch.set_num_threads(threads)
    return blas_threads(threads)  # numpy's BLAS for (a) and (c); sim limits its own to 1


def _run_interleaved(fns: dict, repeats: int, say) -> dict:
    """{name: fn}: warm each once, then `repeats` rounds in rotating order; times and peaks."""
    names = list(fns)
    out = {k: {"times": [], "cpu": [], "peak_extra": []} for k in names}
    for k in names:  # warm-up: JIT compilation, first-touch allocations
        fns[k]()
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for k in order:
            with PeakMemory() as pm:
                c0 = time.process_time()
                t0 = time.perf_counter()
                fns[k]()
                dt = time.perf_counter() - t0
                dc = time.process_time() - c0
            out[k]["times"].append(dt)
            out[k]["cpu"].append(dc)
            if pm.extra is not None:
                out[k]["peak_extra"].append(pm.extra)
        say(f"    repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {out[k]['times'][-1]:.3f}s" for k in names))
    return out


def _summarise(raw: dict, subjects: tuple, input_bytes: int) -> dict:
    """Median times, peak memory, and for each subject (engine, alt, sparse) the median over
    repeats of its time divided by each other implementation's time in the same repeat."""
    res = {}
    for k, v in raw.items():
        t = np.array(v["times"])
        rec = {"median_s": float(np.median(t)), "min_s": float(t.min()), "times": [float(x) for x in t],
               "cpu_s": [float(x) for x in v["cpu"]]}
        if v["peak_extra"]:
            rec["peak_bytes"] = int(input_bytes + max(v["peak_extra"]))
        res[k] = rec
    for sub in subjects:
        if sub not in raw:
            continue
        ts = np.array(raw[sub]["times"])
        res[sub]["ratios"] = {k: float(np.median(ts / np.array(raw[k]["times"]))) for k in raw if k != sub}
        cs = np.array(raw[sub]["cpu"])  # CPU seconds of all threads: the work, less the waiting on a busy machine
        res[sub]["cpu_ratios"] = {k: float(np.median(cs / np.array(raw[k]["cpu"]))) for k in raw if k != sub}
    return res


def bench_dense_cell(cell: Cell, cfg: BenchConfig, say) -> dict:
    import torch

    from sim.model.config import ModelConfig
    from sim.model.network import TwoLayerNet

    say(f"cell {cell.name}: generating data")
    inst = make_instance(cell, cfg.seed)
    net = TwoLayerNet(inst.W, ModelConfig(m=cell.m))
    X, y = inst.X, inst.y
    for _ in range(cfg.warm_steps):
        net.W = engine_step(net, X, y)
    yt = y.astype(inst.X.dtype)
    Xt, Wt, ytt = torch.from_numpy(X), torch.from_numpy(net.W), torch.from_numpy(yt)
    ne = min(cfg.n_eval, cell.n)
    Xe, ye, Xet, yet = X[:ne], y[:ne], Xt[:ne], ytt[:ne]
    U = net.preactivations(X)
    density = float(np.mean(np.abs(U) > net.bias()[None, :].astype(U.dtype)))
    del U
    beta = net.beta
    fns = {
        "step": {"engine": lambda: engine_step(net, X, y), "numpy": lambda: np_step(net.W, X, yt, beta),
                 "torch": lambda: torch_step(Wt, Xt, ytt, beta), "blas": lambda: blas_step(net.W, X)},
        "fgm": {"engine": lambda: engine_fgm_step(net, X, y), "alt": lambda: alt_fgm_step(net, X, y),
                "numpy": lambda: np_fgm_step(net.W, X, yt, beta), "torch": lambda: torch_fgm_step(Wt, Xt, ytt, beta),
                "blas": lambda: blas_fgm(net.W, X)},
        "pgd20": {"engine": lambda: engine_pgd(net, Xe, ye), "alt": lambda: alt_pgd(net, Xe, ye),
                  "numpy": lambda: np_pgd(net.W, Xe, yet.numpy(), beta), "torch": lambda: torch_pgd(Wt, Xet, yet, beta),
                  "blas": lambda: blas_pgd(net.W, Xe)},
    }
    out = {"cell": cell.__dict__ | {"name": cell.name}, "data_seconds": inst.seconds, "density": density,
           "input_bytes": inst.input_bytes, "budget_bytes": inst.budget_bytes, "ops": {}}
    for op in cfg.ops:
        say(f"  {op}")
        chosen = {k: v for k, v in fns[op].items() if k in cfg.impls}
        raw = _run_interleaved(chosen, cfg.repeats, say)
        inputs = inst.input_bytes if op != "pgd20" else Xe.nbytes + ye.nbytes + net.W.nbytes
        rows = cell.n if op != "pgd20" else ne
        out["ops"][op] = _summarise(raw, ("engine", "alt"), inputs)
        out["ops"][op]["budget_bytes"] = 2 * (inputs + rows * cell.m * X.itemsize)
    return out


def bench_sparse_cell(d: int, n: int, k: float, cfg: BenchConfig, say, dtype="float32") -> dict:
    """The sparse noise-free l2 path against the dense engine, same problem, same weights."""
    from sim.model import sparse
    from sim.model.config import ModelConfig
    from sim.model.network import TwoLayerNet

    cell = Cell(d, n, dtype, k=k, noise=0.0)
    say(f"sparse cell {cell.name}: generating data")
    inst = make_instance(cell, cfg.seed, keep_codes=True)
    net = TwoLayerNet(inst.W, ModelConfig(m=cell.m))
    for _ in range(cfg.warm_steps):
        net.W = engine_step(net, inst.X, inst.y)
    snet = sparse.SparseNet.from_net(net, inst.M)
    X, y, codes = inst.X, inst.y, inst.codes
    ne = min(cfg.n_eval, n)
    ce = codes.rows(0, ne)

    def sparse_step():
        _, g, _, _ = snet.loss_and_grad(codes, y)
        return snet.CT - snet.CT.dtype.type(LR) * g

    def sparse_fgm():
        _, g, _, _ = sparse.fgm_loss_and_grad(snet, codes, y, TAU)
        return snet.CT - snet.CT.dtype.type(LR) * g

    fns = {
        "step": {"dense": lambda: engine_step(net, X, y), "sparse": sparse_step},
        "fgm": {"dense": lambda: engine_fgm_step(net, X, y), "dense_alt": lambda: alt_fgm_step(net, X, y),
                "sparse": sparse_fgm},
        "pgd20": {"dense": lambda: engine_pgd(net, X[:ne], y[:ne]),
                  "dense_alt": lambda: alt_pgd(net, X[:ne], y[:ne]),
                  "sparse": lambda: sparse.pgd(snet, ce, y[:ne], TAU, steps=20, restarts=1, random_start=False).margin},
    }
    if "alt" not in cfg.impls:
        for op in ("fgm", "pgd20"):
            fns[op].pop("dense_alt")
    # the two paths agree (tests/test_sparse.py checks it on small problems; a spot check here)
    l_d, g_d, _, _ = net.loss_and_grad(X, y)
    l_s, g_s, _, _ = snet.loss_and_grad(codes, y)
    g_s_w = (inst.M.astype(np.float64) @ g_s.astype(np.float64)).T
    agree = float(np.linalg.norm(g_s_w - g_d) / max(np.linalg.norm(g_d), 1e-300))
    out = {"cell": cell.__dict__ | {"name": cell.name}, "data_seconds": inst.seconds,
           "grad_rel_diff": agree, "loss_dense": l_d, "loss_sparse": l_s,
           "input_bytes": inst.input_bytes, "budget_bytes": inst.budget_bytes,
           "codes_bytes": codes.nbytes, "ops": {}}
    del g_d, g_s, g_s_w
    for op in cfg.ops:
        say(f"  {op}")
        raw = _run_interleaved(fns[op], cfg.sparse_repeats or cfg.repeats, say)
        rows = n if op != "pgd20" else ne
        inputs = inst.input_bytes if op != "pgd20" else X[:ne].nbytes + y[:ne].nbytes + net.W.nbytes
        out["ops"][op] = _summarise(raw, ("sparse",), inputs)
        out["ops"][op]["budget_bytes"] = 2 * (inputs + rows * cell.m * X.itemsize)
    return out


def _mb(b):
    return f"{b / 2**20:,.0f}" if b is not None else "-"


REFS = ("numpy", "torch", "blas")


def format_dense(res: dict) -> str:
    lines = [f"{res['cell']['name']}  (share of active neurons {res['density']:.3f}; inputs {_mb(res['input_bytes'])} MB,"
             f" budget {_mb(res['budget_bytes'])} MB = 2 x (data + weights + one N x m buffer))",
             f"  {'op':14s}{'time s':>9s}" + "".join(f"{'/' + k:>9s}" for k in REFS) + f"{'peak MB':>9s}"
             + f"{'budget':>8s}" + "   reference times s / peak MB: " + ", ".join(REFS)]
    for op, r in res["ops"].items():
        budget = _mb(r.get("budget_bytes"))
        r = {k: v for k, v in r.items() if k != "budget_bytes"}
        refs = "   " + ", ".join(f"{r[k]['median_s']:.3f}/{_mb(r[k].get('peak_bytes'))}" if k in r else "-"
                                  for k in REFS)
        for sub, label in (("engine", op), ("alt", op + ALT_LABEL.get(op, " (alt)"))):
            if sub not in r:
                continue
            rat = r[sub]["ratios"]
            lines.append(f"  {label:14s}{r[sub]['median_s']:9.3f}"
                         + "".join(f"{rat[k]:9.2f}" if k in rat else f"{'-':>9s}" for k in REFS)
                         + f"{_mb(r[sub].get('peak_bytes')):>9s}" + f"{budget:>8s}" + (refs if sub == "engine" else ""))
            crat = r[sub].get("cpu_ratios", {})
            lines.append(f"  {'  cpu time':14s}{'':9s}"
                         + "".join(f"{crat[k]:9.2f}" if k in crat else f"{'-':>9s}" for k in REFS))
    lines.append("  (ratios: engine time / reference time, median over repeats; < 1 means the engine is faster)")
    return "\n".join(lines)


def format_sparse(res: dict) -> str:
    lines = [f"sparse path {res['cell']['name']}  (gradient relative difference sparse vs dense "
             f"{res['grad_rel_diff']:.1e}; codes {_mb(res['codes_bytes'])} MB; dense data+weights "
             f"{_mb(res['input_bytes'])} MB, budget {_mb(res['budget_bytes'])} MB)",
             f"  {'op':8s}{'sparse s':>10s}{'dense s':>10s}{'speedup':>9s}{'(cpu)':>7s}{'alt s':>10s}{'speedup':>9s}"
             f"{'MB sparse':>11s}{'MB dense':>10s}{'MB alt':>10s}{'budget':>8s}"]
    for op, r in res["ops"].items():
        if op == "budget_bytes":
            continue
        rat = r["sparse"]["ratios"]
        alt = "dense_alt" in r
        crat = r["sparse"]["cpu_ratios"]
        lines.append(f"  {op:8s}{r['sparse']['median_s']:10.3f}{r['dense']['median_s']:10.3f}{1 / rat['dense']:9.1f}"
                     f"{1 / crat['dense']:7.1f}"
                     + (f"{r['dense_alt']['median_s']:10.3f}{1 / rat['dense_alt']:9.1f}" if alt else f"{'-':>10s}{'-':>9s}")
                     + f"{_mb(r['sparse'].get('peak_bytes')):>11s}{_mb(r['dense'].get('peak_bytes')):>10s}"
                     + (f"{_mb(r['dense_alt'].get('peak_bytes')):>10s}" if alt else f"{'-':>10s}")
                     + f"{_mb(r.get('budget_bytes')):>8s}")
    lines.append("  (speedup: dense time / sparse time, median over repeats; dense = the engine as sim runs it now,"
                 " alt = fgm: attack, then step; pgd20: through W W^T, TwoLayerNet.pgd_margins)")
    return "\n".join(lines)


def run_bench(cfg: BenchConfig) -> dict:
    import numba

    say = (lambda s: None) if cfg.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    threads = cfg.threads or os.cpu_count() or 1
    doc = {"threads": threads, "repeats": cfg.repeats, "sparse_repeats": cfg.sparse_repeats, "tau": TAU, "n_eval": cfg.n_eval,
           "warm_steps": cfg.warm_steps, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
           "versions": _versions(), "dense": [], "sparse": None}
    with _set_threads(threads):
        for (d, n, dt) in cfg.cells:
            res = bench_dense_cell(Cell(d, n, dt), cfg, say)
            doc["dense"].append(res)
            print(format_dense(res), flush=True)
        if cfg.sparse_cell is not None:
            d, n, k = cfg.sparse_cell
            res = bench_sparse_cell(d, n, k, cfg, say, cfg.sparse_dtype)
            doc["sparse"] = res
            print(format_sparse(res), flush=True)
    doc["numba_threads"] = numba.get_num_threads()
    return doc


def _versions():
    import torch

    from sim.common.meta import versions

    return versions() | {"torch": torch.__version__}
