"""Top-k selection shared by every recommender: history exclusion, candidate
restriction and padding behave the same for all models."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_k(
    scores: np.ndarray,
    k: int,
    *,
    seen: sp.csr_matrix | None = None,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row of ``scores`` ([n, n_items]).

    ``seen`` rows (aligned with ``scores`` rows) are masked out; with
    ``candidates`` ([n, c], -1 padded) every other item is masked. Rows with
    fewer than ``k`` eligible items are padded with -1 / -inf. Ties break
    towards the lower item index, so results are deterministic. A NaN score
    counts as -inf: its item is never listed.
    """
    # a new array (the caller's is left as it is): float32 scores stay float32 (half the memory traffic over a
    # wide catalogue; float32 -> float64 is exact, so the order and the ties are the same), anything else is
    # compared in float64; fmax turns NaN into -inf in the same pass (torch's topk would rank NaN first)
    dtype = np.float32 if np.asarray(scores).dtype == np.float32 else np.float64
    scores = np.fmax(np.asarray(scores, dtype=dtype), -np.inf)
    n_rows, n_items = scores.shape
    if candidates is not None:
        mask = np.full_like(scores, -np.inf)
        rows = np.repeat(np.arange(n_rows), candidates.shape[1])
        cols = candidates.ravel()
        valid = cols >= 0
        mask[rows[valid], cols[valid]] = 0.0
        scores += mask
    if seen is not None:  # from the CSR arrays: a COO copy cost a fifth of top_k's time on the per-request path
        seen = seen if seen.format == "csr" else seen.tocsr()
        scores[np.repeat(np.arange(n_rows), np.diff(seen.indptr)), seen.indices] = -np.inf
    k_eff = min(k, n_items)
    # stable: sort by (-score, index) using lexsort on the partitioned block
    part = best_unordered(scores, k_eff)
    part_scores = np.take_along_axis(scores, part)
    # include all items tied with the k-th score so tie-breaking is by index
    order = np.lexsort((part, -part_scores))
    items = np.take_along_axis(part, order)
    top_scores = np.take_along_axis(part_scores, order)
    if k_eff < n_items:
        items, top_scores = _fix_ties(scores, items, top_scores, k_eff)
    items = np.where(np.isneginf(top_scores), -1, items)
    pad = k - k_eff  # columns k_eff..k-1 (none when k <= n_items)
    items = np.hstack([items, np.full((n_rows, pad), -1)])
    top_scores = np.hstack([top_scores, np.full((n_rows, pad), -np.inf)])
    return items.astype(np.int64), top_scores.astype(np.float32)


# from this many scores on, torch's multi-threaded topk picks the best k (about 15x numpy's argpartition over
# 1,024 x 100,000); below it numpy's call costs less than torch's overhead (a single list at serving time)
TORCH_MIN_SCORES = 1 << 16


def best_unordered(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` best scores of each row, in no order; any member of a tie at the k-th place
    (``top_k`` repairs the tie; a kNN neighbour pick keeps it, as numpy's partition did)."""
    if scores.size >= TORCH_MIN_SCORES:
        try:
            import torch
        except ImportError:  # torch is an optional extra: numpy gives the same set
            pass
        else:
            return torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
    return np.argpartition(-scores, k - 1)[:, :k]


def _fix_ties(scores: np.ndarray, items: np.ndarray, top_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The partition picks an arbitrary member of a tie at the k-th place; pick the lowest index.

    A tied row keeps the partition's items above the k-th score (all of them are there), then takes the
    lowest-index items equal to it from a prefix of the row that grows 4x until it holds enough: a sparse
    model's row ties at 0 over most of a wide catalogue, and its first zeros come early."""
    kth = top_scores[:, -1:]
    tied_rows = np.nonzero(np.count_nonzero(scores == kth, axis=1) > np.count_nonzero(top_scores == kth, axis=1))[0]
    n_items = scores.shape[1]
    for row in tied_rows:
        values, cut = scores[row], kth[row, 0]
        above = top_scores[row] > cut
        better, better_scores = items[row][above], top_scores[row][above]
        better = better[np.lexsort((better, -better_scores))]
        width = 4 * k
        tied = np.flatnonzero(values[:width] == cut)
        while len(tied) < k - len(better) and width < n_items:
            width *= 4
            tied = np.flatnonzero(values[:width] == cut)
        items[row] = np.concatenate([better, tied[: k - len(better)]])
        top_scores[row] = values[items[row]]
    return items, top_scores


def batched(n: int, batch_size: int):
    """Slices covering range(n) in batches."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def history_row(item_ids: np.ndarray, n_items: int) -> sp.csr_matrix:
    """A 1 x n_items binary row marking ``item_ids`` (an anonymous history, or one item to exclude)."""
    item_ids = np.unique(np.asarray(item_ids, dtype=np.int64))
    item_ids = item_ids[(item_ids >= 0) & (item_ids < n_items)]
    # the CSR arrays directly (sorted, unique columns): no COO conversion on the per-request path
    indptr = np.array([0, len(item_ids)])
    return sp.csr_matrix((np.ones(len(item_ids), dtype=np.float32), item_ids, indptr), shape=(1, n_items))


RRF_OFFSET = 10.0  # reciprocal rank fusion: 1 / (RRF_OFFSET + rank)


def reciprocal_rank_fusion(ranks: np.ndarray) -> np.ndarray:
    """Per row of ``ranks`` ([n, models], NaN where a model did not list the item), the sum of 1 / (RRF_OFFSET + rank)."""
    return np.nansum(1.0 / (RRF_OFFSET + np.asarray(ranks, dtype=np.float64)), axis=1)
