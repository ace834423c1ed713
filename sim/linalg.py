"""Matrix products that give the same bits whatever the number of threads.

A multi-threaded BLAS may split the inner (reduction) dimension of a product among its
threads when the output is small, e.g. the gradient G^T X summed over samples, and then
the rounding depends on the thread count. Here every product is cut into fixed blocks
of output rows (the cut depends only on the shapes), each block is computed by
single-threaded BLAS, and the blocks run on a pool of as many threads as Numba uses
(numba.get_num_threads()). Each output entry is thus reduced in one fixed order, at
close to full BLAS speed.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

ROW_BLOCK = 256  # output rows per task (fixed: part of the definition of the result)

_controller = None
_pools: dict[int, ThreadPoolExecutor] = {}


def _single_thread_blas():
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _pool(n: int) -> ThreadPoolExecutor:
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sim-matmul")
    return _pools[n]


def matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, row_block: int = ROW_BLOCK) -> np.ndarray:
    """A @ B (2-D), deterministic for any thread count; A may be a transposed view."""
    n = A.shape[0]
    if out is None:
        out = np.empty((n, B.shape[1]), dtype=np.result_type(A, B))
    starts = range(0, n, row_block)
    threads = numba.get_num_threads()

    def block(lo):
        np.matmul(A[lo:lo + row_block], B, out=out[lo:lo + row_block])

    with _single_thread_blas():
        if threads == 1 or len(starts) == 1:
            for lo in starts:
                block(lo)
        else:
            for _ in _pool(threads).map(block, starts):
                pass
    return out
