"""The re-ranker's candidate table: the union of the candidate models' lists, its labels and its groups.

:func:`candidate_frame` (original ids) and :func:`dense_candidate_frame` (dense
ids, the online path) build one row per (user, candidate) with each model's
score, rank and gap; :func:`labels_for` marks the held-out events among them;
:func:`group_sizes` / :func:`positive_groups` give LambdaRank its groups. The
features added to these rows are :mod:`recforge.features`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from recforge.interactions import IdMaps


def safe_name(name: str) -> str:
    """A feature-name-safe version of a model or encoder name (LightGBM rejects JSON punctuation)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name))


def candidate_frame(lists: Mapping[str, pd.DataFrame], maps: IdMaps, per_model: int) -> pd.DataFrame:
    """Union of every model's top-``per_model`` items per user, one row per (user, item).

    Columns: ``user``/``item`` (dense), ``user_id``/``item_id`` (original),
    ``<model>_score``, ``<model>_rank`` (NaN where the model did not propose
    the item) and ``<model>_gap`` (score minus the model's best score for the
    user). Rows are sorted by user, then item.
    """
    dense = {}
    for name, frame in lists.items():
        top = frame[frame["rank"] <= per_model]
        users, items = maps.user_index(top["user_id"]), maps.item_index(top["item_id"])
        dense[name] = (users, items, top["score"].to_numpy(np.float32), top["rank"].to_numpy(np.float32))
    return dense_candidate_frame(dense, maps)


def dense_candidate_frame(
    lists: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], maps: IdMaps
) -> pd.DataFrame:
    """:func:`candidate_frame` from dense (users, items, scores, ranks) per model, already cut to the
    top ``per_model``; rows whose user or item is -1 (unknown) are dropped."""
    columns = dense_candidate_columns(lists, len(maps.item_ids))
    users, items = columns.pop("user"), columns.pop("item")
    ids = {"user_id": maps.user_ids.to_numpy()[users], "item_id": maps.item_ids.to_numpy()[items]}
    return pd.DataFrame({"user": users, "item": items, **ids, **columns})


def dense_candidate_columns(
    lists: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], n_items: int
) -> dict[str, np.ndarray]:
    """The dense columns of :func:`dense_candidate_frame` (``user``, ``item``, then each model's), without ids
    or a frame: the online re-ranker builds one user's rows per request with no pandas."""
    blocks = []
    for name, (users, items, scores, ranks) in lists.items():
        valid = (users >= 0) & (items >= 0)
        keys = users[valid].astype(np.int64) * n_items + items[valid]
        keys, first = np.unique(keys, return_index=True)  # one row per (user, item): its first occurrence
        blocks.append(
            (
                safe_name(name),
                keys,
                np.asarray(scores, dtype=np.float32)[valid][first],
                np.asarray(ranks, dtype=np.float32)[valid][first],
            )
        )
    if not blocks:
        raise ValueError("no candidate lists")
    union = np.unique(np.concatenate([keys for _, keys, _, _ in blocks]))  # sorted: by user, then item
    columns: dict[str, np.ndarray] = {"user": union // n_items, "item": union % n_items}
    for key, keys, scores, ranks in blocks:
        at = np.searchsorted(union, keys)
        owners, inverse = np.unique(keys // n_items, return_inverse=True)
        best = np.full(len(owners), -np.inf, dtype=np.float32)
        np.maximum.at(best, inverse, scores)
        for suffix, values in (("score", scores), ("rank", ranks), ("gap", scores - best[inverse])):
            column = np.full(len(union), np.nan, dtype=np.float32)
            column[at] = values
            columns[f"{key}_{suffix}"] = column
    return columns


def model_columns(frame: pd.DataFrame, model: str) -> list[str]:
    key = safe_name(model)
    return [c for c in (f"{key}_score", f"{key}_rank", f"{key}_gap") if c in frame.columns]


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every feature column of a built frame (everything but ids and the label)."""
    return [c for c in frame.columns if c not in ("user", "item", "user_id", "item_id", "label")]


def truth_keys(truth: pd.DataFrame) -> pd.MultiIndex:
    """The (user_id, item_id) pairs of held-out events, for :func:`labels_for`."""
    return pd.MultiIndex.from_frame(truth[["user_id", "item_id"]])


def labels_for(frame: pd.DataFrame, truth: pd.DataFrame | pd.MultiIndex) -> np.ndarray:
    """1 where (user_id, item_id) is a held-out event of ``truth`` (a frame or its :func:`truth_keys`), else 0."""
    keys = truth if isinstance(truth, pd.MultiIndex) else truth_keys(truth)
    rows = pd.MultiIndex.from_frame(frame[["user_id", "item_id"]])
    return rows.isin(keys).astype(np.int32)


def positive_groups(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group (user, ``groups[g]`` consecutive rows), whether any of its rows has a positive label."""
    if not len(groups):
        return np.zeros(0, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)
    return np.add.reduceat(np.asarray(labels, dtype=np.float64), starts) > 0


def group_sizes(frame: pd.DataFrame) -> np.ndarray:
    """Rows per consecutive user block (the frame is sorted by user); no rows, no group."""
    users = frame["user"].to_numpy()
    if not len(users):
        return np.zeros(0, np.int64)
    boundaries = np.flatnonzero(np.diff(users)) + 1
    return np.diff(np.concatenate([[0], boundaries, [len(users)]])).astype(np.int64)
