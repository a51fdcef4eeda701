"""The re-ranker's validation rows within a memory bound that does not grow with the number of users.

The validation part's candidate + feature table has a row per (user, candidate):
at a million events about 9 million rows, which as whole pandas frames (and the
copies made to train each fold) filled 21 GiB. Two facts bound it:

- **Only users with a positive candidate train** (LambdaRank's gradient is zero
  on a list without a relevant item; the plugin already left them out). Which
  users those are is read from the candidate lists and the validation events
  alone, before any feature is built (:func:`positive_val_users`).
- **The learning curve is flat well before every such user is used**
  (docs/rerank.md, "learning curve": on ml-latest-small half of the 610
  validation users gave within 0.003 NDCG@10 of all of them, within the draws'
  spread). So the re-ranker trains on at most ``rerank.max_train_users`` of them
  (``auto``: :data:`TRAIN_USERS_AUTO`), drawn uniformly with the run's seed
  (:func:`sample_training_users`); below the cap every positive user trains, and
  the result is exactly the unsampled one.

:class:`ValRows` takes the feature blocks of :func:`recforge.rerank.iter_part`
one at a time: the sampled users' rows stay in memory as one float32 matrix (no
frame), every other row's float32 features are spilled to a temporary file and
scored block by block once the re-ranker is fitted (those users' validation
lists: the ensemble's score, as before). Peak memory is the sampled rows plus
one block, whatever the number of users.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.candidates import feature_columns, group_sizes, labels_for, truth_keys
from recforge.interactions import IdMaps
from recforge.ranking import batched
from recforge.sizing import is_auto

log = logging.getLogger(__name__)

# ``rerank.max_train_users: auto``: users with a positive candidate the re-ranker trains on at most. At this
# size LightGBM sees 1-4 million rows (100-400 candidates a user), a few hundred MiB of float32 features.
TRAIN_USERS_AUTO = 10_000
SCORE_ROWS = 500_000  # spilled rows scored per call


def positive_val_users(lists: dict[str, pd.DataFrame], truth: pd.DataFrame, maps: IdMaps, per_model: int) -> np.ndarray:
    """Dense ids (sorted) of the validation users whose held-out item is among the union of the candidates."""
    keys = truth_keys(truth)
    hits = []
    for frame in lists.values():  # one list at a time: the union of all lists' pairs was 200M rows at 10M events
        proposed = frame.loc[frame["rank"] <= per_model, ["user_id", "item_id"]]
        hits.append(proposed["user_id"].to_numpy()[labels_for(proposed, keys) == 1])
    if not hits:
        return np.zeros(0, dtype=np.int64)
    users = maps.user_index(pd.unique(np.concatenate(hits)))
    return np.unique(users[users >= 0]).astype(np.int64)


def sample_training_users(positive: np.ndarray, cap: int | str | None, seed: int) -> np.ndarray:
    """The positive users the re-ranker trains on: all of them up to ``cap`` (``auto``: TRAIN_USERS_AUTO; None:
    no cap), else ``cap`` drawn uniformly without replacement with ``seed``; sorted dense ids."""
    limit = TRAIN_USERS_AUTO if is_auto(cap) else cap
    if limit is None or len(positive) <= int(limit):
        return np.asarray(positive, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(len(positive), size=int(limit), replace=False)
    log.info("rerank: training on %d of %d users with a positive candidate (max_train_users)", limit, len(positive))
    return np.sort(np.asarray(positive, dtype=np.int64)[chosen])


class ValRows:
    """The validation part's rows, split into training rows (in memory) and the rest (spilled to disk).

    ``add(block)`` for each feature block (sorted by user, as ``iter_part`` yields them);
    then ``X``/``labels``/``groups`` are the training rows, ``score_rest(reranker)`` scores the
    others, and ``lists(train_scores, rest_scores, k)`` gives every validation user's ranked list.
    """

    def __init__(self, truth: pd.DataFrame, train_users: np.ndarray, maps: IdMaps, spill_dir: Path | None = None):
        self.keys = truth_keys(truth)
        self.train_users = np.asarray(train_users, dtype=np.int64)
        self.maps = maps
        self.features: list[str] | None = None
        self._X: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._keys: dict[str, list[np.ndarray]] = {"train": [], "rest": []}
        self._spill = tempfile.NamedTemporaryFile(prefix="rerank-val-", suffix=".f32", dir=spill_dir)  # noqa: SIM115
        self.rest_rows = 0
        # set by finish(): the training rows (float32 features, labels, group sizes) and both parts' (user, item)
        self.X = self.labels = self.groups = None
        self.train_keys = self.rest_keys = np.zeros((0, 2), np.int64)

    def add(self, block: pd.DataFrame) -> None:
        if self.features is None:
            self.features = feature_columns(block)
        X = block[self.features].to_numpy(np.float32)
        users, items = block["user"].to_numpy(np.int64), block["item"].to_numpy(np.int64)
        train = np.isin(users, self.train_users)
        if train.any():
            self._X.append(X[train])
            self._labels.append(labels_for(block[train], self.keys))
            self._keys["train"].append(np.stack([users[train], items[train]], axis=1))
        if not train.all():
            rest = np.ascontiguousarray(X[~train])
            self._spill.write(rest.tobytes())
            self.rest_rows += len(rest)
            self._keys["rest"].append(np.stack([users[~train], items[~train]], axis=1))

    def finish(self) -> ValRows:
        """Join the training blocks (X float32, labels, group sizes: rows are sorted by user)."""
        self._spill.flush()
        n_features = len(self.features or [])
        self.X = np.concatenate(self._X) if self._X else np.zeros((0, n_features), np.float32)
        self._X = []
        self.labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int32)
        self.train_keys = self._join("train")
        self.rest_keys = self._join("rest")
        self.groups = group_sizes(pd.DataFrame({"user": self.train_keys[:, 0]}))
        return self

    def _join(self, part: str) -> np.ndarray:
        return np.concatenate(self._keys[part]) if self._keys[part] else np.zeros((0, 2), np.int64)

    def score_rest(self, score) -> np.ndarray:
        """``score(X)`` over the spilled rows, ``SCORE_ROWS`` at a time (float64).

        Each block is read into memory of its own and freed (not a memory map: the pages of a map stay in the
        process's resident memory as it is read, 11.8 GB of the re-rank stage's 21.4 GB peak at 10M events)."""
        out = np.zeros(self.rest_rows)
        if not self.rest_rows:
            return out
        width = len(self.features)
        with open(self._spill.name, "rb") as spilled:
            for part in batched(self.rest_rows, SCORE_ROWS):
                rows = part.stop - part.start
                block = np.fromfile(spilled, dtype=np.float32, count=rows * width)
                out[part] = score(block.reshape(rows, width))  # a short file cannot take this shape: ValueError
        return out

    def scored_keys(self) -> pd.DataFrame:
        """(user, item) of the training rows, then of the spilled rows: the order of ``train_scores``
        followed by ``score_rest``'s scores (no ids: ``ranked_lists(..., maps=)`` maps the kept rows)."""
        keys = np.concatenate([self.train_keys, self.rest_keys])
        return pd.DataFrame({"user": keys[:, 0], "item": keys[:, 1]})

    def frame(self, part: str) -> pd.DataFrame:
        """(user, item, user_id, item_id) of the ``train`` or ``rest`` rows, in their order."""
        keys = self.train_keys if part == "train" else self.rest_keys
        return pd.DataFrame(
            {
                "user": keys[:, 0],
                "item": keys[:, 1],
                "user_id": self.maps.user_ids.to_numpy()[keys[:, 0]],
                "item_id": self.maps.item_ids.to_numpy()[keys[:, 1]],
            }
        )

    def close(self) -> None:
        """Remove the spill file and drop the training matrix (keys, labels and groups stay)."""
        self._spill.close()
        self.X = None


def collect_val_rows(
    blocks: Iterable[pd.DataFrame], truth: pd.DataFrame, train_users: np.ndarray, maps: IdMaps, *, each=None
) -> ValRows:
    """:class:`ValRows` of every block (``each(block)`` is called on each block first, e.g. candidate recall)."""
    rows = ValRows(truth, train_users, maps)
    for block in blocks:
        if each is not None:
            each(block)
        rows.add(block)
    return rows.finish()
