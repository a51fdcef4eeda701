"""Where the flows' independent tasks run: threads in this process or a Dask cluster."""

from __future__ import annotations

from recforge.params import Params
from recforge.threads import local_cluster


def task_runner(params: Params):
    """The Prefect task runner for ``orchestration.runner``.

    ``local``: a thread pool with ``orchestration.dask_workers`` threads (tasks
    in one process). ``dask``: prefect-dask's DaskTaskRunner on the cluster at
    ``orchestration.dask_address``, or a LocalCluster of ``dask_workers``
    single-threaded worker processes that share this machine's cores
    (``recforge.threads.local_cluster``: each is told its share, so
    ``threads: auto`` in two workers on 2 cores is one thread each, and none
    gets the nanny's ``MALLOC_TRIM_THRESHOLD_``). A worker of a remote cluster uses its own machine's cores, or
    the ``RECFORGE_THREADS`` it was started with (docs/orchestration.md,
    "Dask").
    """
    settings = params.orchestration
    if settings.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"workers": settings.dask_workers})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=settings.dask_workers)
