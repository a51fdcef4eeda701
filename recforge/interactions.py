"""Dense-index views of the canonical tables that models train on.

Every model sees users and items as dense integers: item ``i`` is row ``i`` of
the items table (so items without interactions still exist and can be ranked),
user ``u`` is the ``u``-th sorted user id. ``IdMaps`` translates to and from
the original ids, which are what users see on disk and over HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True)
class IdMaps:
    """Original ids, positioned by dense index."""

    user_ids: pd.Index
    item_ids: pd.Index

    @classmethod
    def build(cls, interactions: pd.DataFrame, items: pd.DataFrame) -> IdMaps:
        users = pd.Index(np.sort(interactions["user_id"].unique()), name="user_id")
        return cls(user_ids=users, item_ids=pd.Index(items["item_id"].to_numpy(), name="item_id"))

    def user_index(self, user_ids) -> np.ndarray:
        """Dense indices of original user ids; -1 where unknown."""
        return self.user_ids.get_indexer(pd.Index(user_ids))

    def item_index(self, item_ids) -> np.ndarray:
        """Dense indices of original item ids; -1 where unknown."""
        return self.item_ids.get_indexer(pd.Index(item_ids))

    def lookup_user(self, raw: object) -> int:
        """Index of a user id given as string or integer (HTTP clients send either); -1 if unknown."""
        return _lookup(self.user_ids, raw)

    def lookup_item(self, raw: object) -> int:
        return _lookup(self.item_ids, raw)


# the one spelling of an integer id: ASCII digits, no sign but "-", no leading zeros, no spaces or "_"
# (int() alone accepts "١", " 1", "+1", "01" and "1_0", which would alias user 1 or 10)
_INTEGER = re.compile(r"-?[1-9][0-9]{0,18}|0")
_INT64 = (-(2**63), 2**63 - 1)


def parse_int_id(raw: str) -> int | None:
    """The integer a request's string id spells in canonical ASCII decimal, or None."""
    if not isinstance(raw, str) or not _INTEGER.fullmatch(raw):
        return None
    value = int(raw)
    return value if _INT64[0] <= value <= _INT64[1] else None


def _lookup(index: pd.Index, raw: object) -> int:
    """Position of ``raw`` in ``index``, -1 if absent: a string matches itself or, spelled in canonical ASCII
    decimal, the integer id; an integer (or an integral float) matches itself or its decimal string. Anything
    else (a bool, 1.5, a list) matches nothing."""
    candidates: list[object]
    if isinstance(raw, str):
        number = parse_int_id(raw)
        candidates = [raw] if number is None else [raw, number]
    elif isinstance(raw, (int, np.integer)) and not isinstance(raw, (bool, np.bool_)):
        value = int(raw)
        candidates = [str(value)] if not _INT64[0] <= value <= _INT64[1] else [value, str(value)]
    elif isinstance(raw, (float, np.floating)) and np.isfinite(raw) and float(raw).is_integer():
        # a row read from a mixed frame (recs.iloc[0]["user_id"]) turns integer ids into floats
        candidates = [raw] if abs(raw) >= 2**63 else [raw, int(raw), str(int(raw))]
    else:
        return -1
    for candidate in candidates:
        try:
            position = index.get_loc(candidate)
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if isinstance(position, (int, np.integer)):
            return int(position)
    return -1


