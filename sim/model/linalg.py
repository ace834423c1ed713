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

from .tuning import ROW_BLOCK  # output rows per task (fixed: part of the definition of the result)

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


def row_block_for(n: int) -> int:
    """Rows per task for an n-row product: ROW_BLOCK, or n/16 (a multiple of 64) for tall
    products, so that the BLAS packs the right factor fewer times; a function of the shape
    only, never of the thread count."""
    return max(ROW_BLOCK, -(-n // (16 * 64)) * 64)


def matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, row_block: int | None = None) -> np.ndarray:
    """A @ B (2-D), deterministic for any thread count; A may be a transposed view.

    row_block: rows of A per single-threaded BLAS call (default row_block_for(rows of A)).
    """
    n = A.shape[0]
    if row_block is None:
        row_block = row_block_for(n)
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


def gram(A: np.ndarray, block: int = 2 * ROW_BLOCK) -> np.ndarray:
    """A @ A.T (n x n) for A (n x k), deterministic for any thread count.

    Each block (I, J) of the upper block triangle is one single-threaded BLAS product of
    fixed shape and the lower triangle is its mirror image, so the result is exactly
    symmetric and costs about half of matmul(A, A.T). A may be a transposed view.
    """
    n = A.shape[0]
    out = np.empty((n, n), dtype=A.dtype)
    starts = list(range(0, n, block))
    pairs = [(i, j) for i in starts for j in starts if j >= i]
    threads = numba.get_num_threads()

    def task(pair):
        i, j = pair
        blk = np.matmul(A[i:i + block], A[j:j + block].T)
        if j == i:  # mirror the upper triangle of a diagonal block too
            blk = np.triu(blk) + np.triu(blk, 1).T
        out[i:i + block, j:j + block] = blk
        if j != i:
            out[j:j + block, i:i + block] = blk.T

    with _single_thread_blas():
        if threads == 1 or len(pairs) == 1:
            for pair in pairs:
                task(pair)
        else:
            for _ in _pool(threads).map(task, pairs):
                pass
    return out
