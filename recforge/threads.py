"""How many threads a process uses for its numeric libraries.

Two uses, one home:

- :func:`resolve_threads`: a model's ``threads`` option (an integer, or ``auto``
  for every core this process may run on) as a number. Training uses all of
  them by default; a result is identical for the same seed and the same thread
  count (torch's CPU kernels and LightGBM's ``deterministic`` mode split their
  work the same way every run), but another count may change the last bits of
  a sum, and so a tie or an early-stopping round (docs/orchestration.md,
  "Scaling").
- :func:`limit_threads`: the serving and benchmark processes' cap.
- :func:`local_cluster`: a Dask LocalCluster whose worker processes share this
  machine's cores (each told its share) and train at full speed.
"""

from __future__ import annotations

import os

AUTO = "auto"
MAX_THREADS = 256


BUDGET_ENV = "RECFORGE_THREADS"  # a worker process's share of the cores, set by whoever started it


def available_cores() -> int:
    """The cores this process may use: its share when a parent set ``RECFORGE_THREADS`` (the train stage's
    worker processes), else its CPU affinity where the OS tells it, else the machine's."""
    budget = os.environ.get(BUDGET_ENV, "")
    if budget.isdigit() and int(budget) >= 1:
        return min(int(budget), MAX_THREADS)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def core_share(workers: int) -> int:
    """Each of ``workers`` processes' share of this process's cores: cores // workers, at least 1."""
    return max(1, available_cores() // workers)


def resolve_threads(value: int | str | None, *, default: int | str | None = AUTO) -> int:
    """A ``threads`` option as a count: ``auto`` (or None with ``default`` auto) is every available core.

    Raises ValueError (one line) for anything but ``auto`` or an integer in [1, MAX_THREADS]."""
    if value is None:
        value = default
    if value is None or (isinstance(value, str) and value == AUTO):
        return available_cores()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise ValueError(f"threads must be 'auto' or an integer in [1, {MAX_THREADS}], got {value!r}")
    return int(value)


def limit_threads(threads: int) -> None:
    """Cap BLAS/OpenMP/torch threads per worker process.

    Requests multiply one row by small matrices: one thread is fastest, and
    idle BLAS/OpenMP threads spinning beside torch's made a 0.05 ms product
    take 20 ms under load. Throughput comes from workers and concurrency.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


# distributed's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS
# at once). Setting it also fixes glibc's mmap threshold at 128 KiB, so every freed tensor is unmapped and the
# next one page-faulted in again: a SASRec epoch took 11.9 s instead of 6.8 s (one thread, same weights).
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
DASK_TRIM_SETTING = f"distributed.nanny.pre-spawn-environ.{TRIM_ENV}"


def slow_malloc_note() -> str | None:
    """A one-line warning when this process was started with ``MALLOC_TRIM_THRESHOLD_`` (as a Dask nanny
    starts its workers by default), else None."""
    value = os.environ.get(TRIM_ENV)
    if value is None:
        return None
    return (
        f"this process was started with {TRIM_ENV}={value} (a Dask nanny's default): glibc then unmaps every "
        "freed buffer and torch models train up to 1.7 times slower; start the workers without it "
        '(docs/orchestration.md, "Dask")'
    )


def local_cluster(workers: int):
    """A Dask ``LocalCluster`` of ``workers`` single-threaded worker processes on this machine.

    Each worker is told its share of the cores (``RECFORGE_THREADS`` = cores // workers, at least 1), so
    ``threads: auto`` in two workers on 2 cores is one thread each; and none is started with
    ``MALLOC_TRIM_THRESHOLD_``: not the nanny's, nor one in this process's environment, where an earlier
    cluster's nanny leaves it (it is put back once the workers have started). Usable as a context manager,
    as the cluster it returns.
    """
    import dask
    from distributed import LocalCluster

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"a local cluster needs at least one worker, got {workers!r}")
    saved = os.environ.pop(TRIM_ENV, None)
    try:
        with dask.config.set({DASK_TRIM_SETTING: None}):
            return LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={BUDGET_ENV: str(core_share(workers))},
            )
    finally:
        if saved is not None:
            os.environ[TRIM_ENV] = saved
