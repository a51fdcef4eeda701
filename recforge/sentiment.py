"""Feedback understanding: sentiment of review text attached to interactions.

The amazon-reviews loader keeps each review's text in a ``review`` column of
the interactions table. :func:`score_texts` gives each text a compound
sentiment in [-1, 1] with the VADER lexicon model (vaderSentiment; no
download, fast on CPU). The re-ranker uses the mean sentiment of an item's and
of a user's history reviews as features (:func:`history_sentiment`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REVIEW_COLUMN = "review"


def score_texts(texts: Sequence[object]) -> np.ndarray:
    """VADER compound sentiment per text in [-1, 1]; NaN for a missing or empty text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    out = np.full(len(texts), np.nan)
    for i, text in enumerate(texts):
        if text is None or (isinstance(text, float) and text != text):
            continue
        text = str(text).strip()
        if text:
            out[i] = analyzer.polarity_scores(text)["compound"]
    return out


def history_sentiment(workspace: Any, part: str) -> np.ndarray | None:
    """Sentiment of each event of ``workspace.events(part)`` ('train' or 'train+val'), aligned with it."""
    parts = part.split("+")
    frames = [workspace.frame(p) for p in parts]
    if not all(REVIEW_COLUMN in f.columns for f in frames):
        return None
    frame = pd.concat(frames, ignore_index=True)
    events = workspace.events(part)
    maps = workspace.maps
    users, items = maps.user_index(frame["user_id"]), maps.item_index(frame["item_id"])
    order = np.lexsort((items, frame["timestamp"].to_numpy(), users))
    scores = score_texts(frame[REVIEW_COLUMN].to_numpy()[order].tolist())
    if len(scores) != len(events) or not np.array_equal(items[order], events.item_ids):
        log.warning("review sentiment not aligned with %s events; sentiment features skipped", part)
        return None
    return scores
