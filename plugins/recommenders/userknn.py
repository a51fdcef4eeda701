"""User-based collaborative filtering: a user's score for an item is the
similarity-weighted vote of the most similar users who interacted with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.protocols import FitContext
from recforge.ranking import best_unordered, history_row, top_k

from recforge_plugins.recommenders._knn import knn_config, weight_rows

DENSE_ENTRIES = 32_000_000  # similarities held dense at once (128 MiB of float32), whatever the number of users
POOL_AUTO = 50_000  # neighbour candidates under ``pool: auto``: every user up to this many, else a sample of it


class UserKNN:
    """Sparse user-user cosine similarity, computed per batch of users at
    recommendation time (nothing quadratic is stored).

    Options: ``neighbors`` (users who vote), ``shrink`` (cosine denominator
    term), ``weighting`` (none | tfidf | bm25 over the user x item matrix, so
    popular items count less), ``k1``/``b`` (BM25).

    Event weights (review sentiment, ``Interactions.weights``) are the values of
    the user x item matrix: they shape the user similarities and each
    neighbour's vote for an item.

    ``pool`` bounds the users a query is compared with (the neighbour
    candidates): null, every training user; an integer n, n of them drawn
    uniformly with the run's seed when there are more; ``auto``, POOL_AUTO.
    Exact user-kNN compares every query with every user, so its lists cost
    users x users: about 50 minutes a pass at 500,000 users on 2 cores
    (bench/userknn_pool.py: 30.8-32.1 s per 5,000 queries). With a
    pool they cost users x pool, and the neighbours are the best among a
    uniform sample (docs/models.md, "user-kNN's pool").
    """

    def __init__(
        self,
        neighbors: int | None = 50,
        shrink: float = 0.0,
        weighting: str = "none",
        k1: float = 1.2,
        b: float = 0.75,
        pool: int | str | None = None,
    ) -> None:
        self.config = knn_config(neighbors, shrink, weighting, k1, b)
        self.config["pool"] = _pool_size(pool)
        weight_rows(sp.csr_matrix((1, 1)), weighting)
        self.vectors: sp.csr_matrix | None = None
        self.seen: sp.csr_matrix | None = None
        self.pool_users: np.ndarray | None = None  # sorted user indices of the pool; None: every user
        self._pooled: tuple | None = None

    def fit(self, train: Interactions, *, context: FitContext) -> UserKNN:
        cfg = self.config
        # the votes ``seen`` casts carry the event weights (binary without them)
        self.seen = train.weighted_csr
        self.vectors = weight_rows(self.seen, cfg["weighting"], k1=cfg["k1"], b=cfg["b"])
        self.pool_users = draw_pool(train.n_users, cfg["pool"], context.seed)
        self._pooled = None
        return self

    def _norms(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())

    def _pool(self) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
        """(pool vectors, pool votes, pool vector norms, each user's column in the pool or -1); once per model."""
        if self._pooled is None:
            n_users = self.vectors.shape[0]
            if self.pool_users is None:
                vectors, seen, column = self.vectors, self.seen, np.arange(n_users)
            else:
                vectors, seen = self.vectors[self.pool_users], self.seen[self.pool_users]
                column = np.full(n_users, -1)
                column[self.pool_users] = np.arange(len(self.pool_users))
            self._pooled = (vectors, seen, self._norms(vectors), column)
        return self._pooled

    def _score(self, rows: sp.csr_matrix, exclude: np.ndarray | None) -> np.ndarray:
        """Scores for query rows in the weighted space; ``exclude`` are the query users themselves.

        The similarities of a batch of queries to every user are nearly dense at scale (a popular item links
        most users), so they are computed as dense blocks of at most DENSE_ENTRIES values, pruned to the
        ``neighbors`` largest per row (``ranking.best_unordered``) and only then made sparse for the vote."""
        vectors, seen, vector_norms, column = self._pool()
        n_users, shrink, k = vectors.shape[0], self.config["shrink"], self.config["neighbors"]
        step = max(1, DENSE_ENTRIES // max(n_users, 1))
        out = np.zeros((rows.shape[0], seen.shape[1]), dtype=np.float32)
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]
            sims = (part @ vectors.T).toarray()
            sims /= self._norms(part)[:, None] * vector_norms[None, :] + shrink + 1e-12
            if exclude is not None:  # a query user in the pool is not its own neighbour
                where = column[exclude[start : start + step]]
                inside = where >= 0
                sims[np.flatnonzero(inside), where[inside]] = 0.0
            if k and k < n_users:
                top = best_unordered(sims, k)
                values = np.take_along_axis(sims, top, axis=1)
                keep = values != 0
                line = np.repeat(np.arange(len(sims)), k).reshape(len(sims), k)
                pruned = sp.csr_matrix((values[keep], (line[keep], top[keep])), shape=sims.shape, dtype=np.float32)
            else:
                pruned = sp.csr_matrix(sims)
            out[start : start + step] = (pruned @ seen).toarray()
        return out

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        scores = self._score(self.vectors[user_ids], user_ids)
        return top_k(scores, k, seen=self.seen[user_ids] if exclude_seen else None, candidates=candidates)

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        row = history_row(item_ids, self.seen.shape[1])
        if self.config["weighting"] == "none":  # the row as it is: no need to copy every training row with it
            weighted = sp.csr_matrix(row, dtype=np.float32)
        else:  # weight the anonymous row like a training row (IDF over the training rows and this one)
            weighted = weight_rows(
                sp.vstack([self.seen, row]).tocsr(), self.config["weighting"], k1=self.config["k1"], b=self.config["b"]
            )[-1]
        return top_k(self._score(weighted, None), k, seen=row if exclude_seen else None)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        pool = {} if self.pool_users is None else {"pool_users": self.pool_users}
        np.savez(
            directory / "userknn.npz",
            **csr_to_arrays(self.vectors, "vectors"),
            **csr_to_arrays(self.seen, "seen"),
            **pool,
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> UserKNN:
        directory = Path(directory)
        model = cls(**json.loads((directory / "config.json").read_text()))
        with np.load(directory / "userknn.npz", allow_pickle=False) as data:
            model.vectors = csr_from_arrays(data, "vectors")
            model.seen = csr_from_arrays(data, "seen")
            model.pool_users = data["pool_users"] if "pool_users" in data.files else None
        return model


def _pool_size(pool: int | str | None) -> int | None:
    """``pool`` as a user count (None: every user); one-line ValueError for anything else."""
    if pool == "auto":
        return POOL_AUTO
    if pool is None or (isinstance(pool, int) and not isinstance(pool, bool) and pool >= 1):
        return pool
    raise ValueError(f"pool must be null, 'auto' or a positive integer, got {pool!r}")


def draw_pool(n_users: int, size: int | None, seed: int) -> np.ndarray | None:
    """The pool's sorted user indices: ``size`` of ``n_users`` drawn uniformly with ``seed``; None (every
    user) when there is no bound or no more users than it."""
    if size is None or n_users <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_users, size=size, replace=False))
