"""LambdaRank on a Dask cluster with lightgbm's ``DaskLGBMRanker`` (``rerank.distributed: true``).

The LambdaRank re-ranker calls :func:`train_dask_ranker` once per fold. The
cluster is named by an address and a worker count, never by the whole
configuration: inside a Dask task (a Prefect flow on the DaskTaskRunner) the
current client is reused; otherwise the scheduler at ``address``; otherwise a
LocalCluster of ``workers`` single-threaded processes for the call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(address: str | None = None, workers: int = 2) -> Iterator[Any]:
    """The current ``distributed.Client``, a client of the scheduler at ``address``, or a LocalCluster's."""
    from distributed import Client, get_client

    from recforge.threads import local_cluster

    try:
        current = get_client()
    except ValueError:
        current = None
    if current is not None:
        yield current
        return
    if address:
        with Client(address) as client:
            yield client
        return
    with (
        local_cluster(int(workers)) as cluster,
        Client(cluster) as client,
    ):
        yield client


def group_partitions(group: np.ndarray, parts: int) -> list[tuple[int, int, int, int]]:
    """Split groups into ``parts`` contiguous blocks: (first group, last group, first row, last row)."""
    bounds = np.concatenate([[0], np.cumsum(group)])
    edges = np.unique(np.linspace(0, len(group), parts + 1).round().astype(int))
    return [
        (int(a), int(b), int(bounds[a]), int(bounds[b])) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a
    ]


def train_dask_ranker(
    X: np.ndarray,
    y: np.ndarray,
    group: np.ndarray,
    *,
    address: str | None = None,
    workers: int = 2,
    client: Any | None = None,
    num_leaves: int = 31,
    learning_rate: float = 0.05,
    n_estimators: int = 500,
    seed: int = 0,
    **lgbm_options: Any,
):
    """Train a LambdaRank model with lightgbm's ``DaskLGBMRanker``; return a local ``LGBMRanker``.

    ``X`` [n_rows, n_features], ``y`` graded relevance per row and ``group``
    (rows per query, in row order) are split into one partition per Dask worker
    along query boundaries, so no query straddles two workers. The model trains
    a fixed ``n_estimators`` rounds (DaskLGBMRanker has no early stopping).
    ``lgbm_options`` are further LGBMRanker options (e.g. ``min_child_samples``).
    ``client`` (a ``distributed.Client``) wins over ``address``/``workers``.
    """
    import dask.array as da
    from lightgbm import DaskLGBMRanker

    X = np.ascontiguousarray(X, dtype=np.float64)
    y, group = np.asarray(y), np.asarray(group, dtype=np.int64)
    if group.sum() != len(X) or len(y) != len(X):
        raise ValueError(f"rows: X {len(X)}, y {len(y)}, sum(group) {group.sum()} must agree")
    options: dict[str, Any] = {
        "objective": "lambdarank",
        "num_leaves": int(num_leaves),
        "learning_rate": float(learning_rate),
        "n_estimators": int(n_estimators),
        "random_state": int(seed),
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }
    options.update(lgbm_options)

    def fit(active: Any) -> Any:
        n_workers = max(1, len(active.scheduler_info().get("workers", {})))
        blocks = group_partitions(group, n_workers)
        row_chunks = tuple(r1 - r0 for _, _, r0, r1 in blocks)
        group_chunks = tuple(g1 - g0 for g0, g1, _, _ in blocks)
        dX = da.from_array(X, chunks=(row_chunks, X.shape[1]))
        dy = da.from_array(y, chunks=(row_chunks,))
        dg = da.from_array(group, chunks=(group_chunks,))
        model = DaskLGBMRanker(client=active, **options)
        model.fit(dX, dy, group=dg)
        log.info("DaskLGBMRanker: %d rows, %d queries on %d workers", len(X), len(group), n_workers)
        return model.to_local()

    if client is not None:
        return fit(client)
    with dask_client(address, workers) as active:
        return fit(active)
