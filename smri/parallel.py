"""Bounded, ordered fan-out of per-patient work to threads, processes or a Dask cluster.

The caller (the single HDF5 writer) takes results in submission order. A new task is submitted
only when the caller takes a result, so at most ``window`` finished results exist at once,
whatever the cohort size and however slow the writer. joblib's ordered generator cannot give that:
it dispatches a new task whenever one *finishes*, not when one is *consumed*, so behind a slow
writer (compression, a busy disk, a large cluster) every finished result piles up in the parent
(tests/stages/test_preprocessing_scaling.py measured 39 of 40 alive at once). Executors are used
here directly instead, one per backend (`BACKENDS`): threads (the default: ISA-L and numpy release
the GIL, and no result is pickled), joblib's loky processes, and a Dask ``distributed.Client`` (the
cluster's own futures, so workers keep at most ``window`` results too).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from smri.errors import ConfigError, DataError, plural
from smri.messages import python_log, warning
from smri.version import __version__

# --backend's choices, in the order `smri preprocess --help` lists them; the first is the default.
BACKENDS = ("threading", "loky", "dask")
DEFAULT_BACKEND = BACKENDS[0]
SCHEDULER_TIMEOUT_S = 10.0
INSTALL_HINT = "pip install 'smri[distributed]'"

Submit = Callable[..., Any]  # submit(fn, *args) -> a future with .result() and .cancel()


def check_backend(backend: str, scheduler: str | None) -> None:
    """Refuse an unknown backend, --scheduler without dask, or dask without `distributed`."""
    if backend not in BACKENDS:
        raise ConfigError(f"expected one of {', '.join(BACKENDS)}, got {backend!r}", "--backend")
    if scheduler is not None and backend != "dask":
        raise ConfigError("--scheduler needs --backend dask")
    if backend == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"the dask backend needs the optional package 'distributed': {INSTALL_HINT}",
                option="--backend",
            ) from None


@contextmanager
def pool(
    backend: str,
    jobs: int | None,
    scheduler: str | None = None,
    echo: Callable[[str], None] = python_log,
) -> Iterator[tuple[Submit, int]]:
    """A ``submit(fn, *args)`` for `backend` and how many tasks it runs at once.

    One local job runs on one worker thread, whatever the backend: the caller's own work (the
    store's writes, which wait for the disk) then overlaps the next task, and a process would
    only add the pickling of every result. With ``backend="dask"`` it connects to `scheduler`,
    or starts a LocalCluster of `jobs` single-threaded worker processes; everything is shut
    down on exit.
    """
    check_backend(backend, scheduler)
    if backend == "dask":
        if scheduler is None:  # a local cluster: worker processes on this machine
            jobs = cap_jobs(jobs, echo)
        with _dask_client(scheduler, jobs, echo) as (client, slots):
            yield (lambda fn, *args: client.submit(fn, *args, pure=False)), jobs or slots
        return
    jobs = cap_jobs(jobs, echo)
    if jobs > 1 and backend == "loky":
        yield from _loky(jobs)
        return
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="smri-preprocess")
    try:
        yield executor.submit, jobs
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory the OS could give now (MemAvailable), or all physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cap_jobs(jobs: int | None, echo: Callable[[str], None]) -> int:
    """`jobs` local workers, at most one per usable core (None: one per core).

    The work is CPU-bound, so more workers only add memory: each holds up to two patients in
    flight (--jobs 10000 with loky had started hundreds of processes and run out of memory).
    """
    cores = usable_cores()
    if jobs is not None and jobs > cores:
        echo(warning(f"note: --jobs {jobs} is more than the {plural(cores, 'core')} this "
                     f"process may use; using {cores}"))  # fmt: skip
    return min(jobs or cores, cores)


def _loky(jobs: int) -> Iterator[tuple[Submit, int]]:
    """A loky process pool of its own for this run, whose workers end with it however it ends:
    shut down when the run ends (after Ctrl-C or SIGTERM too: the patients being processed are
    finished, the queued ones cancelled), and each worker leaves if this process dies without a
    word (SIGKILL). Not loky's `kill_workers`: with tasks still queued it fails in loky's own
    thread (joblib 1.6) and can hang the shutdown."""
    from joblib.externals.loky import ProcessPoolExecutor

    executor = ProcessPoolExecutor(
        max_workers=jobs, initializer=worker_init, initargs=(os.getpid(),)
    )
    try:
        yield executor.submit, jobs
    finally:  # the tasks not started were cancelled: this waits for those running (<= jobs)
        executor.shutdown(wait=True)


def worker_init(parent: int) -> None:
    """In a worker process: Ctrl-C is the parent's to handle (a terminal sends it to the whole
    process group); exit when the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="smri-parent-watch").start()


