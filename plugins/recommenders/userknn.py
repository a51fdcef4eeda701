"""User-based collaborative filtering: a user's score for an item is the
similarity-weighted vote of the most similar users who interacted with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.protocols import FitContext
from recforge.ranking import history_row, top_k

from recforge_plugins.recommenders._knn import knn_config, prune_rows, weight_rows


class UserKNN:
    """Sparse user-user cosine similarity, computed per batch of users at
    recommendation time (nothing quadratic is stored).

    Options: ``neighbors`` (users who vote), ``shrink`` (cosine denominator
    term), ``weighting`` (none | tfidf | bm25 over the user x item matrix, so
    popular items count less), ``k1``/``b`` (BM25).

    Event weights (review sentiment, ``Interactions.weights``) are the values of
    the user x item matrix: they shape the user similarities and each
    neighbour's vote for an item.
    """

    def __init__(
        self, neighbors: int | None = 50, shrink: float = 0.0, weighting: str = "none", k1: float = 1.2, b: float = 0.75
    ) -> None:
        self.config = knn_config(neighbors, shrink, weighting, k1, b)
        weight_rows(sp.csr_matrix((1, 1)), weighting)
        self.vectors: sp.csr_matrix | None = None
        self.seen: sp.csr_matrix | None = None

    def fit(self, train: Interactions, *, context: FitContext) -> UserKNN:
        cfg = self.config
        # the votes ``seen`` casts carry the event weights (binary without them)
        self.seen = train.weighted_csr
        self.vectors = weight_rows(self.seen, cfg["weighting"], k1=cfg["k1"], b=cfg["b"])
        return self

    def _norms(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())

    def _score(self, rows: sp.csr_matrix, exclude: np.ndarray | None) -> np.ndarray:
        """Scores for query rows in the weighted space; ``exclude`` are the query users themselves."""
        sims = (rows @ self.vectors.T).tocoo()
        norms = self._norms(self.vectors)
        query = self._norms(rows)
        sims.data = sims.data / (query[sims.row] * norms[sims.col] + self.config["shrink"] + 1e-12)
        if exclude is not None:
            sims.data[sims.col == exclude[sims.row]] = 0.0
        sims = prune_rows(sims.tocsr(), self.config["neighbors"])
        return np.asarray((sims @ self.seen).todense(), dtype=np.float32)

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        scores = self._score(self.vectors[user_ids], user_ids)
        return top_k(scores, k, seen=self.seen[user_ids] if exclude_seen else None, candidates=candidates)

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        row = history_row(item_ids, self.seen.shape[1])
        # weight the anonymous row like a training row (IDF of its items)
        weighted = weight_rows(
            sp.vstack([self.seen, row]).tocsr(), self.config["weighting"], k1=self.config["k1"], b=self.config["b"]
        )[-1]
        return top_k(self._score(weighted, None), k, seen=row if exclude_seen else None)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        np.savez(
            directory / "userknn.npz", **csr_to_arrays(self.vectors, "vectors"), **csr_to_arrays(self.seen, "seen")
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> UserKNN:
        directory = Path(directory)
        model = cls(**json.loads((directory / "config.json").read_text()))
        with np.load(directory / "userknn.npz", allow_pickle=False) as data:
            model.vectors = csr_from_arrays(data, "vectors")
            model.seen = csr_from_arrays(data, "seen")
        return model
