"""Matrix factorisation for implicit feedback with the ``implicit`` library:
ALS (weighted least squares; an observed entry weighs ``alpha``) and BPR.

Only the factor arrays are kept (saved as npz), so a saved model needs neither
pickle nor implicit to score.

Event weights (``Interactions.weights``, e.g. review sentiment): ALS takes them
as the matrix values, so an entry's confidence is ``1 + alpha * weight``.
implicit's BPR reads only which entries are non-zero, so there an event whose
weight is below 1 (a negative review) is not a liked item; its item can then be
drawn as a negative. The seen items (excluded from lists) are all events.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.protocols import FitContext
from recforge.ranking import history_row, top_k
from recforge.threads import resolve_threads

log = logging.getLogger(__name__)

ALGORITHMS = ("als", "bpr")


class MatrixFactorization:
    """Latent factors from ``implicit`` (CPU implementation).

    Options: ``algorithm`` (als | bpr), ``factors``, ``regularization``,
    ``iterations``, ``alpha`` (ALS confidence scale), ``learning_rate`` (BPR),
    ``threads`` (implicit's worker threads; ``auto``, the default, is every available core — BLAS is
    limited to one thread during fitting as implicit recommends), ``seed``.
    """

    def __init__(
        self,
        algorithm: str = "als",
        factors: int = 64,
        regularization: float = 0.01,
        iterations: int = 15,
        alpha: float = 1.0,
        learning_rate: float = 0.01,
        threads: int | str | None = None,
        seed: int | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.config = {
            "algorithm": algorithm,
            "factors": int(factors),
            "regularization": float(regularization),
            "iterations": int(iterations),
            "alpha": float(alpha),
            "learning_rate": float(learning_rate),
            "threads": threads,
            "seed": seed,
        }
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.seen: sp.csr_matrix | None = None

    def fit(self, train: Interactions, *, context: FitContext) -> MatrixFactorization:
        import threadpoolctl
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        cfg = self.config
        threads = resolve_threads(cfg["threads"])
        seed = cfg["seed"] if cfg["seed"] is not None else context.seed
        self.seen = train.csr
        liked = train.weighted_csr
        if cfg["algorithm"] == "bpr" and train.weights is not None:
            liked = liked.copy()
            liked.data[liked.data < 1.0] = 0.0
            liked.eliminate_zeros()
        # implicit's own threads do the work; a threaded BLAS underneath only contends
        # (imported first so that the limit also covers the BLAS it loads)
        with threadpoolctl.threadpool_limits(1, "blas"):
            if cfg["algorithm"] == "als":
                model = AlternatingLeastSquares(
                    factors=cfg["factors"],
                    regularization=cfg["regularization"],
                    alpha=cfg["alpha"],
                    iterations=cfg["iterations"],
                    num_threads=threads,
                    random_state=seed,
                )
            else:
                model = BayesianPersonalizedRanking(
                    factors=cfg["factors"],
                    learning_rate=cfg["learning_rate"],
                    regularization=cfg["regularization"],
                    iterations=cfg["iterations"],
                    num_threads=threads,
                    random_state=seed,
                )
            model.fit(liked, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        scores = self.user_factors[user_ids] @ self.item_factors.T
        return top_k(scores, k, seen=self.seen[user_ids] if exclude_seen else None, candidates=candidates)

    def fold_in(self, item_ids: np.ndarray) -> np.ndarray:
        """A user vector for an anonymous history: one ALS least-squares step
        (for BPR the same ridge fit, which keeps the item side fixed)."""
        row = history_row(item_ids, self.item_factors.shape[0])
        items = row.indices
        factors = self.item_factors
        reg = max(self.config["regularization"], 1e-3)
        # implicit's ALS weights an observed entry by alpha * value (1 for missing ones)
        confidence = self.config["alpha"] if self.config["algorithm"] == "als" else 1.0
        gram = (
            factors.T @ factors if self.config["algorithm"] == "als" else np.zeros((factors.shape[1],) * 2, np.float32)
        )
        chosen = factors[items]
        lhs = gram + (confidence - 1.0 if self.config["algorithm"] == "als" else 1.0) * chosen.T @ chosen
        lhs += reg * np.eye(factors.shape[1], dtype=np.float32)
        rhs = confidence * chosen.sum(axis=0)
        return np.linalg.solve(lhs, rhs).astype(np.float32)

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        row = history_row(item_ids, self.item_factors.shape[0])
        scores = (self.item_factors @ self.fold_in(item_ids))[None, :]
        return top_k(scores, k, seen=row if exclude_seen else None)

    def similar_items(self, item_id, *, k):
        """Cosine neighbours in the item factor space."""
        vectors = self.item_factors / np.maximum(np.linalg.norm(self.item_factors, axis=1, keepdims=True), 1e-12)
        scores = (vectors @ vectors[int(item_id)])[None, :]
        itself = history_row([item_id], len(vectors))
        items, scores = top_k(scores, k, seen=itself)
        return items[0], scores[0]

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        np.savez(
            directory / "factors.npz",
            user_factors=self.user_factors,
            item_factors=self.item_factors,
            **csr_to_arrays(self.seen, "seen"),
        )
        (directory / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> MatrixFactorization:
        directory = Path(directory)
        model = cls(**json.loads((directory / "config.json").read_text()))
        with np.load(directory / "factors.npz", allow_pickle=False) as data:
            model.user_factors = data["user_factors"]
            model.item_factors = data["item_factors"]
            model.seen = csr_from_arrays(data, "seen")
        return model