def ordered_map(
    submit: Submit, fn: Callable[..., Any], calls: Iterable[tuple[Any, ...]], window: int
) -> Iterator[Any]:
    """``fn(*args)`` for each args in `calls`, in order, with at most `window` tasks submitted.

    A task is submitted when the caller takes a result, so finished-but-untaken results never
    exceed `window`. Closing the iterator cancels the tasks not yet started.
    """
    calls = iter(calls)
    pending: deque[Any] = deque(submit(fn, *args) for args in itertools.islice(calls, window))
    try:
        while pending:
            result = pending.popleft().result()  # the future goes, and with it its reference
            for args in itertools.islice(calls, 1):
                pending.append(submit(fn, *args))
            yield result
            del result
    finally:
        for future in pending:
            future.cancel()


class DeferredInterrupt:
    """Turn Ctrl-C into a flag checked between patients, so the store is checkpointed cleanly.

    A KeyboardInterrupt raised at an arbitrary bytecode can land in a finaliser and be
    swallowed; here the first Ctrl-C only sets `requested` (a second one interrupts at once).
    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed."""
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


@contextmanager
def _dask_client(
    scheduler: str | None, jobs: int | None, echo: Callable[[str], None]
) -> Iterator[tuple[Any, int]]:
    """A connected ``distributed.Client`` and the cluster's thread count; closed on exit."""
    from distributed import Client, LocalCluster  # check_backend has made sure it is there

    if scheduler is None:
        n = jobs or os.cpu_count() or 1
        with _workers_ignore_sigint():
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster, set_as_default=False) as client:
            address = cluster.scheduler_address
            echo(f"started a local Dask cluster: {n} worker processes at {address}")
            yield client, n
        return
    from distributed.comm import resolve_address

    try:  # before Client(): one that fails to start hangs in its finaliser at exit
        resolve_address(scheduler)
    except ValueError as exc:
        raise ConfigError(
            f"{scheduler!r}: not a scheduler address ({exc})", option="--scheduler"
        ) from None
    except OSError as exc:
        raise DataError(f"Dask scheduler {scheduler}: cannot resolve its host ({exc})") from None
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise DataError(
            f"cannot reach the Dask scheduler at {scheduler} within {SCHEDULER_TIMEOUT_S:g} s "
            f"({_first_line(exc)}); start one with `dask scheduler` and pass the address it "
            "prints (e.g. tcp://HOST:8786)"
        ) from None
    with client:
        slots = _connected_slots(client, scheduler)
        echo(f"connected to the Dask scheduler at {scheduler}: {slots} worker threads")
        yield client, slots


@contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with Ctrl-C ignored (inherited through spawn's exec).

    A terminal's Ctrl-C reaches the whole process group; local Dask workers would each die
    with a traceback. This process stops them when it handles the Ctrl-C itself. During the
    start-up of the cluster (seconds) Ctrl-C is ignored here too; it applies again afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _connected_slots(client: Any, scheduler: str) -> int:
    """Wait briefly for workers; check they run this smri; return their total thread count."""
    try:
        client.wait_for_workers(1, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError):
        raise DataError(
            f"the Dask scheduler at {scheduler} has no workers after {SCHEDULER_TIMEOUT_S:g} s; "
            f"start some with `dask worker {scheduler}`"
        ) from None
    try:
        versions = client.run(_smri_version)
    except Exception as exc:  # a worker that cannot import smri fails to unpickle the call
        raise DataError(
            f"Dask workers at {scheduler} cannot run smri ({_first_line(exc)}); install "
            f"smri {__version__} in every worker's environment"
        ) from None
    other = {addr: v for addr, v in versions.items() if v != __version__}
    if other:
        addr, version = next(iter(other.items()))
        raise DataError(
            f"Dask worker {addr} runs smri {version}, this client {__version__}; "
            "install the same version everywhere"
        )
    return max(1, sum(client.nthreads().values()))


def _smri_version() -> str:
    """Run on each Dask worker: the smri version it imports."""
    return __version__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
