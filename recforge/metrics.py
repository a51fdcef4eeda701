"""Ranking metrics as plain functions over tables, usable for any model.

``recs``: (user_id, item_id, rank) with rank starting at 1; if ``rank`` is
missing it is derived from ``score`` (descending; ties broken by item_id).
``truth``: (user_id, item_id), the held-out items. Every user in ``truth``
counts; a user with no recommendation scores 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def with_rank(recs: pd.DataFrame) -> pd.DataFrame:
    if "rank" in recs:
        return recs
    ordered = recs.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable")
    ordered = ordered.assign(rank=ordered.groupby("user_id").cumcount() + 1)
    return ordered


def _hits(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.Series]:
    """Hit rows (user_id, rank) within the top k, and the size of each user's truth."""
    top = with_rank(recs)
    top = top[top["rank"] <= k][["user_id", "item_id", "rank"]]
    truth = truth[["user_id", "item_id"]].drop_duplicates()
    hits = top.merge(truth, on=["user_id", "item_id"])
    return hits, truth.groupby("user_id").size()


def ndcg_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    hits, sizes = _hits(recs, truth, k)
    dcg = (1.0 / np.log2(hits["rank"] + 1)).groupby(hits["user_id"]).sum()
    ideal = sizes.clip(upper=k).map(lambda n: float(np.sum(1.0 / np.log2(np.arange(2, n + 2)))))
    return float((dcg.reindex(sizes.index, fill_value=0.0) / ideal).mean())


def recall_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    """Share of each user's held-out items in the top k; the hit rate under leave-one-out."""
    hits, sizes = _hits(recs, truth, k)
    found = hits.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    return float((found / sizes).mean())


def precision_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    hits, sizes = _hits(recs, truth, k)
    found = hits.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    return float((found / k).mean())


def mrr_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    hits, sizes = _hits(recs, truth, k)
    first = hits.groupby("user_id")["rank"].min()
    return float((1.0 / first).reindex(sizes.index, fill_value=0.0).mean())


def map_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    hits, sizes = _hits(recs, truth, k)
    hits = hits.sort_values(["user_id", "rank"])
    hit_number = hits.groupby("user_id").cumcount() + 1
    precision = (hit_number / hits["rank"]).groupby(hits["user_id"]).sum()
    return float((precision.reindex(sizes.index, fill_value=0.0) / sizes.clip(upper=k)).mean())


def coverage_at_k(recs: pd.DataFrame, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in anyone's top k."""
    top = with_rank(recs)
    return float(top.loc[top["rank"] <= k, "item_id"].nunique() / max(n_items, 1))


METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k, "map": map_at_k, "precision": precision_at_k}


def evaluate(recs: pd.DataFrame, truth: pd.DataFrame, ks: list[int], n_items: int) -> dict[str, float]:
    """Every metric at every k, as ``{"ndcg@10": ..., "coverage@10": ...}``."""
    results: dict[str, float] = {}
    for k in ks:
        for name, fn in METRICS.items():
            results[f"{name}@{k}"] = fn(recs, truth, k)
        results[f"coverage@{k}"] = coverage_at_k(recs, n_items, k)
    results["users"] = int(truth["user_id"].nunique())
    return results
