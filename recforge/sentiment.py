"""Feedback understanding: sentiment of review text attached to interactions.

The amazon-reviews loader keeps each review's text in a ``review`` column of
the interactions table. :func:`score_texts` gives each text a compound
sentiment in [-1, 1] with the VADER lexicon model (vaderSentiment; no
download, fast on CPU). The re-ranker uses the mean sentiment of an item's and
of a user's history reviews as features (:func:`history_sentiment`), and
:func:`sentiment_weights` turns sentiments into interaction weights for
recommenders that accept ``Interactions.weights``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from recforge.interactions import Interactions

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


def frame_sentiment(frame: pd.DataFrame, interactions: Interactions | None = None) -> np.ndarray | None:
    """Sentiment per row of an interactions frame, in the dense event order of ``Interactions.from_frame``.

    None when the frame has no review text. With ``interactions`` omitted the
    rows keep the frame's order.
    """
    if REVIEW_COLUMN not in frame.columns or frame[REVIEW_COLUMN].isna().all():
        return None
    scores = score_texts(frame[REVIEW_COLUMN].tolist())
    if interactions is None:
        return scores
    return scores[_event_order(frame, interactions)]


def _event_order(frame: pd.DataFrame, interactions: Interactions) -> np.ndarray:
    """Row order of ``frame`` that matches Interactions' (user, time, item) sort."""
    users = pd.Index(np.sort(frame["user_id"].unique())).get_indexer(frame["user_id"])
    items = pd.Index(frame["item_id"].unique()).get_indexer(frame["item_id"])
    if interactions is not None and len(interactions) != len(frame):
        raise ValueError(f"{len(frame)} rows for {len(interactions)} events")
    return np.lexsort((items, frame["timestamp"].to_numpy(), users))


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


def sentiment_weights(sentiment: np.ndarray, strength: float = 0.5, floor: float = 0.1) -> np.ndarray:
    """Interaction weights ``max(floor, 1 + strength * sentiment)`` (missing sentiment: weight 1)."""
    sentiment = np.nan_to_num(np.asarray(sentiment, dtype=np.float64), nan=0.0)
    return np.maximum(floor, 1.0 + strength * sentiment)


def weighted(events: Interactions, sentiment: np.ndarray | None, strength: float = 0.5) -> Interactions:
    """``events`` with sentiment weights attached (unchanged when there is no sentiment)."""
    if sentiment is None:
        return events
    return replace(events, weights=sentiment_weights(sentiment, strength))
