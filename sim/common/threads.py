"""Thread setup: Numba's thread count and BLAS's.

sim's results do not depend on the thread count (model/linalg.py's blocked products pin
BLAS to one thread inside them), so these only decide speed.
"""
from __future__ import annotations

_BLAS_LIMIT = None


def set_numba_threads(n: int) -> int:
    """Numba on n threads, clipped to [1, NUMBA_NUM_THREADS]; returns the count set."""
    import numba

    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def limit_blas_once() -> None:
    """BLAS on one thread for the rest of the process (the products that matter run in
    sim.model.linalg's blocked, thread-count-independent matmul; the rest is small)."""
    global _BLAS_LIMIT
    if _BLAS_LIMIT is None:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")


def blas_threads(n: int):
    """A threadpoolctl limit of n BLAS threads (a context manager; also restores on .restore_original_limits())."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
