"""`python -m sim bench`: the engine against what users would write, and the machine's limit.

For each cell of a grid (d, N, dtype; m = 2d, relative bias beta = 0.1, the default
init) it times, in one process and interleaved, three operations:

- step:  one full-batch gradient-descent step (loss, gradient in W, update);
- fgm:   one FGM (l2) adversarial-training step (FGM on the batch, then the step on the
         perturbed points), as sim.train.adversarial + sim.train run it (fused: the
         perturbation acts on the pre-activations through W W^T);
- pgd20: one PGD-20 (l2) evaluation on n_eval points (20 steps from x, no random start,
         the best point per sample kept, as sim.attacks.pgd);

each by four implementations:

- engine: sim (sim.model.network on the Numba kernels, sim.train.adversarial, sim.attacks);
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

The sparse cell compares the sparse noise-free l2 path (sim.model.sparse: the network on the
k-sparse codes, SPEC section 1 with noise 0 and an orthogonal dictionary) with the dense
engine on the same problem and the same weights.
"""
from __future__ import annotations

from .config import ALT_LABEL, IMPLS, OPS, PRESETS, SPARSE_PRESETS, TAU, BenchConfig, bench_config, parse_sizes
from .harness import (Cell, Instance, bench_dense_cell, bench_sparse_cell, format_dense, format_sparse, make_instance,
                      run_bench)
from .memory import PeakMemory

__all__ = ["ALT_LABEL", "IMPLS", "OPS", "PRESETS", "SPARSE_PRESETS", "TAU", "BenchConfig", "Cell", "Instance",
           "PeakMemory", "bench_config", "bench_dense_cell", "bench_sparse_cell", "format_dense", "format_sparse",
           "make_instance", "parse_sizes", "run_bench"]
