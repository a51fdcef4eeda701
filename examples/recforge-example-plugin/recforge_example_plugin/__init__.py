"""Recommends the items that appeared most recently in the training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.protocols import FitContext
from recforge.ranking import top_k


class Newest:
    """Scores each item by the time of its first interaction (newer is better)."""

    def __init__(self) -> None:
        self.first_seen: np.ndarray | None = None
        self.seen = None

    def fit(self, train: Interactions, *, context: FitContext) -> Newest:
        order = np.argsort(train.timestamps, kind="stable")
        first_time = np.full(train.n_items, np.inf)
        np.minimum.at(first_time, train.item_ids[order], train.timestamps[order].astype(float))
        self.first_seen = np.where(np.isfinite(first_time), first_time, -np.inf)
        self.seen = train.csr
        return self

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        scores = np.broadcast_to(self.first_seen, (len(user_ids), len(self.first_seen)))
        return top_k(scores, k, seen=self.seen[user_ids] if exclude_seen else None, candidates=candidates)

    def save(self, directory: Path) -> None:
        np.savez(Path(directory) / "newest.npz", first_seen=self.first_seen, **csr_to_arrays(self.seen, "seen"))
        (Path(directory) / "config.json").write_text(json.dumps({}))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> Newest:
        model = cls()
        with np.load(Path(directory) / "newest.npz", allow_pickle=False) as data:
            model.first_seen = data["first_seen"]
            model.seen = csr_from_arrays(data, "seen")
        return model
