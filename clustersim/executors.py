"""Where sweep points run: one ``concurrent.futures.Executor`` interface for all of them.

* serial: in this process, one point at a time (a single run, tests, debugging);
* local processes: a ``ProcessPoolExecutor`` (forkserver start: workers fork from a server
  that has imported clustersim once, and never inherit the progress bar's thread);
* dask.distributed: ``Client.get_executor()`` on a running scheduler (``tcp://host:port``), or on
  a ``LocalCluster`` started here.

An unreachable scheduler is refused (``ConfigError`` naming the address) before any point runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from clustersim.errors import ConfigError

CONNECT_TIMEOUT_S = 10


class SerialExecutor(Executor):
    """Runs each call when it is submitted, in this process."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 — handed to the caller through the future
            future.set_exception(exc)
        return future


@dataclass(frozen=True)
class ExecutorChoice:
    """What the user asked for: at most one of scheduler / dask_local; workers otherwise."""

    workers: int | None = 1        # None: one per core
    scheduler: str | None = None   # tcp://host:port of a running dask scheduler
    dask_local: int | None = None  # workers of a LocalCluster started for this sweep
    dask_processes: bool = True    # LocalCluster workers as processes (False: threads)

    def describe(self) -> str:
        if self.scheduler:
            return f"dask scheduler {self.scheduler}"
        if self.dask_local:
            return f"dask LocalCluster, {self.dask_local} workers"
        return "serial" if self.workers == 1 else f"{self.workers or os.cpu_count()} processes"


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _probe(address: str) -> None:
    """Refuse a malformed or unreachable scheduler address at once (a TCP connect)."""
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if parsed.scheme != "tcp" or not host or not port:
        raise ConfigError(f"expected a scheduler address like tcp://HOST:PORT, got {address!r}",
                          key="--scheduler")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address} ({exc.strerror or exc}); "
                          "start one with `dask scheduler` or check the address",
                          key="--scheduler") from None


def _dask_client(choice: ExecutorChoice):
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError(f"dask executors need dask.distributed: pip install "
                          f"'clustersim[dist]' ({exc})") from None
    if choice.scheduler:
        _probe(choice.scheduler)
        try:
            client = Client(choice.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {choice.scheduler} "
                              f"({type(exc).__name__}: {exc}); start one with `dask scheduler` "
                              "or check the address", key="--scheduler") from None
        return client, None
    cluster = LocalCluster(n_workers=choice.dask_local, threads_per_worker=1,
                           processes=choice.dask_processes, dashboard_address=None)
    return Client(cluster), cluster


@contextlib.contextmanager
def open_executor(choice: ExecutorChoice, points: int) -> Iterator[tuple[Executor, int]]:
    """The executor and how many points to keep in flight (its workers)."""
    if choice.scheduler and choice.dask_local:
        raise ConfigError("give --scheduler or --dask-local, not both", key="--scheduler")
    if choice.scheduler or choice.dask_local:
        client, cluster = _dask_client(choice)
        try:
            slots = max(1, sum(client.nthreads().values()))
            yield client.get_executor(pure=False), slots
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    if choice.workers is not None and choice.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {choice.workers}", key="--workers")
    workers = min(choice.workers or default_workers(), max(points, 1))
    if workers == 1:
        yield SerialExecutor(), 1
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["clustersim.point_runner", "clustersim.experiment_config"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield pool, workers
