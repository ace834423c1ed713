"""The engine against NumPy, PyTorch and the BLAS limit, and the sparse path against the
dense one: a script wrapper of `python -m sim bench` (sim/bench/ holds the harness).

    python benchmarks/bench_engine.py                       # the goal cells (about 30 min on 2 cores)
    python benchmarks/bench_engine.py --quick               # a minute or two
    python benchmarks/bench_engine.py --preset grid --dtypes float32 --no-sparse
    python benchmarks/bench_engine.py --sizes 1024x10000,2048x20000 --dtypes float32,float64
    python benchmarks/bench_engine.py --help

Prints one table per cell (median times, engine / reference ratios taken per repeat, peak
memory) and writes everything with --json FILE.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
