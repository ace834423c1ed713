"""Running the cells of a sweep: the driver (run_sweep), a local pool of worker processes
and a Dask distributed cluster. Only this process writes the sweep directory (sim.sweep.store).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sim.common.meta import git_commit
from sim.common.threads import available_cores
from sim.model.config import ConfigError, _check_choice, _check_int

from .job import _init_worker, cell_job
from .spec import Point, SweepSpec

ORDERS = ("longest", "shortest")  # run_sweep's order of the unfinished cells


def check_workers(workers: int | None, threads: int | None) -> None:
    """--workers: None (automatic) or >= 0 (0: the cells run in this process); --threads: None or >= 1."""
    if workers is not None:
        _check_int("workers", workers, lo=0)
    if threads is not None:
        _check_int("threads", threads, lo=1)


def plan_workers(n_cells: int, workers: int | None, threads: int | None, cores: int | None = None):
    """(processes, Numba threads each) with processes x threads <= cores (workers=0 is
    handled by run_sweep: no process)."""
    cores = cores or available_cores()
    check_workers(workers, threads)
    if workers == 0:
        raise ConfigError("workers=0 is invalid here: plan_workers plans worker processes; run_sweep runs the "
                          "cells in its own process for workers=0")
    if workers is None:
        workers = max(1, min(max(n_cells, 1), cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // workers)
    if workers * threads > cores:
        raise ConfigError(f"workers={workers} x threads={threads} = {workers * threads} is invalid: allowed at most "
                          f"{cores} (the cores this process may use)")
    return workers, threads


@dataclass
class SweepSummary:
    name: str
    out: str
    total: int
    skipped: int
    ran: int
    failed: list
    seconds: float
    table: str
    finished: int  # cells with a result now (with --only, fewer than total - failed)
    cell_seconds: float = 0.0
    cell_cpu_seconds: float = 0.0

    def to_dict(self):
        return dict(self.__dict__)

    def text(self) -> str:
        lines = [f"sweep {self.name}: {self.finished} of {self.total} cells finished ({self.skipped} already done, {self.ran} run "
                 f"now) in {self.seconds:.0f} s; table: {self.table}"]
        if self.ran:
            lines.append(f"cells run now: {self.cell_seconds:.0f} s of wall time, {self.cell_cpu_seconds:.0f} CPU s")
        if self.failed:
            lines.append(f"{len(self.failed)} failed:")
            lines += [f"  {f['hash']} {f['label'] or ''} {json.dumps(f['assignments'])}: {f['error']}"
                      for f in self.failed]
        return "\n".join(lines)


def run_sweep(spec: SweepSpec, out, *, workers: int | None = None, threads: int | None = None, scheduler=None,
              quiet: bool = False, command: str | None = None, retry_failed: bool = True,
              order: str = "longest", only: list[str] | None = None) -> SweepSummary:
    """Run every unfinished cell of the spec and rebuild the table; returns the summary.

    order: 'longest' first (by the estimated cost: the shortest makespan on several workers)
    or 'shortest' first (finished cells early: a sweep that spans several sessions, resumed
    each time, fills in from the cheap end).

    only: `FIELD=VALUE[,VALUE...]` filters (sim.sweep.spec.parse_only): run only the unfinished
    cells that match them all (a slice of the sweep first, e.g. ["k=4", "d=1024,2048"]); the
    table, sweep.json and the summary still cover the whole spec.

    scheduler: None (local processes; workers=0 runs the cells in this process, one by
    one), a Dask scheduler address, or a distributed.Client.
    """
    from . import store
    from .spec import parse_only, select_points

    check_workers(workers, threads)
    _check_choice("order", order, ORDERS)
    selected = {p.hash for p in select_points(spec.points, parse_only(only))}
    if not selected:
        raise ConfigError(f"--only {' '.join(only or [])!r} is invalid: it matches none of the sweep's "
                          f"{len(_unique(spec.points))} cells; allowed values that some cell has (see --dry-run)")
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is invalid: it is a file; allowed a folder (new, or of this sweep)")
    if scheduler is None and workers != 0:
        plan_workers(max(len(_unique(spec.points)), 1), workers, threads)  # workers x threads <= cores: checked now
    out.mkdir(parents=True, exist_ok=True)
    store.write_sweep_json(out, spec, command=command, commit=git_commit())
    todo, skipped = [], 0
    for p in _unique(spec.points):
        st = store.cell_state(out, p.hash)
        if st == "done" or (st == "failed" and not retry_failed):
            skipped += 1
        elif p.hash in selected:
            todo.append(p)
    todo.sort(key=lambda p: (-p.cost() if order == "longest" else p.cost(), p.index))
    failed_now: dict[str, dict] = {}
    cell_seconds = [0.0, 0.0]
    bar = _Progress(len(_unique(spec.points)), skipped, todo, quiet)

    def on_result(p: Point, res: dict):
        if res.get("status") == "ok":
            store.write_cell(out, p, res)
            cell_seconds[0] += res["timings"]["total"]
            cell_seconds[1] += res["timings"].get("cpu", 0.0)
            failed_now.pop(p.hash, None)
        else:
            store.write_failure(out, p, res)
            failed_now[p.hash] = res
        store.write_table(out, spec)
        bar.update(p, res)

    try:
        if todo:
            if scheduler is not None:
                _run_dask(todo, scheduler, threads or 1, on_result)
            elif workers == 0:
                for p in todo:
                    on_result(p, cell_job(p.config.to_dict(), threads or 1))
            else:
                w, t = plan_workers(len(todo), workers, threads)
                _run_local(todo, w, t, on_result)
    finally:
        bar.close()
        table = store.write_table(out, spec)
    failures = []
    for p in spec.points:
        if store.cell_state(out, p.hash) == "failed" and p.hash not in {f["hash"] for f in failures}:
            rec = store.read_failure(out, p.hash)
            failures.append({"hash": p.hash, "label": p.label, "assignments": _jsonable(p.assignments),
                             "error": rec.get("error", "?")})
    summary = SweepSummary(spec.name, str(out), len(_unique(spec.points)), skipped, len(todo), failures,
                           time.perf_counter() - t0, str(table),
                           sum(store.cell_state(out, p.hash) == "done" for p in _unique(spec.points)),
                           cell_seconds[0], cell_seconds[1])
    from sim.common.files import atomic_write_json

    atomic_write_json(out / "summary.json", summary.to_dict())
    store.finish_run(out, summary.to_dict())
    return summary


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


def _unique(points):
    seen, out = set(), []
    for p in points:
        if p.hash not in seen:
            seen.add(p.hash)
            out.append(p)
    return out


class _Progress:
    """A bar over the estimated cost of the cells (so its time-left estimate weighs big cells
    more), showing the count of finished cells and failures. The bar's position is the
    finished share of the cost, rounded, so it never passes its total (tqdm would warn and
    show a negative time left). With stderr not a terminal: one line per finished cell."""

    def __init__(self, total, done, todo, quiet):
        from tqdm.auto import tqdm

        from sim.common.progress import stderr_is_terminal

        self.total, self.done, self.failed, self.quiet = total, done, 0, quiet
        self.cost, self.spent = sum(p.cost() for p in todo), 0.0
        self.lines = not quiet and not stderr_is_terminal()
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=1000, disable=quiet or self.lines, unit="", leave=True, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")
        self._post()

    def _text(self):
        return f"sweep: {self.done}/{self.total} cells" + (f", {self.failed} failed" if self.failed else "")

    def _post(self):
        self.bar.set_description_str(self._text())

    def update(self, p, res):
        if res.get("status") == "ok":
            self.done += 1
        else:
            self.failed += 1
        self.spent += p.cost()
        target = min(1000, round(1000 * self.spent / self.cost)) if self.cost > 0 else 1000
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        self._post()
        if self.lines:
            status = "done" if res.get("status") == "ok" else "FAILED"
            print(f"{self._text()} ({p.hash} {p.label or ''} {status}, {time.perf_counter() - self.t0:.0f} s)",
                  file=sys.stderr, flush=True)

    def close(self):
        self.bar.close()


def _failure(msg: str) -> dict:
    return {"status": "failed", "error": msg, "traceback": "", "host": platform.node(), "seconds": 0.0}


def _run_local(todo, workers, threads, on_result):
    """A pool of `workers` spawned processes; a process that dies breaks the pool: the cells
    then in flight are rerun one at a time in a fresh pool, and a cell that kills its
    worker alone is marked failed."""
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")

    def new_pool():
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, os.getpid()))

    queue, suspects, inflight = deque(todo), deque(), {}
    pool = new_pool()
    finished = False
    try:
        while queue or suspects or inflight:
            broken = False
            try:  # a cell leaves its queue only once submitted
                if suspects:
                    if not inflight:
                        inflight[pool.submit(cell_job, suspects[0].config.to_dict(), threads)] = (suspects[0], True)
                        suspects.popleft()
                else:
                    while queue and len(inflight) < workers:
                        inflight[pool.submit(cell_job, queue[0].config.to_dict(), threads)] = (queue[0], False)
                        queue.popleft()
            except BrokenProcessPool:  # a worker died since the last wait
                broken = True
            if not broken:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
            if broken:
                done, _ = wait(list(inflight))  # every other future of a broken pool fails too
            for f in done:
                p, alone = inflight.pop(f)
                exc = f.exception()
                if isinstance(exc, BrokenProcessPool):
                    if alone:
                        on_result(p, _failure(f"the worker process died while running this cell alone ({exc})"))
                    else:
                        suspects.append(p)
                elif exc is not None:
                    on_result(p, _failure(f"{type(exc).__name__}: {exc}"))
                else:
                    on_result(p, f.result())
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)  # its processes are gone: nothing to wait for
                pool = new_pool()
        finished = True
    finally:
        if finished:  # wait for the workers to exit, so that their queues' semaphores are released
            pool.shutdown(wait=True)  # (shutdown without waiting leaked them: a resource_tracker warning)
        else:  # interrupted (Ctrl-C, an error in this process): stop the workers now
            procs = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()


def _run_dask(todo, scheduler, threads, on_result):
    """Submit every cell to a Dask distributed cluster; results come back to this process,
    which alone writes the sweep directory (no shared file system needed)."""
    import uuid

    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="30s") if own else scheduler
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"scheduler={scheduler!r} is invalid: cannot reach a Dask scheduler there ({exc})") from None
    tag = uuid.uuid4().hex[:8]
    futures = {}
    try:
        for rank, p in enumerate(todo):
            f = client.submit(cell_job, p.config.to_dict(), threads, key=f"sim-sweep-{p.hash}-{tag}", pure=False,
                              priority=len(todo) - rank, retries=0)
            futures[f] = p
        for f in as_completed(list(futures)):
            p = futures[f]
            try:
                res = f.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the cell fails, the sweep goes on
                res = _failure(f"{type(exc).__name__}: {exc}")
            on_result(p, res)
            f.release()
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
        if own:
            client.close()
