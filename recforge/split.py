"""Train / validation / test splits of the interactions table (original ids)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recforge.errors import RecforgeError
from recforge.params import SplitParams


def split(interactions: pd.DataFrame, params: SplitParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (train, val, test); deterministic for a given seed."""
    if interactions.empty:
        raise RecforgeError("cannot split an empty interactions table")
    ordered = interactions.sort_values(["user_id", "timestamp", "item_id"]).reset_index(drop=True)
    if params.method == "leave-last-out":
        return _leave_last_out(ordered)
    if params.method == "temporal":
        return _temporal(ordered, params)
    return _random(ordered, params)


def _leave_last_out(ordered: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Last event per user -> test, second-last -> validation (users with >= 3 events)."""
    from_end = ordered.groupby("user_id").cumcount(ascending=False).to_numpy()
    sizes = ordered.groupby("user_id")["item_id"].transform("size").to_numpy()
    test = (from_end == 0) & (sizes >= 2)
    val = (from_end == 1) & (sizes >= 3)
    train = ~(test | val)
    return (
        ordered[train].reset_index(drop=True),
        ordered[val].reset_index(drop=True),
        ordered[test].reset_index(drop=True),
    )


def _temporal(ordered: pd.DataFrame, params: SplitParams):
    """A global time cut: the latest ``test_fraction`` of events is test, the slice before it validation.

    Validation and test keep only users and items seen in training (they cannot be scored otherwise).
    """
    times = ordered["timestamp"].to_numpy()
    test_cut = np.quantile(times, 1 - params.test_fraction)
    val_cut = np.quantile(times, 1 - params.test_fraction - params.val_fraction)
    train = ordered[times < val_cut]
    val = ordered[(times >= val_cut) & (times < test_cut)]
    test = ordered[times >= test_cut]
    known_users, known_items = set(train["user_id"]), set(train["item_id"])
    val = val[val["user_id"].isin(known_users) & val["item_id"].isin(known_items)]
    test = test[test["user_id"].isin(known_users) & test["item_id"].isin(known_items)]
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


def _random(ordered: pd.DataFrame, params: SplitParams):
    """Per user, a random ``test_fraction`` / ``val_fraction`` of events (at least one event stays in train)."""
    rng = np.random.default_rng(params.seed)
    draws = rng.random(len(ordered))
    first = ordered.groupby("user_id").cumcount().to_numpy() == 0
    test = (draws < params.test_fraction) & ~first
    val = (draws >= params.test_fraction) & (draws < params.test_fraction + params.val_fraction) & ~first
    train = ~(test | val)
    return (
        ordered[train].reset_index(drop=True),
        ordered[val].reset_index(drop=True),
        ordered[test].reset_index(drop=True),
    )
