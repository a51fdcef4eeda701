"""Ranking metrics: one array core, used by evaluation, tuning and early stopping.

:func:`ranking_metrics` scores top-k lists given as arrays (dense item
indices, -1 padded) against each row's held-out items. :func:`evaluate` is the
table front end: ``recs`` (user_id, item_id, rank) with rank starting at 1 (if
``rank`` is missing it is derived from ``score``, descending, ties broken by
item_id) and ``truth`` (user_id, item_id), the held-out items. Every user in
``truth`` counts; a user with no recommendation scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

METRICS = ("ndcg", "recall", "mrr", "map", "precision")


def with_rank(recs: pd.DataFrame) -> pd.DataFrame:
    if "rank" in recs:
        return recs
    ordered = recs.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True])
    ordered = ordered.assign(rank=ordered.groupby("user_id").cumcount() + 1)
    return ordered


def discounts(k: int) -> np.ndarray:
    """NDCG position discounts ``1 / log2(rank + 1)`` for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def ranking_metrics(
    top_items: np.ndarray, truth: np.ndarray, k: int, metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """Mean NDCG, Recall, MRR, MAP and Precision at ``k`` over the rows, as ``{"ndcg@10": ...}``.

    ``top_items``: [n, >= k] ranked item indices per row, -1 where a list is
    shorter. ``truth``: [n] (one held-out item per row) or [n, t] held-out items
    padded with -1; every row needs at least one. Recall is the share of a row's
    held-out items in its top k (the hit rate under leave-one-out); the NDCG and
    MAP ideals count at most ``k`` held-out items.
    """
    per_row = ranking_metrics_per_row(top_items, truth, k)
    return {f"{name}@{k}": float(per_row[name].mean()) for name in metrics}


def ranking_metrics_per_row(top_items: np.ndarray, truth: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each metric of :func:`ranking_metrics` per row (arrays of length n)."""
    top = np.asarray(top_items, dtype=np.int64)[:, :k]
    truth = np.asarray(truth, dtype=np.int64)
    if truth.ndim == 1:
        truth = truth[:, None]
    n = len(top)
    if len(truth) != n:
        raise ValueError(f"{n} top-k rows for {len(truth)} truth rows")
    if n == 0:
        return {name: np.zeros(0) for name in METRICS}
    # (row, item) pairs as one int64 key; duplicate held-out items count once
    width = int(max(top.max(initial=-1), truth.max(initial=-1))) + 1
    rows = np.arange(n)[:, None]
    valid = truth >= 0
    truth_keys = np.unique((rows * width + truth)[valid])
    sizes = np.bincount(truth_keys // width, minlength=n)
    if (sizes == 0).any():
        raise ValueError("every row needs at least one held-out item")
    hits = np.isin(rows * width + top, truth_keys) & (top >= 0)
    # pad to k columns so a short list counts as misses (no columns when it has k)
    hits = np.hstack([hits, np.zeros((n, k - hits.shape[1]), dtype=bool)])
    ranks = np.arange(1, k + 1)
    found = hits.sum(axis=1)
    capped = np.minimum(sizes, k)
    discount = discounts(k)
    ideal = np.array([float(np.sum(discount[:m])) for m in range(k + 1)])
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    precision_at_hits = np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0)
    return {
        "ndcg": np.where(hits, discount, 0.0).sum(axis=1) / ideal[capped],
        "recall": found / sizes,
        "mrr": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0),
        "map": precision_at_hits.sum(axis=1) / capped,
        "precision": found / k,
    }


def table_arrays(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top items [n_users, k], truth [n_users, t]) as shared integer codes, one row per ``truth`` user (sorted)."""
    truth = truth[["user_id", "item_id"]].drop_duplicates()
    users = pd.Index(truth["user_id"].unique()).sort_values()
    top = with_rank(recs)
    top = top[top["rank"] <= k]
    rows = users.get_indexer(top["user_id"])
    top = top[rows >= 0]
    rows = rows[rows >= 0]
    codes, _ = pd.factorize(pd.concat([truth["item_id"], top["item_id"]]))
    truth_codes, top_codes = codes[: len(truth)], codes[len(truth) :]
    top_items = np.full((len(users), k), -1)
    top_items[rows, top["rank"].to_numpy(np.int64) - 1] = top_codes
    return top_items, padded_truth(users.get_indexer(truth["user_id"]), truth_codes, len(users))


def padded_truth(rows: np.ndarray, items: np.ndarray, n_rows: int) -> np.ndarray:
    """Held-out ``items`` grouped by ``rows`` (0..n_rows-1) into an [n_rows, t] array padded with -1."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts  # each row's first position (also for n_rows == 0)
    column = np.arange(len(rows)) - np.repeat(starts, counts)
    truth = np.full((n_rows, int(counts.max(initial=0))), -1)
    truth[rows[order], column] = np.asarray(items)[order]
    return truth


def coverage_at_k(recs: pd.DataFrame, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in anyone's top k."""
    top = with_rank(recs)
    return float(top.loc[top["rank"] <= k, "item_id"].nunique() / max(n_items, 1))


def evaluate(recs: pd.DataFrame, truth: pd.DataFrame, ks: list[int], n_items: int) -> dict[str, float]:
    """Every metric at every k, as ``{"ndcg@10": ..., "coverage@10": ...}``."""
    top_items, truth_items = table_arrays(recs, truth, max(ks))
    results: dict[str, float] = {}
    for k in ks:
        results.update(ranking_metrics(top_items, truth_items, k))
        results[f"coverage@{k}"] = coverage_at_k(recs, n_items, k)
    results["users"] = int(truth["user_id"].nunique())
    return results