@dataclass(frozen=True)
class Interactions:
    """A set of (user, item, timestamp, rating) events in dense indices.

    ``weights`` (one per event, or None) are training confidences, e.g. from
    review sentiment (``recforge.sentiment.training_events``); models that take
    confidences read them through :attr:`weighted_csr`. ``csr`` stays binary.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None
    n_users: int
    n_items: int
    weights: np.ndarray | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, maps: IdMaps) -> Interactions:
        users = maps.user_index(frame["user_id"])
        items = maps.item_index(frame["item_id"])
        if (users < 0).any() or (items < 0).any():
            raise ValueError("interactions reference ids that are not in the id maps")
        ratings = frame["rating"].to_numpy(np.float32) if "rating" in frame else None
        order = np.lexsort((items, frame["timestamp"].to_numpy(), users))
        return cls(
            user_ids=users[order].astype(np.int32),
            item_ids=items[order].astype(np.int32),
            timestamps=frame["timestamp"].to_numpy(np.int64)[order],
            ratings=None if ratings is None else ratings[order],
            n_users=len(maps.user_ids),
            n_items=len(maps.item_ids),
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    def concat(self, other: Interactions) -> Interactions:
        """Both event sets, re-sorted by user, time and item (e.g. train + validation)."""
        users = np.concatenate([self.user_ids, other.user_ids])
        items = np.concatenate([self.item_ids, other.item_ids])
        times = np.concatenate([self.timestamps, other.timestamps])
        ratings = None
        if self.ratings is not None and other.ratings is not None:
            ratings = np.concatenate([self.ratings, other.ratings])
        weights = None
        if self.weights is not None or other.weights is not None:
            weights = np.concatenate([_weights_or_ones(self), _weights_or_ones(other)])
        order = np.lexsort((items, times, users))
        return Interactions(
            user_ids=users[order],
            item_ids=items[order],
            timestamps=times[order],
            ratings=None if ratings is None else ratings[order],
            n_users=self.n_users,
            n_items=self.n_items,
            weights=None if weights is None else weights[order],
        )

    def with_weights(self, weights: np.ndarray | None) -> Interactions:
        """The same events with per-event training ``weights`` (aligned with the events; positive)."""
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
            if weights.shape != (len(self),):
                raise ValueError(f"{len(weights)} weights for {len(self)} events")
            if not (np.isfinite(weights).all() and (weights > 0).all()):
                raise ValueError("event weights must be finite and positive")
        return replace(self, weights=weights)

    @cached_property
    def csr(self) -> sp.csr_matrix:
        """Binary user x item matrix (duplicates collapse to 1)."""
        data = np.ones(len(self), dtype=np.float32)
        matrix = sp.csr_matrix((data, (self.user_ids, self.item_ids)), shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    @cached_property
    def weighted_csr(self) -> sp.csr_matrix:
        """User x item matrix of the event weights (a pair seen more than once: their mean);
        the binary :attr:`csr` when the events carry no weights."""
        if self.weights is None:
            return self.csr
        shape = (self.n_users, self.n_items)
        total = sp.csr_matrix((self.weights.astype(np.float64), (self.user_ids, self.item_ids)), shape=shape)
        total.sum_duplicates()
        count = sp.csr_matrix((np.ones(len(self)), (self.user_ids, self.item_ids)), shape=shape)
        count.sum_duplicates()
        # same (user, item) pattern in both, in the same canonical order
        total.data = total.data / count.data
        return total.astype(np.float32)

    @cached_property
    def bounds(self) -> np.ndarray:
        """[n_users + 1] offsets: user u's events are ``bounds[u]:bounds[u + 1]`` (events are sorted by user)."""
        return np.searchsorted(self.user_ids, np.arange(self.n_users + 1))

    @cached_property
    def sequences(self) -> list[np.ndarray]:
        """Per user, item indices in time order (empty for users without events)."""
        bounds = self.bounds
        return [self.item_ids[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]

    @cached_property
    def item_counts(self) -> np.ndarray:
        return np.bincount(self.item_ids, minlength=self.n_items).astype(np.float64)

    def last_timestamp(self) -> int:
        return int(self.timestamps.max()) if len(self) else 0


def _weights_or_ones(events: Interactions) -> np.ndarray:
    return events.weights if events.weights is not None else np.ones(len(events), dtype=np.float32)


def csr_to_arrays(matrix: sp.csr_matrix, prefix: str) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays for ``np.savez`` (no pickle)."""
    matrix = matrix.tocsr()
    return {
        f"{prefix}_data": matrix.data,
        f"{prefix}_indices": matrix.indices,
        f"{prefix}_indptr": matrix.indptr,
        f"{prefix}_shape": np.array(matrix.shape),
    }


def csr_from_arrays(data, prefix: str) -> sp.csr_matrix:
    return sp.csr_matrix(
        (data[f"{prefix}_data"], data[f"{prefix}_indices"], data[f"{prefix}_indptr"]),
        shape=tuple(data[f"{prefix}_shape"]),
    )
