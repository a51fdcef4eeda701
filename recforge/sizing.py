"""Sizes chosen from the data: the rules behind ``auto`` in configs/quality.yaml.

A quality profile that claims to work on any dataset cannot fix a batch size,
a history length or a fold count: what suits 610 MovieLens users with
hundreds of ratings each is wrong for 100,000 shoppers with five reviews each.
Each rule here reads only the training data (never validation or test
targets), is deterministic, and is documented with the reason for it:

- :func:`sequence_sizes` (sequential models, ``max_len``/``batch_size``/``epochs: auto``):
  ``max_len`` = the median history length rounded up to a multiple of 10, within
  [20, 200] (longer windows cost attention time and rarely help; shorter ones cut
  the typical history). ``batch_size`` = the largest power of two that still
  gives at least 50 optimiser steps per epoch, within [32, 512] (a few hundred
  users need small batches to learn at all; millions of events need large ones
  to finish). ``epochs`` = enough epochs for about 3,000 optimiser steps, within
  [5, 50], and at most enough for about 10 million training targets in all
  (never below 5): a large dataset teaches more per epoch, so 1M events get 10
  epochs rather than 31 (cost grows with the data, not with its square);
  validation early stopping (``patience``) usually stops sooner.
- :func:`rerank_folds` / :func:`rerank_repeats` (``rerank.folds``/``rerank.repeats: auto``):
  LambdaRank learns from the validation users whose held-out item is among the
  candidates. With fewer than 20,000 of them, 5 user-disjoint folds (each model
  sees 80 % of them); above, 3 (training time grows with rows). The fold split
  itself is a source of seed-to-seed spread when there are few users, so it is
  repeated (3 times below 2,000 such users, twice below 10,000, once above) and
  the models averaged.
- :func:`rerank_leaves` (``rerank.num_leaves: auto``): the trees' size follows the
  same count: 7 leaves below 2,000 such users, 15 below 20,000, LightGBM's 31
  above. With a few hundred positives, 31-leaf trees fit the training folds'
  noise: out-of-fold NDCG@10 on ml-latest-small (345 positives) was 0.107 with 31
  leaves, 0.114 with 15, 0.122 with 7 (docs/rerank.md).

Each rule logs the value it chose and the statistic it read, and models save
the resolved numbers (never ``auto``) with their options.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

AUTO = "auto"

MAX_LEN_RANGE = (20, 200)
BATCH_RANGE = (32, 512)
MIN_STEPS_PER_EPOCH = 50
TARGET_STEPS = 3_000
TARGET_EVENTS = 10_000_000  # training targets (next items) read over all epochs, at most (above 5 epochs)
EPOCH_RANGE = (5, 50)


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def _clip(value: float, bounds: tuple[int, int]) -> int:
    return int(min(max(value, bounds[0]), bounds[1]))


def sequence_sizes(lengths: Sequence[int] | np.ndarray, *, max_len: Any, batch_size: Any, epochs: Any) -> dict:
    """Resolve the ``auto`` ones of (max_len, batch_size, epochs) from per-user history lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths >= 2]  # a history of one event has no next item to learn
    median = float(np.median(lengths)) if len(lengths) else 0.0
    if is_auto(max_len):
        max_len = _clip(math.ceil(median / 10) * 10, MAX_LEN_RANGE)
    max_len = int(max_len)
    # the plugin's windows: max_len + 1 items, stride max_len (every event a target once)
    windows = int(np.sum(np.ceil((lengths - 1) / max_len))) if len(lengths) else 0
    if is_auto(batch_size):
        cap = max(windows // MIN_STEPS_PER_EPOCH, 1)
        batch_size = _clip(2 ** int(math.floor(math.log2(cap))), BATCH_RANGE)
    batch_size = int(batch_size)
    if is_auto(epochs):
        steps = max(math.ceil(windows / batch_size), 1)
        targets = int(np.sum(lengths - 1)) if len(lengths) else 0
        by_targets = max(EPOCH_RANGE[0], math.ceil(TARGET_EVENTS / max(targets, 1)))
        epochs = min(_clip(math.ceil(TARGET_STEPS / steps), EPOCH_RANGE), by_targets)
    epochs = int(epochs)
    log.info(
        "sizing: %d histories (median %.0f events), %d windows -> max_len %d, batch_size %d, epochs %d",
        len(lengths),
        median,
        windows,
        max_len,
        batch_size,
        epochs,
    )
    return {"max_len": max_len, "batch_size": batch_size, "epochs": epochs}


def _by_positive_users(value: Any, positive_users: int, tiers: Sequence[tuple[int, int]], last: int, what: str) -> int:
    """``value`` when it is a number; for ``auto`` the first tier ``(bound, choice)`` with
    ``positive_users < bound``, else ``last`` (logged with the statistic it read)."""
    if not is_auto(value):
        return int(value)
    chosen = next((choice for bound, choice in tiers if positive_users < bound), last)
    log.info("sizing: %d validation users with a positive candidate -> %d %s", positive_users, chosen, what)
    return chosen


def rerank_folds(value: Any, positive_users: int) -> int:
    """``rerank.folds``: 5 below 20,000 validation users with a positive candidate, 3 above."""
    return _by_positive_users(value, positive_users, [(20_000, 5)], 3, "folds")


def rerank_leaves(value: Any, positive_users: int) -> int:
    """``rerank.num_leaves``: 7 below 2,000 validation users with a positive candidate, 15 below 20,000, else 31."""
    return _by_positive_users(value, positive_users, [(2_000, 7), (20_000, 15)], 31, "leaves per tree")


def rerank_repeats(value: Any, positive_users: int) -> int:
    """``rerank.repeats``: repeated fold splits, 3 below 2,000 such users, 2 below 10,000, else 1."""
    return _by_positive_users(value, positive_users, [(2_000, 3), (10_000, 2)], 1, "repeats")
