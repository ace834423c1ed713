"""What a benchmark run measures: presets, operations, implementations and BenchConfig,
built from the command line's options (sim/cli.py) with errors that name the option."""
from __future__ import annotations

from dataclasses import dataclass

from sim.common.validation import ConfigError, check_choice, check_int

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


def parse_sizes(text: str) -> list:
    """'1024x10000,4096x5000' -> [(1024, 10000), (4096, 5000)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            d, n = part.lower().split("x")
            d, n = int(d), int(n)
        except ValueError:
            raise ConfigError(f"--sizes {part!r}: expected DxN, e.g. 1024x10000") from None
        if d < 1 or n < 1:
            raise ConfigError(f"--sizes {part!r}: allowed D >= 1 and N >= 1")
        out.append((d, n))
    return out


def parse_sparse(text: str) -> tuple:
    """'4096x10000x4' -> (4096, 10000, 4.0) (k defaults to 4)."""
    parts = text.lower().replace("k", "x").split("x")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        cell = (int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else 4.0)
    except ValueError:
        raise ConfigError(f"--sparse {text!r}: expected DxNxK, e.g. 4096x10000x4") from None
    if cell[0] < 1 or cell[1] < 1 or not 0 < cell[2] <= cell[0]:
        raise ConfigError(f"--sparse {text!r}: allowed D >= 1, N >= 1 and 0 < K <= D")
    return cell


def bench_config(preset=None, quick=False, sizes=None, dtypes=None, sparse=None, no_sparse=False, no_dense=False,
                 ops=None, impls=None, repeats=0, threads=0, n_eval=0, warm_steps=0, seed=0, quiet=False,
                 sparse_repeats=0) -> BenchConfig:
    """A BenchConfig from the options of `python -m sim bench` (strings as typed there)."""
    preset = preset or ("quick" if quick else "goal")
    for t in (dtypes.split(",") if dtypes else []):
        check_choice("--dtypes", t, ("float32", "float64"))
    for name, value, lo in (("--repeats", repeats, 0), ("--sparse-repeats", sparse_repeats, 0),
                            ("--threads", threads, 0), ("--n-eval", n_eval, 0), ("--warm-steps", warm_steps, 0)):
        check_int(name, value, lo=lo)
    if sizes:
        dtype_list = dtypes.split(",") if dtypes else ["float32"]
        cells = [(d, n, t) for t in dtype_list for (d, n) in parse_sizes(sizes)]
    else:
        cells = [c for c in PRESETS[preset] if not dtypes or c[2] in dtypes.split(",")]
    if no_dense:
        cells = []
    sparse_cell = None
    if not no_sparse:
        sparse_cell = SPARSE_PRESETS[preset]
        if sparse:
            sparse_cell = parse_sparse(sparse)
    ops = tuple(ops.split(",")) if ops else OPS
    impls = tuple(impls.split(",")) if impls else IMPLS
    for o in ops:
        if o not in OPS:
            raise ConfigError(f"--ops {o!r} is invalid: allowed {', '.join(OPS)}")
    for i in impls:
        if i not in IMPLS:
            raise ConfigError(f"--impls {i!r} is invalid: allowed {', '.join(IMPLS)}")
    if "engine" not in impls:
        impls = ("engine",) + impls
    repeats = repeats if repeats else (2 if preset == "quick" else 5)
    n_eval = n_eval if n_eval else (300 if preset == "quick" else 1000)
    sparse_repeats = sparse_repeats if sparse_repeats else min(repeats, 3)
    sparse_dtype = dtypes.split(",")[0] if dtypes else "float32"
    return BenchConfig(cells, sparse_cell, ops, impls, repeats, threads, n_eval, warm_steps, seed, quiet,
                       sparse_repeats, sparse_dtype)
