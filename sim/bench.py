"""`python -m sim bench`: the engine against what users would write, and the machine's limit.

For each cell of a grid (d, N, dtype; m = 2d, relative bias beta = 0.1, the default
init) it times, in one process and interleaved, three operations:

- step:  one full-batch gradient-descent step (loss, gradient in W, update);
- fgm:   one FGM (l2) adversarial-training step (FGM on the batch, then the step on the
         perturbed points), as sim.adversarial + sim.train run it (fused: the
         perturbation acts on the pre-activations through W W^T);
- pgd20: one PGD-20 (l2) evaluation on n_eval points (20 steps from x, no random start,
         the best point per sample kept, as sim.attacks.pgd);

each by four implementations:

- engine: sim (sim.network on the Numba kernels, sim.adversarial, sim.attacks);
- alt:    the engine's other way, shown for comparison (fgm: sim.attacks.fgm, then the
          step; pgd20: PGD on the pre-activations through W W^T, TwoLayerNet.pgd_margins);
- numpy:  (a) a straightforward NumPy implementation of the same maths;
- torch:  (b) a straightforward PyTorch CPU implementation with autograd, same threads;
- blas:   (c) the machine's limit: only the matrix products the operation cannot avoid
          (step: X W^T and G^T X; fgm: X W^T, G' W, X' W^T, G^T X'; pgd20: 20 x (X W^T,
          G' W) + the final X W^T), done by NumPy's BLAS with the same threads.

Repeats are interleaved (the order of the implementations rotates each repeat) and the
ratios engine / reference are taken per repeat, then their median is reported, so that a
shared, noisy machine affects both sides of a ratio alike. The JSON also holds the CPU
seconds (all threads) of every run and their ratios: less sensitive to other processes
than wall time, but they count the spin-waiting of BLAS and OpenMP threads as work. Peak memory is the peak
resident set during the operation (Linux: /proc/self/clear_refs, VmHWM) above the
resident set before it, plus the bytes of the inputs (data and weights); the budget is
twice the data, the weights and one N x m buffer.

The sparse cell compares the sparse noise-free l2 path (sim.sparse: the network on the
k-sparse codes, SPEC section 1 with noise 0 and an orthogonal dictionary) with the dense
engine on the same problem and the same weights.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np

OPS = ("step", "fgm", "pgd20")
ALT_LABEL = {"fgm": " (unfused)", "pgd20": " (W W^T)"}
IMPLS = ("engine", "alt", "numpy", "torch", "blas")
PRESETS = {
    # d, N, dtype
    "quick": [(256, 2000, "float32")],
    "goal": [(1024, 10000, "float32")],
    "grid": [(d, n, t) for t in ("float32", "float64") for d in (256, 1024, 4096) for n in (5000, 50000)],
}
SPARSE_PRESETS = {"quick": (512, 2000, 4.0), "goal": (4096, 10000, 4.0), "grid": (4096, 10000, 4.0)}
TAU = 0.25  # the l2 radius of the FGM and PGD operations (verify's default)
LR = 1.0


# ---------------------------------------------------------------------------------------------
# memory


def _rss_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


_libc = None


def _trim():
    """Collect garbage and give freed heap memory back to the OS, so RSS is a fair baseline."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak RSS above the RSS at entry (bytes), or None where Linux's counters are missing."""

    def __enter__(self):
        _trim()
        self.base = _rss_kb("VmRSS")
        self.ok = self.base >= 0 and _reset_peak()
        self.extra = None
        return self

    def __exit__(self, *exc):
        if self.ok:
            self.extra = max(0, _rss_kb("VmHWM") - self.base) * 1024
        return False


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
    sim.data.make_dictionary; x = M z is formed from the sparse codes (k terms per sample, the
    same numbers as z @ M.T up to rounding) and the noise is added in blocks, so that large
    cells do not need the float64 copies of Problem.sample.
    """
    from .config import DataConfig, ModelConfig, RunConfig
    from .data import STREAM_TRAIN, Problem, stream
    from .network import TwoLayerNet
    from .sparse import Codes, _codes_preacts

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
# (a) NumPy references: the maths written straight, as a user would


def _np_bias(W, beta):
    return (beta * np.linalg.norm(W, axis=1)).astype(W.dtype)


def _relu(z):
    return np.maximum(z, 0)


def _drelu(z):
    return (z > 0).astype(z.dtype)


def _np_forward(W, X, beta):
    """U, the two shifted pre-activations and f, as SPEC section 2 writes them."""
    b = _np_bias(W, beta)
    U = X @ W.T
    zp, zm = U - b, -U - b
    return zp, zm, (_relu(zp) - _relu(zm)).sum(axis=1)


def _np_loss_grad(W, X, y, beta):
    from scipy.special import expit

    zp, zm, f = _np_forward(W, X, beta)
    yf = y * f
    loss = np.logaddexp(0, -yf).mean()
    dldf = -y * expit(-yf)  # d/df log(1 + exp(-y f))
    G = (_drelu(zp) + _drelu(zm)) * (dldf / len(X))[:, None]  # dl/du = dl/df (act'(u - b) + act'(-u - b))
    return loss, G.T @ X, f


def np_step(W, X, y, beta):
    loss, gW, _ = _np_loss_grad(W, X, y, beta)
    return W - LR * gW


def _np_output_grad(W, X, beta):
    zp, zm, f = _np_forward(W, X, beta)
    return (_drelu(zp) + _drelu(zm)) @ W, f


def _np_l2_unit(g):
    n = np.linalg.norm(g, axis=1, keepdims=True)
    return np.where(n > 0, g / np.where(n > 0, n, 1), 0)


def np_fgm_step(W, X, y, beta):
    J, _ = _np_output_grad(W, X, beta)
    Xa = X + TAU * _np_l2_unit(-y[:, None] * J)
    return np_step(W, Xa, y, beta)


def np_pgd(W, X, y, beta, steps=20):
    alpha0 = 2.5 / steps * TAU
    delta = np.zeros_like(X)
    best = np.full(len(X), np.inf, dtype=X.dtype)
    for t in range(steps):
        alpha = alpha0 * (0.5 if t >= steps // 2 else 1.0) * (0.5 if t >= (3 * steps) // 4 else 1.0)
        J, f = _np_output_grad(W, X + delta, beta)
        best = np.minimum(best, y * f)
        delta = delta + alpha * _np_l2_unit(-y[:, None] * J)
        n = np.linalg.norm(delta, axis=1, keepdims=True)
        delta = delta * np.minimum(1, TAU / np.maximum(n, 1e-30))
    _, _, f = _np_forward(W, X + delta, beta)
    return np.minimum(best, y * f)


# ---------------------------------------------------------------------------------------------
# (b) PyTorch references with autograd


def _torch_f(W, X, beta):
    import torch

    b = beta * W.detach().norm(dim=1)
    U = X @ W.T
    return (torch.relu(U - b) - torch.relu(-U - b)).sum(dim=1)


def torch_step(W, X, y, beta):
    import torch

    W = W.detach().requires_grad_(True)
    loss = torch.nn.functional.softplus(-y * _torch_f(W, X, beta)).mean()
    loss.backward()
    with torch.no_grad():
        return W - LR * W.grad


def _torch_unit(g):
    import torch

    n = g.norm(dim=1, keepdim=True)
    return torch.where(n > 0, g / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(g))


def torch_fgm_step(W, X, y, beta):
    import torch

    Xr = X.detach().requires_grad_(True)
    f = _torch_f(W, Xr, beta)
    (J,) = torch.autograd.grad(f.sum(), Xr)
    Xa = (X + TAU * _torch_unit(-y[:, None] * J)).detach()
    return torch_step(W, Xa, y, beta)


def torch_pgd(W, X, y, beta, steps=20):
    import torch

    alpha0 = 2.5 / steps * TAU
    delta = torch.zeros_like(X)
    best = torch.full((len(X),), float("inf"), dtype=X.dtype)
    for t in range(steps):
        alpha = alpha0 * (0.5 if t >= steps // 2 else 1.0) * (0.5 if t >= (3 * steps) // 4 else 1.0)
        xr = (X + delta).requires_grad_(True)
        f = _torch_f(W, xr, beta)
        (J,) = torch.autograd.grad(f.sum(), xr)
        with torch.no_grad():
            best = torch.minimum(best, y * f)
            delta = delta + alpha * _torch_unit(-y[:, None] * J)
            n = delta.norm(dim=1, keepdim=True)
            delta = delta * torch.clamp(TAU / torch.clamp(n, min=1e-30), max=1.0)
    with torch.no_grad():
        return torch.minimum(best, y * _torch_f(W, X + delta, beta))


# ---------------------------------------------------------------------------------------------
# (c) the products an operation cannot avoid, by the same BLAS alone


def blas_step(W, X):
    U = X @ W.T
    return U.T @ X


def blas_fgm(W, X):
    U = X @ W.T
    J = U @ W  # G' W (dense: the BLAS does not skip zeros)
    Ua = X @ W.T  # X' W^T
    del J
    return Ua.T @ X  # G^T X'


def blas_pgd(W, X, steps=20):
    for _ in range(steps):
        U = X @ W.T
        U @ W
    return X @ W.T


# ---------------------------------------------------------------------------------------------
# the engine


def engine_step(net, X, y):
    _, gW, _, _ = net.loss_and_grad(X, y)
    return net.W - net.W.dtype.type(LR) * gW


def engine_fgm_step(net, X, y):
    """As sim.train runs FGM adversarial training (sim.adversarial.Perturb, fused in l2)."""
    from .adversarial import make_perturb

    _, gW, _, _ = make_perturb("fgm", TAU, "l2", None).loss_and_grad(net, X, y, 0)
    return net.W - net.W.dtype.type(LR) * gW


def alt_fgm_step(net, X, y):
    """The alternative: attack (sim.attacks.fgm), then the step on the perturbed points."""
    from . import attacks

    Xa = np.ascontiguousarray(attacks.fgm(net, X, y, TAU, "l2").x_adv, dtype=net.W.dtype)
    return engine_step(net, Xa, y)


def alt_pgd(net, X, y, steps=20):
    """The alternative: PGD on the pre-activations through W W^T (TwoLayerNet.pgd_margins)."""
    return net.pgd_margins(X, y, TAU, steps=steps, restarts=1, random_start=False)


def engine_pgd(net, X, y, steps=20):
    from . import attacks

    return attacks.pgd(net, X, y, TAU, "l2", steps=steps, restarts=1, random_start=False).margin


# ---------------------------------------------------------------------------------------------
# timing


@dataclass
class BenchConfig:
    cells: list
    sparse_cell: tuple | None
    ops: tuple = OPS
    impls: tuple = IMPLS
    repeats: int = 5
    threads: int = 0
    n_eval: int = 1000
    warm_steps: int = 0
    seed: int = 0
    quiet: bool = False
    sparse_repeats: int = 0
    sparse_dtype: str = "float32"


def _set_threads(threads: int):
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
    return threadpool_limits(limits=threads)  # numpy's BLAS for (a) and (c); sim limits its own to 1


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

    from .config import ModelConfig
    from .network import TwoLayerNet

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
    from . import sparse
    from .config import ModelConfig
    from .network import TwoLayerNet

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

    from .run import versions

    return versions() | {"torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# command line


def parse_sizes(text: str) -> list:
    """'1024x10000,4096x5000' -> [(1024, 10000), (4096, 5000)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            d, n = part.lower().split("x")
            out.append((int(d), int(n)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--sizes {part!r}: expected DxN, e.g. 1024x10000") from None
    return out


def config_from_args(args) -> BenchConfig:
    preset = args.preset or ("quick" if args.quick else "goal")
    if args.sizes:
        dtypes = args.dtypes.split(",") if args.dtypes else ["float32"]
        cells = [(d, n, t) for t in dtypes for (d, n) in parse_sizes(args.sizes)]
    else:
        cells = [c for c in PRESETS[preset] if not args.dtypes or c[2] in args.dtypes.split(",")]
    if args.no_dense:
        cells = []
    sparse_cell = None
    if not args.no_sparse:
        sparse_cell = SPARSE_PRESETS[preset]
        if args.sparse:
            parts = args.sparse.lower().replace("k", "x").split("x")
            sparse_cell = (int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else 4.0)
    ops = tuple(args.ops.split(",")) if args.ops else OPS
    impls = tuple(args.impls.split(",")) if args.impls else IMPLS
    for o in ops:
        if o not in OPS:
            raise SystemExit(f"--ops {o!r}: allowed {', '.join(OPS)}")
    for i in impls:
        if i not in IMPLS:
            raise SystemExit(f"--impls {i!r}: allowed {', '.join(IMPLS)}")
    if "engine" not in impls:
        impls = ("engine",) + impls
    repeats = args.repeats if args.repeats else (2 if preset == "quick" else 5)
    n_eval = args.n_eval if args.n_eval else (300 if preset == "quick" else 1000)
    sparse_repeats = args.sparse_repeats if args.sparse_repeats else min(repeats, 3)
    sparse_dtype = args.dtypes.split(",")[0] if args.dtypes else "float32"
    return BenchConfig(cells, sparse_cell, ops, impls, repeats, args.threads, n_eval, args.warm_steps, args.seed,
                       args.quiet, sparse_repeats, sparse_dtype)


def add_bench_command(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to the `python -m sim` subcommands."""
    b = subparsers.add_parser("bench", help="time the engine against NumPy, PyTorch and the BLAS limit",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--preset", choices=sorted(PRESETS), help="goal (default): d=1024 N=10000 float32 and the "
                   "sparse d=4096 k=4 cell; grid: d in 256,1024,4096 x N in 5000,50000 x float32,float64; quick")
    b.add_argument("--quick", action="store_true", help="the quick preset: small, a minute or two")
    b.add_argument("--sizes", help="cells as DxN,DxN (m = 2d), e.g. 1024x10000,2048x20000; overrides the preset")
    b.add_argument("--dtypes", help="float32,float64 (default float32 with --sizes; the preset's otherwise); "
                   "the sparse cell uses the first")
    b.add_argument("--sparse", help="the sparse cell as DxNxK, e.g. 4096x10000x4")
    b.add_argument("--no-sparse", action="store_true", help="skip the sparse cell")
    b.add_argument("--no-dense", action="store_true", help="skip the dense cells (only the sparse cell)")
    b.add_argument("--ops", help=f"subset of {','.join(OPS)}")
    b.add_argument("--impls", help=f"subset of {','.join(IMPLS)} (engine always runs)")
    b.add_argument("--repeats", type=int, default=0, help="timed repeats per implementation (default 5; quick 2)")
    b.add_argument("--sparse-repeats", type=int, default=0,
                   help="timed repeats in the sparse cell, whose dense side is slow (default min(repeats, 3))")
    b.add_argument("--threads", type=int, default=0, help="threads for every implementation (default: all cores)")
    b.add_argument("--n-eval", type=int, default=0, help="points attacked by pgd20 (default 1000; quick 300)")
    b.add_argument("--warm-steps", type=int, default=0,
                   help="gradient steps before timing (0: time at the init; larger: a sparser, trained state)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", help="also write the results to this JSON file")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=cmd_bench)
    return b


def cmd_bench(args) -> int:
    cfg = config_from_args(args)
    doc = run_bench(cfg)
    if args.json:
        from .rundir import atomic_write_json
        from pathlib import Path

        atomic_write_json(Path(args.json), doc)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_command(sub)
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
