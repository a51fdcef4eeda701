"""Sequential item kNN: item neighbours from the ORDER of events, scored from the
user's most recent items.

Two items are neighbours when users interact with them close together in
time. For every user's time-ordered history and every gap ``d`` in
``1..window``, the pair (earlier item a, later item b) adds
``step_decay ** (d - 1)`` to ``C[a, b]`` and ``backward * step_decay ** (d - 1)``
to ``C[b, a]``. The similarity is ``C[a, b] / (n_a ** alpha * n_b ** (1 - alpha))``
(``n`` = the item's event count), pruned to ``neighbors`` entries per row.

A user's score for item j is ``sum_t recency ** age_t * S[h_t, j]`` over the
last ``history`` items ``h_t`` of their history (``age`` = 0 for the most
recent one). This is the neighbourhood family of session-based recommendation
(sequential rules / session kNN, Ludewig & Jannach 2018), which stays
competitive with recurrent and attention models on next-item tasks; it has no
seed (deterministic), and fitting is a few sparse matrix sums.

``recency`` is the option that depends most on the data (how strongly the next
event follows the last ones); tune it on validation with the train stage's
``tune:`` grid (configs/quality.yaml does). Event weights (review sentiment)
are not used: the order of events is the signal here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.protocols import FitContext
from recforge.ranking import history_row, top_k

from recforge_plugins.recommenders._knn import prune_rows, similar_from_rows

WINDOW_MAX = 200
HISTORY_MAX = 10_000
NEIGHBORS_MAX = 100_000


def _fraction(value: float, name: str, *, zero: bool) -> float:
    """A number in [0, 1] (``zero``) or (0, 1]; one-line error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(f"{name} must be a number in {'[0' if zero else '(0'}, 1], got {value!r}")
    if not (0.0 <= value <= 1.0) or (not zero and value == 0.0):
        raise ValueError(f"{name} must be a number in {'[0' if zero else '(0'}, 1], got {value!r}")
    return float(value)


def _count(value: int, name: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ValueError(f"{name} must be an integer in [1, {upper}], got {value!r}")
    return int(value)


def transition_similarity(
    train: Interactions, *, window: int, step_decay: float, backward: float, alpha: float
) -> sp.csr_matrix:
    """The order-aware item x item similarity of the module docstring (diagonal zero, not pruned)."""
    n = train.n_items
    users, items = train.user_ids, train.item_ids
    total = sp.csr_matrix((n, n), dtype=np.float64)
    for gap in range(1, window + 1):
        if len(items) <= gap:
            break
        same = users[:-gap] == users[gap:]
        if not same.any():
            break  # no user has a history longer than gap
        earlier, later = items[:-gap][same], items[gap:][same]
        weight = step_decay ** (gap - 1)
        rows, cols, values = [earlier], [later], [np.full(len(earlier), weight)]
        if backward:
            rows, cols, values = rows + [later], cols + [earlier], values + [np.full(len(later), backward * weight)]
        pairs = (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols)))
        total = total + sp.csr_matrix(pairs, shape=(n, n))
    total = total.tocoo()
    keep = total.row != total.col  # an item repeated by a user is not its own neighbour
    counts = np.maximum(train.item_counts, 1.0)
    values = total.data[keep] / (counts[total.row[keep]] ** alpha * counts[total.col[keep]] ** (1.0 - alpha))
    similarity = sp.csr_matrix((values, (total.row[keep], total.col[keep])), shape=(n, n), dtype=np.float32)
    similarity.eliminate_zeros()
    return similarity


