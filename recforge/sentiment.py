"""Feedback understanding: sentiment of review text attached to interactions.

The amazon-reviews loader keeps each review's text in a ``review`` column of
the interactions table. :func:`score_texts` gives each text a compound
sentiment in [-1, 1] with the VADER lexicon model (vaderSentiment; no
download, fast on CPU). The re-ranker uses the mean sentiment of an item's and
of a user's history reviews as features (:func:`history_sentiment`).

Training weights events by the same sentiment (:func:`event_weights`,
:func:`training_events`; params ``train.sentiment_*``): an event with a
positive review counts more, one with a negative review less, one without
text (or neutral text) as before. The train stage hands the weighted events to
every model; those that take confidences read ``Interactions.weighted_csr``
(ALS, item/user kNN, popularity; BPR drops negatively reviewed events from its
liked items), the sequential and content models ignore the weights.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from recforge.interactions import Interactions

log = logging.getLogger(__name__)

REVIEW_COLUMN = "review"

# per workspace, the VADER scores of each split part's review column (frame row order):
# the train stage asks for train and train+val once per model
_PART_SCORES: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()


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
    scores = np.concatenate([_part_scores(workspace, p, f) for p, f in zip(parts, frames, strict=True)])[order]
    if len(scores) != len(events) or not np.array_equal(items[order], events.item_ids):
        log.warning("review sentiment not aligned with %s events; sentiment features skipped", part)
        return None
    return scores


def _part_scores(workspace: Any, part: str, frame: pd.DataFrame) -> np.ndarray:
    """VADER scores of one split part's reviews in frame order, computed once per workspace."""
    try:
        cache = _PART_SCORES.setdefault(workspace, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    if part not in cache or len(cache[part]) != len(frame):
        cache[part] = score_texts(frame[REVIEW_COLUMN].tolist())
    return cache[part]


def event_weights(scores: np.ndarray | None, *, strength: float = 1.0, floor: float = 0.1) -> np.ndarray | None:
    """Training weight of each event from its review sentiment ``scores`` (compound, NaN = no text).

    ``w = clip(1 + strength * compound, floor, 1 + strength)``: a neutral or missing review
    weighs 1, a glowing one up to ``1 + strength``, a scathing one down to ``floor`` (> 0, so
    the event stays in the training matrix). None (no review text) stays None.
    """
    if scores is None:
        return None
    if strength < 0 or floor <= 0:
        raise ValueError(f"sentiment weights need strength >= 0 and floor > 0 (got {strength}, {floor})")
    compound = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    low = min(floor, 1.0)
    return np.clip(1.0 + strength * compound, low, max(1.0 + strength, low)).astype(np.float32)


def training_events(workspace: Any, part: str) -> Interactions:
    """``workspace.events(part)`` weighted by review sentiment (params ``train.sentiment_*``).

    Unchanged (no weights) when ``train.sentiment_weighting`` is off or the interactions carry
    no ``review`` column, so models train exactly as without this step.
    """
    events = workspace.events(part)
    settings = workspace.params.train
    if not settings.sentiment_weighting:
        return events
    weights = event_weights(
        history_sentiment(workspace, part), strength=settings.sentiment_strength, floor=settings.sentiment_floor
    )
    if weights is None:
        return events
    log.info(
        "%s: %d events weighted by review sentiment (mean %.3f, %.1f%% below 1)",
        part,
        len(weights),
        float(weights.mean()),
        100.0 * float((weights < 1.0).mean()),
    )
    return events.with_weights(weights)


def weight_summary(events: Interactions) -> dict[str, Any] | None:
    """What the train stage records in a model's meta about its event weights (None: unweighted)."""
    if events.weights is None:
        return None
    w = events.weights
    return {
        "source": "review sentiment",
        "mean": round(float(w.mean()), 4),
        "min": round(float(w.min()), 4),
        "max": round(float(w.max()), 4),
        "share_below_1": round(float((w < 1.0).mean()), 4),
    }
