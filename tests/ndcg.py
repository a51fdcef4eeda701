"""NDCG@k written out by hand, independent of recforge.metrics, to check the reported figures against."""

from __future__ import annotations

import numpy as np
import pandas as pd


def recomputed_ndcg(lists: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    """Mean NDCG@k of ``lists`` (user_id, item_id, rank) against ``truth`` (user_id, item_id).

    Binary gains; every truth user counts (no list: 0); the ideal counts at most k held-out items.
    """
    total = 0.0
    ranked = lists[lists["rank"] <= k].sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].apply(list)
    for user, items in truth.groupby("user_id")["item_id"]:
        relevant = set(items)
        listed = ranked.get(user, [])
        dcg = sum(1 / np.log2(position + 2) for position, item in enumerate(listed) if item in relevant)
        total += dcg / sum(1 / np.log2(position + 2) for position in range(min(len(relevant), k)))
    return total / truth["user_id"].nunique()
