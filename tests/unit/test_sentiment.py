"""recforge.sentiment: what the re-ranker's sentiment features read."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vaderSentiment")

from recforge.interactions import IdMaps, Interactions  # noqa: E402
from recforge.sentiment import history_sentiment, score_texts  # noqa: E402


def test_score_texts_signs_and_missing():
    scores = score_texts(["I love this, wonderful!", "Terrible, awful waste.", None, "  ", float("nan")])
    assert scores[0] > 0.5 and scores[1] < -0.5
    assert all(math.isnan(s) for s in scores[2:])


class FakeWorkspace:
    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames = frames
        items = pd.DataFrame({"item_id": [10, 20, 30]})
        self.maps = IdMaps.build(pd.concat(frames.values()), items)

    def frame(self, part: str) -> pd.DataFrame:
        return self.frames[part]

    def events(self, part: str) -> Interactions:
        return Interactions.from_frame(pd.concat([self.frames[p] for p in part.split("+")]), self.maps)


def test_history_sentiment_follows_the_dense_event_order():
    train = pd.DataFrame(
        {"user_id": [2, 1, 1], "item_id": [10, 30, 20], "timestamp": [5, 9, 1], "review": ["great", "awful", None]}
    )
    val = pd.DataFrame({"user_id": [1], "item_id": [10], "timestamp": [20], "review": ["good"]})
    workspace = FakeWorkspace({"train": train, "val": val})
    scores = history_sentiment(workspace, "train+val")
    events = workspace.events("train+val")
    # events: user 1 at t=1 (no review), t=9 ("awful"), t=20 ("good"); user 2 at t=5 ("great")
    assert events.item_ids.tolist() == [1, 2, 0, 0]
    assert math.isnan(scores[0]) and scores[1] < 0 and scores[2] > 0 and scores[3] > 0
    assert history_sentiment(FakeWorkspace({"train": train.drop(columns="review")}), "train") is None
    assert np.isfinite(scores[1:]).all()


def test_real_review_sentences_order_positive_above_negative():
    positive = [
        "This is one of the best films I have seen in years; the acting is superb.",
        "Great value, works exactly as described and my kids love it.",
    ]
    negative = [
        "The plot was boring and the ending made no sense at all.",
        "Broke after two days. Very disappointed, would not buy again.",
    ]
    scores = score_texts(positive + negative + ["It arrived on Tuesday in a brown box."])
    assert min(scores[:2]) > 0.3 and max(scores[2:4]) < -0.3, scores
    assert scores[2:4].max() < scores[4] < scores[:2].min(), "a neutral sentence sits in between"