class SequentialKNN:
    """Order-aware item neighbours scored from the most recent items (module docstring).

    Options: ``window`` (events apart that still count as neighbours, 1 to 200),
    ``step_decay`` (weight per extra step apart, (0, 1]), ``backward`` (weight of
    "b before a" relative to "a before b", [0, 1]), ``alpha`` (popularity
    normalisation, [0, 1]; 0.5 is the cosine-like geometric mean), ``neighbors``
    (kept per item; None keeps all), ``history`` (most recent items that score),
    ``recency`` (weight per step back from the most recent item, (0, 1]).
    """

    def __init__(
        self,
        window: int = 20,
        step_decay: float = 0.9,
        backward: float = 0.5,
        alpha: float = 0.5,
        neighbors: int | None = 200,
        history: int = 20,
        recency: float = 0.8,
    ) -> None:
        self.config = {
            "window": _count(window, "window", WINDOW_MAX),
            "step_decay": _fraction(step_decay, "step_decay", zero=False),
            "backward": _fraction(backward, "backward", zero=True),
            "alpha": _fraction(alpha, "alpha", zero=True),
            "neighbors": None if neighbors is None else _count(neighbors, "neighbors", NEIGHBORS_MAX),
            "history": _count(history, "history", HISTORY_MAX),
            "recency": _fraction(recency, "recency", zero=False),
        }
        self.similarity: sp.csr_matrix | None = None
        self.recent: sp.csr_matrix | None = None  # users x items: recency weights of their last items
        self.seen: sp.csr_matrix | None = None

    def _recent_row(self, item_ids: np.ndarray) -> np.ndarray:
        """Recency weights of a time-ordered history's last ``history`` items (oldest first)."""
        last = len(item_ids[-self.config["history"] :])
        return self.config["recency"] ** np.arange(last - 1, -1, -1, dtype=np.float64)

    def fit(self, train: Interactions, *, context: FitContext) -> SequentialKNN:
        cfg = self.config
        similarity = transition_similarity(
            train, window=cfg["window"], step_decay=cfg["step_decay"], backward=cfg["backward"], alpha=cfg["alpha"]
        )
        self.similarity = prune_rows(similarity, cfg["neighbors"])
        # each user's last `history` events (events are sorted by user and time), weighted by recency
        bounds = train.bounds
        age = (bounds[train.user_ids + 1] - 1) - np.arange(len(train))  # 0 = the user's most recent event
        keep = age < cfg["history"]
        self.recent = sp.csr_matrix(
            (cfg["recency"] ** age[keep].astype(np.float64), (train.user_ids[keep], train.item_ids[keep])),
            shape=(train.n_users, train.n_items),
            dtype=np.float32,
        )
        self.recent.sum_duplicates()
        self.seen = train.csr
        return self

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows @ self.similarity).todense(), dtype=np.float32)

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        seen = self.seen[user_ids] if exclude_seen else None
        return top_k(self._score(self.recent[user_ids]), k, seen=seen, candidates=candidates)

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        """Fold-in: the next items after an anonymous, time-ordered history."""
        n_items = self.similarity.shape[0]
        item_ids = np.asarray(item_ids, dtype=np.int64)
        item_ids = item_ids[(item_ids >= 0) & (item_ids < n_items)]
        recent = item_ids[-self.config["history"] :]
        row = sp.csr_matrix(
            (self._recent_row(item_ids), (np.zeros(len(recent), dtype=np.int64), recent)), shape=(1, n_items)
        )
        row.sum_duplicates()
        seen = history_row(item_ids, n_items) if exclude_seen and len(item_ids) else None
        return top_k(self._score(row), k, seen=seen)

    def similar_items(self, item_id, *, k):
        return similar_from_rows(self.similarity, item_id, k)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        np.savez(
            directory / "seqknn.npz",
            **csr_to_arrays(self.similarity, "similarity"),
            **csr_to_arrays(self.recent, "recent"),
            **csr_to_arrays(self.seen, "seen"),
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> SequentialKNN:
        directory = Path(directory)
        model = cls(**json.loads((directory / "config.json").read_text()))
        with np.load(directory / "seqknn.npz", allow_pickle=False) as data:
            model.similarity = csr_from_arrays(data, "similarity")
            model.recent = csr_from_arrays(data, "recent")
            model.seen = csr_from_arrays(data, "seen")
        return model
