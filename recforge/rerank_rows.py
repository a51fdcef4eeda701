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
frame), every other row's float32 features and (user, item) pairs are spilled to
temporary files. Once the re-ranker is fitted, each block's spilled rows are read
back, scored and cut to their users' top lists (those users' validation lists:
the ensemble's score, as before). Peak memory is the sampled rows plus one
block, whatever the number of users.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.candidates import feature_columns, group_sizes, labels_for, truth_keys
from recforge.interactions import IdMaps
from recforge.rerank import ranked_lists
from recforge.sizing import is_auto

log = logging.getLogger(__name__)

# ``rerank.max_train_users: auto``: users with a positive candidate the re-ranker trains on at most. At this
# size LightGBM sees 1-4 million rows (100-400 candidates a user), a few hundred MiB of float32 features.
TRAIN_USERS_AUTO = 10_000


def positive_val_users(lists: Iterable[pd.DataFrame], truth: pd.DataFrame, maps: IdMaps, per_model: int) -> np.ndarray:
    """Dense ids (sorted) of the validation users whose held-out item is among the union of the candidates.

    ``lists``: every model's list rows, in pieces of any size (:func:`recforge.rerank.list_batches`): a piece
    at a time, as the union of all lists' pairs was 200M rows at 10M events."""
    keys = truth_keys(truth)
    hits = []
    for frame in lists:
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

    ``add(block)`` for each feature block (sorted by user, as ``iter_part`` yields them); then
    ``X``/``labels``/``groups`` are the training rows, and ``lists(train_scores, score, k)`` gives every
    validation user's ranked list, block by block: nothing the size of the part is held in memory.
    """

    def __init__(self, truth: pd.DataFrame, train_users: np.ndarray, maps: IdMaps, spill_dir: Path | None = None):
        self.keys = truth_keys(truth)
        self.train_users = np.asarray(train_users, dtype=np.int64)
        self.maps = maps
        self.features: list[str] | None = None
        self._X: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._train_keys: list[np.ndarray] = []
        # the spilled rows: float32 features, and their (user, item) as int64 pairs, in the same order
        self._spill = tempfile.NamedTemporaryFile(prefix="rerank-val-", suffix=".f32", dir=spill_dir)  # noqa: SIM115
        self._spill_keys = tempfile.NamedTemporaryFile(prefix="rerank-val-", suffix=".keys", dir=spill_dir)  # noqa: SIM115
        self._blocks: list[tuple[int, int]] = []  # (training rows, spilled rows) of each block, in order
        self.rest_rows = 0
        # set by finish(): the training rows (float32 features, labels, group sizes, (user, item) pairs)
        self.X = self.labels = self.groups = None
        self.train_keys = np.zeros((0, 2), np.int64)

    def add(self, block: pd.DataFrame) -> None:
        if self.features is None:
            self.features = feature_columns(block)
        X = block[self.features].to_numpy(np.float32)
        keys = np.stack([block["user"].to_numpy(np.int64), block["item"].to_numpy(np.int64)], axis=1)
        train = np.isin(keys[:, 0], self.train_users)
        if train.any():
            self._X.append(X[train])
            self._labels.append(labels_for(block[train], self.keys))
            self._train_keys.append(keys[train])
        rest = ~train
        if rest.any():
            self._spill.write(np.ascontiguousarray(X[rest]).tobytes())
            self._spill_keys.write(np.ascontiguousarray(keys[rest]).tobytes())
            self.rest_rows += int(rest.sum())
        self._blocks.append((int(train.sum()), int(rest.sum())))

    def finish(self) -> ValRows:
        """Join the training blocks (X float32, labels, group sizes: rows are sorted by user)."""
        self._spill.flush()
        self._spill_keys.flush()
        n_features = len(self.features or [])
        self.X = np.concatenate(self._X) if self._X else np.zeros((0, n_features), np.float32)
        self._X = []
        self.labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int32)
        self.train_keys = np.concatenate(self._train_keys) if self._train_keys else np.zeros((0, 2), np.int64)
        self._train_keys = []
        self.groups = group_sizes(pd.DataFrame({"user": self.train_keys[:, 0]}))
        return self

    def rest_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys int64 [n, 2], float32 features [n, width]) of each block's spilled rows, one block at a time.

        Each block is read into memory of its own and freed (not a memory map: the pages of a map stay in the
        process's resident memory as it is read, 11.8 GB of the re-rank stage's 21.4 GB peak at 10M events)."""
        width = len(self.features or [])
        with open(self._spill.name, "rb") as spilled, open(self._spill_keys.name, "rb") as keyed:
            for _, rows in self._blocks:
                if not rows:
                    continue
                X = np.fromfile(spilled, dtype=np.float32, count=rows * width)
                keys = np.fromfile(keyed, dtype=np.int64, count=rows * 2)
                yield keys.reshape(rows, 2), X.reshape(rows, width)  # a short file cannot take this shape

    def lists(self, train_scores: np.ndarray, score, k: int) -> pd.DataFrame:
        """Every validation user's top-``k`` list (:func:`recforge.rerank.ranked_lists`), block by block: the
        training rows scored by ``train_scores`` (in their order), the spilled rows by ``score(X)``.

        A block's users are all its own (iter_part's blocks hold whole users), so cutting each block alone
        gives the lists of cutting the whole part, in user order, with one block's rows in memory at a time."""
        train_scores = np.asarray(train_scores)
        if len(train_scores) != len(self.train_keys):
            raise ValueError(f"{len(train_scores)} training scores for {len(self.train_keys)} training rows")
        spilled = self.rest_blocks()
        lists, start = [], 0
        for n_train, n_rest in self._blocks:
            keys = [self.train_keys[start : start + n_train]]
            scores = [train_scores[start : start + n_train]]
            start += n_train
            if n_rest:
                rest_keys, X = next(spilled)
                keys.append(rest_keys)
                scores.append(np.asarray(score(X)))
            joined = np.concatenate(keys)
            frame = pd.DataFrame({"user": joined[:, 0], "item": joined[:, 1]})
            lists.append(ranked_lists(frame, np.concatenate(scores), k, maps=self.maps))
        if not lists:
            empty = np.zeros(0, np.int64)
            return ranked_lists(pd.DataFrame({"user": empty, "item": empty}), np.zeros(0), k, maps=self.maps)
        return pd.concat(lists, ignore_index=True)

    def close(self) -> None:
        """Remove the spill files and drop the training matrix (keys, labels and groups stay)."""
        self._spill.close()
        self._spill_keys.close()
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
