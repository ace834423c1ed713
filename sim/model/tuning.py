"""Every tuning knob of the engine, with the measurement behind its value.

None of these changes what is computed beyond rounding, except CHUNK and ROW_BLOCK, which
are part of the definition of the result (the order of the sums): with them fixed, the bits
do not depend on the thread count. The others choose between two routes to the same
numbers (equal up to rounding, tested) or how much is held in memory at once. Measurements
are on the 2-core AVX-512 machine of the benchmarks (benchmarks/README.md, commit messages
named below).

CHUNK is compiled into the Numba kernels (sim.model.kernels, sim.model.sparse read it as a
global, which Numba freezes at compile time and caches by those files' modification time):
after changing it, delete sim/model/__pycache__ so the kernels are compiled again.
"""

# --- the definition of the result (bits) -------------------------------------------------

# Rows (samples) per parallel chunk of the nonlinear stage and the row-wise kernels; the
# bias sums are kept per chunk and added in chunk order, so reductions do not depend on
# the number of threads (1b20a03).
CHUNK = 128

# Output rows per task of sim.model.linalg's blocked products (single-threaded BLAS per
# block): OpenBLAS splits the sum over samples differently with 2 threads than with 1 (seen:
# G^T X differed in its last bits, 1b20a03); a fixed block makes the result one definition.
ROW_BLOCK = 256

# --- sparse products for silent neurons (a31cb57) ----------------------------------------

# The backward products G^T X and G W skip the zeros of G (silent neurons) when at most
# this share of its entries is nonzero (half of it for short rows, d < 512); above it the
# dense blocked BLAS product is faster (measured break-even: about 0.3 at d = 1024, 0.15 at
# d = 256, on AVX-512 OpenBLAS).
SPARSE_MAX_DENSITY = 0.2
SPARSE_TILE_BYTES = 1 << 21  # output rows per task in sparse_tn: tile x d x itemsize <= this (2 MB: L2-sized)
SPARSE_ROW_BLOCK = 128  # samples per pass in sparse_tn
SPARSE_NN_ROWS = 16  # output rows per task in sparse_nn

# --- FGM (l2) adversarial training, dense engine (d72424b, 558546e) -----------------------

# fgm_loss_and_grad holds dg/du for 1/FGM_BLOCKS of the rows at a time: at d=1024, N=10000
# float32 the FGM step peaked at 355 MB with the whole of it (budget 251), within it now.
FGM_BLOCKS = 8
# FGM through W W^T costs |g'_r| m per row against d m for a product with the points, at a
# lower speed (sparse axpys against BLAS): measured faster at an active share of 0.11
# (d = 1024), slower at 0.40 (d = 256: 0.077 s against 0.064 s attack-then-step), so the
# W W^T route is taken at a share <= 0.2 (and m <= n: with m > n, W W^T outgrew an n x m
# buffer, 1495 MB against a budget of 1450 at d=4096, N=5000 float64).
FGM_GRAM_MAX_DENSITY = 0.2

# --- the sparse noise-free l2 path (da803d3) ---------------------------------------------

# sim.model.sparse's FGM step works on 1/SPARSE_FGM_BLOCKS of the samples at a time: at
# d=4096, k=4, N=10000, m=8192 float32 the whole step held 1243 MB against a 1194 MB budget;
# besides W W^T and C only a quarter of the pre-activations and perturbations is held now.
SPARSE_FGM_BLOCKS = 4

# --- attacks (558546e) -------------------------------------------------------------------

# PGD attacks 1/PGD_BLOCKS of the points at a time (at least 2 row chunks a thread), with
# the random starts of the whole batch: PGD-20 on 1000 points at d=1024 float32 held 23.5 MB
# above its inputs, 16 MB with the blocks (budget 39 with the inputs).
PGD_BLOCKS = 4
