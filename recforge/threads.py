"""How many threads a serving or benchmark process uses for its numeric libraries."""

from __future__ import annotations


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
