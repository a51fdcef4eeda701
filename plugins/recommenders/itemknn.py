"""Item-based collaborative filtering: a user's score for item j is the sum of
the similarities between j and the items in the user's history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.protocols import FitContext
from recforge.ranking import history_row, top_k

from recforge_plugins.recommenders._knn import cosine, knn_config, prune_rows, similar_from_rows, weight_rows


class ItemKNN:
    """Sparse item-item cosine similarity.

    Options: ``neighbors`` (similarities kept per item; None keeps all),
    ``shrink`` (added to the cosine denominator: damps pairs with little
    support), ``weighting`` (none | tfidf | bm25 over the item x user matrix,
    so heavy users count less), ``k1``/``b`` (BM25).

    Event weights (review sentiment, ``Interactions.weights``) are the values of
    the item x user matrix the similarities come from, and of the history rows
    that are scored (a disliked item votes less for its neighbours).
    """

    def __init__(
        self,
        neighbors: int | None = 100,
        shrink: float = 0.0,
        weighting: str = "none",
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        self.config = knn_config(neighbors, shrink, weighting, k1, b)
        weight_rows(sp.csr_matrix((1, 1)), weighting)  # validate the option early
        self.similarity: sp.csr_matrix | None = None
        self.seen: sp.csr_matrix | None = None

    def fit(self, train: Interactions, *, context: FitContext) -> ItemKNN:
        cfg = self.config
        item_users = weight_rows(train.weighted_csr.T.tocsr(), cfg["weighting"], k1=cfg["k1"], b=cfg["b"])
        # row i of the similarity holds item i's neighbours; scoring sums rows of the history
        self.similarity = prune_rows(cosine(item_users, shrink=cfg["shrink"]), cfg["neighbors"])
        # the history rows scoring sums carry the event weights (binary without them)
        self.seen = train.weighted_csr
        return self

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows @ self.similarity).todense(), dtype=np.float32)

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        seen = self.seen[user_ids]
        return top_k(self._score(seen), k, seen=seen if exclude_seen else None, candidates=candidates)

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        row = history_row(item_ids, self.similarity.shape[0])
        return top_k(self._score(row), k, seen=row if exclude_seen else None)

    def similar_items(self, item_id, *, k):
        return similar_from_rows(self.similarity, item_id, k)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        np.savez(
            directory / "itemknn.npz",
            **csr_to_arrays(self.similarity, "similarity"),
            **csr_to_arrays(self.seen, "seen"),
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> ItemKNN:
        directory = Path(directory)
        model = cls(**json.loads((directory / "config.json").read_text()))
        with np.load(directory / "itemknn.npz", allow_pickle=False) as data:
            model.similarity = csr_from_arrays(data, "similarity")
            model.seen = csr_from_arrays(data, "seen")
        return model
