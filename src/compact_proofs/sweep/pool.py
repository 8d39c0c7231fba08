"""Where sweep jobs run: in this process, in joblib's loky worker processes, or on a Dask cluster.

A pool keeps a priority queue of calls and at most ``slots`` of them in flight, so that work
added while the sweep runs (the proof units of a model that just finished training) still starts
longest-first. ``results()`` yields each finished call's return value; calls may be added between
results.
"""

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import os
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from compact_proofs.errors import UserError

DASK_CONNECT_TIMEOUT = "20s"
Call = tuple[Callable[..., Any], tuple, dict]


class Pool:
    """Runs calls ``(fn, args, kwargs)`` in order of ``priority`` (smaller first, then FIFO)."""

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Call]] = []
        self._counter = itertools.count()

    def add(self, priority: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        heapq.heappush(self._queue, (priority, next(self._counter), (fn, args, kwargs)))

    def _pop(self) -> Call:
        return heapq.heappop(self._queue)[2]

    def results(self) -> Iterator[Any]:
        """Run everything queued (including calls added while iterating); yield return values."""
        while self._queue:
            fn, args, kwargs = self._pop()
            yield fn(*args, **kwargs)

    def cancel(self) -> None:
        """Drop queued calls (and cancel running ones where possible)."""
        self._queue.clear()


class _FuturesPool(Pool):
    """A pool over an executor: ``submit(call) -> future`` and ``wait_any(futures) -> done``."""

    def __init__(self, submit, wait_any, slots: Callable[[], int]) -> None:
        super().__init__()
        self._submit, self._wait_any, self._slots = submit, wait_any, slots
        self._running: set = set()

    def results(self) -> Iterator[Any]:
        while self._queue or self._running:
            free = self._slots() - len(self._running)
            while self._queue and free > 0:
                self._running.add(self._submit(self._pop()))
                free -= 1
            done = self._wait_any(self._running)
            for future in done:
                self._running.discard(future)
                yield future.result()

    def cancel(self) -> None:
        super().cancel()
        for future in self._running:
            future.cancel()
        self._running.clear()


def _thread_env(threads: int) -> dict[str, str]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {n: str(threads) for n in names}


@contextlib.contextmanager
def open_pool(jobs: int, dask_address: str | None) -> Iterator[Pool]:
    """``_open_pool`` whose queued calls are dropped, and running ones cancelled where the
    executor can, if the sweep stops early (an exception or Ctrl-C). A call already running
    on a loky or Dask worker cannot be interrupted: it finishes and writes its result atomically,
    which the next run reuses; idle loky workers exit on their own after a few minutes."""
    with _open_pool(jobs, dask_address) as pool:
        try:
            yield pool
        except BaseException:
            pool.cancel()
            raise


@contextlib.contextmanager
def _open_pool(jobs: int, dask_address: str | None) -> Iterator[Pool]:
    """The pool for ``run_sweep``.

    Args:
        jobs: 1: run calls in this process; n > 1 (or -1: every core): that many loky worker
            processes (joblib's), each limited to ``cores // n`` BLAS/OpenMP threads.
        dask_address: submit calls to this Dask scheduler instead (one client for the sweep;
            about two calls in flight per worker thread).

    Raises:
        UserError: dask is not installed or the scheduler cannot be reached.
    """
    if dask_address is not None:
        with _dask_pool(dask_address) as pool:
            yield pool
        return
    cores = os.cpu_count() or 1
    n = cores if jobs == -1 else jobs
    if n == 1:
        yield Pool()
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=n, env=_thread_env(max(1, cores // n)))
    with warnings.catch_warnings():
        # loky restarts a worker between calls once its memory grew by 300 MB (a proof's large
        # tensors are kept by the allocator) and warns about a possible leak; no call is lost.
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given")
        yield _FuturesPool(
            lambda call: executor.submit(call[0], *call[1], **call[2]),
            lambda running: wait(running, return_when=FIRST_COMPLETED).done,
            lambda: n,
        )


_DASK_ADDRESS = re.compile(r"(?:[a-z]+://)?(?:\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}")


def check_dask_scheduler(address: str) -> None:
    """Refuse, within about ``DASK_CONNECT_TIMEOUT``, an address that is malformed or where no
    Dask scheduler answers: a one-line UserError. (``Client`` itself waits forever on a port
    that accepts the connection but does not speak Dask's protocol, e.g. the dashboard's.)"""
    if not isinstance(address, str) or not _DASK_ADDRESS.fullmatch(address):
        raise UserError(f"--dask {address}: expected a scheduler address like tcp://host:8786")
    try:
        from distributed.comm import connect
    except ImportError:
        raise UserError(
            "--dask needs dask.distributed; install it with `pip install 'compact-proofs[dask]'`"
        ) from None
    seconds = float(DASK_CONNECT_TIMEOUT.removesuffix("s"))

    async def identity() -> object:
        comm = await asyncio.wait_for(connect(address, timeout=seconds), seconds)
        try:
            await asyncio.wait_for(comm.write({"op": "identity"}), seconds)
            return await asyncio.wait_for(comm.read(), seconds)
        finally:
            comm.abort()

    hint = "check the address (e.g. tcp://host:8786) and that the scheduler is running"
    # In a thread of its own: the caller may be inside an event loop (a notebook).
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        try:
            reply = ex.submit(asyncio.run, identity()).result()
        except (TimeoutError, OSError) as err:
            raise UserError(
                f"cannot connect to the Dask scheduler at {address} "
                f"({str(err) or f'no answer within {seconds:g} s'}); {hint}"
            ) from None
        except Exception as err:  # e.g. an HTTP server's reply read as Dask frames
            raise UserError(
                f"{address} does not answer as a Dask scheduler ({type(err).__name__}); {hint}"
            ) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise UserError(f"{address} does not answer as a Dask scheduler; {hint}")


@contextlib.contextmanager
def _dask_pool(address: str) -> Iterator[Pool]:
    """A pool on the Dask cluster at ``address`` (``run_sweep`` has run
    ``check_dask_scheduler`` on it before writing anything)."""
    from dask.distributed import Client, as_completed

    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except OSError as err:
        raise UserError(
            f"cannot connect to the Dask scheduler at {address} ({err}); "
            "check the address (e.g. tcp://host:8786) and that the scheduler is running"
        ) from None
    with client:
        finished = as_completed([], loop=client.loop)

        def submit(call: Call):
            future = client.submit(call[0], *call[1], pure=False, **call[2])
            finished.add(future)
            return future

        yield _FuturesPool(
            submit,
            lambda running: {next(finished)},
            lambda: 2 * max(1, sum(client.nthreads().values())),
        )
