"""Re-ranker features on a tiny hand-made case where every value is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.features import (
    PartData,
    build_features,
    candidate_frame,
    feature_columns,
    group_sizes,
    labels_for,
    transition_matrix,
)
from recforge.interactions import IdMaps, Interactions

DAY = 86_400


@pytest.fixture
def tiny():
    # users 10, 20, 30; items 100..104 (dense 0..4)
    items = pd.DataFrame(
        {
            "item_id": [100, 101, 102, 103, 104],
            "title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"],
            "genres": ["Action|Drama", "Drama", "Comedy", "Action", "Comedy|Drama"],
            "text": ["robots space", "family", "jokes", "robots", "jokes family"],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": [10, 10, 10, 20, 20, 30],
            "item_id": [100, 101, 102, 100, 101, 103],
            "timestamp": [1 * DAY, 2 * DAY, 3 * DAY, 10 * DAY, 11 * DAY, 5 * DAY],
            "rating": [5.0, 4.0, 3.0, 2.0, 4.0, 5.0],
        }
    )
    maps = IdMaps.build(events, items)
    history = Interactions.from_frame(events, maps)
    lists = {
        "a": pd.DataFrame(
            {"user_id": [10, 10, 20], "item_id": [103, 104, 102], "rank": [1, 2, 1], "score": [0.9, 0.5, 2.0]}
        ),
        "b-x": pd.DataFrame(
            {"user_id": [10, 20, 20], "item_id": [104, 102, 103], "rank": [1, 1, 2], "score": [3.0, 1.0, 0.0]}
        ),
    }
    embeddings = np.eye(5, dtype=np.float32)
    data = PartData(part="val", history=history, maps=maps, items=items, lists=lists, embeddings={"onehot": embeddings})
    return data


def row(frame: pd.DataFrame, user_id, item_id) -> pd.Series:
    return frame[(frame["user_id"] == user_id) & (frame["item_id"] == item_id)].iloc[0]


def test_candidate_union_scores_ranks_and_missing(tiny):
    frame = candidate_frame(tiny.lists, tiny.maps, per_model=5)
    assert list(zip(frame["user_id"], frame["item_id"])) == [(10, 103), (10, 104), (20, 102), (20, 103)]
    # the model name is made feature-safe; a model that did not propose an item gives NaN
    r = row(frame, 10, 103)
    assert r["a_rank"] == 1 and r["a_score"] == pytest.approx(0.9) and np.isnan(r["b_x_rank"])
    assert row(frame, 10, 104)["a_gap"] == pytest.approx(-0.4)
    assert row(frame, 10, 104)["b_x_rank"] == 1
    # per_model keeps only the top of each list
    assert len(candidate_frame(tiny.lists, tiny.maps, per_model=1)) == 3
    assert group_sizes(frame).tolist() == [2, 2]


def test_known_feature_values(tiny):
    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    r = row(frame, 10, 104)
    assert r["n_models"] == 2 and r["rrf"] == pytest.approx(1 / 12 + 1 / 11)
    assert row(frame, 10, 103)["n_models"] == 1
    assert r["user_history"] == 3
    assert r["user_span_days"] == pytest.approx(2.0)
    # item 103 (dense 3) has one history event (user 30, day 5): popularity log1p(1)
    assert row(frame, 10, 103)["item_pop"] == pytest.approx(np.log1p(1))
    assert row(frame, 10, 104)["item_pop"] == 0
    # user 10's last event is day 3; item 103 first appears on day 5 -> age -2 days; unseen items: NaN
    assert row(frame, 10, 103)["item_age_days"] == pytest.approx(-2.0)
    assert np.isnan(row(frame, 10, 104)["item_age_days"])
    # user 20's last event is day 11; item 102 was seen on day 3 -> 8 days old, within a 30-day window
    assert row(frame, 20, 102)["item_age_days"] == pytest.approx(8.0)
    assert row(frame, 20, 102)["item_pop_user_window"] == pytest.approx(np.log1p(1))
    assert row(frame, 20, 102)["item_rating"] == pytest.approx(3.0)
    # transitions: 100->101 (users 10, 20), 101->102 (user 10); user 20's last item is 101
    assert row(frame, 20, 102)["trans_last1"] == pytest.approx(1.0)
    assert row(frame, 20, 103)["trans_last1"] == 0.0
    # one-hot embeddings: similarity to the last item is 0, to the mean of the last two (100, 101) also 0
    assert row(frame, 20, 102)["sim_onehot_last1"] == pytest.approx(0.0)
    # genres: user 20 watched Action|Drama and Drama; item 103 (Action) -> share 1/2
    assert row(frame, 20, 103)["genre_overlap"] == pytest.approx(0.5)
    # item 104 (Comedy|Drama) for user 10 (Action|Drama, Drama, Comedy): (2/3 + 1/3) / 2
    assert row(frame, 10, 104)["genre_overlap"] == pytest.approx(0.5)
    assert "user" not in feature_columns(frame) and "n_models" in feature_columns(frame)


def test_similarity_features_with_known_embeddings(tiny):
    vectors = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.6, 0.8]], dtype=np.float32)
    tiny.embeddings = {"e": vectors}
    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    # user 10 last item = 102 ([1,0]); candidate 104 = [0.6, 0.8]
    assert row(frame, 10, 104)["sim_e_last1"] == pytest.approx(0.6)
    # max over the last 5 (100, 101, 102): max(0.6, 0.8, 0.6)
    assert row(frame, 10, 104)["sim_e_max5"] == pytest.approx(0.8)
    # mean of last five embeddings = [2/3, 1/3] -> dot [0.6, 0.8] = 0.4 + 0.2667
    assert row(frame, 10, 104)["sim_e_last5"] == pytest.approx(0.4 + 0.8 / 3, abs=1e-6)


def test_transition_matrix_counts_consecutive_pairs(tiny):
    matrix = transition_matrix(tiny.history).toarray()
    assert matrix[0, 1] == 2 and matrix[1, 2] == 1 and matrix.sum() == 3


def test_transition_features_same_from_the_dense_and_the_sparse_table(tiny, monkeypatch):
    import recforge.features as features

    dense = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    monkeypatch.setattr(features, "DENSE_TRANSITIONS_MAX", 0)  # as for a catalogue too large for a dense table
    sparse = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    # user 20's last item is 101, and 101 -> 102 happened once
    assert row(dense, 20, 102)["trans_last1"] == 1.0
    pd.testing.assert_frame_equal(dense, sparse)


def test_labels_mark_only_truth_pairs(tiny):
    frame = candidate_frame(tiny.lists, tiny.maps, per_model=5)
    truth = pd.DataFrame({"user_id": [10, 20, 30], "item_id": [104, 101, 100]})
    assert labels_for(frame, truth).tolist() == [0, 1, 0, 0]


def test_llm_scorer_prompts_top_candidates_and_caches(tiny, tmp_path):
    from recforge.llm_scorer import LLMScorer
    from recforge.params import load_params
    from tests.conftest import tmp_overrides

    params = load_params(None, tmp_overrides(tmp_path) + ["rerank.llm_candidates=1", "rerank.llm_history=2"])
    calls: list[list[str]] = []

    class CountingScorer(LLMScorer):
        def score(self, texts):  # the language model is replaced by prompt length; caching is what is tested
            calls.append(list(texts))
            return np.array([float(len(t)) for t in texts])

    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    scorer = CountingScorer(params)
    values = scorer(frame, tiny)
    # one candidate per user (the best by rrf), the rest NaN; the prompt names the last two history titles
    assert np.isfinite(values).sum() == 2
    assert any('"Epsilon"' in t and "Gamma; Beta" in t for t in calls[0])
    again = CountingScorer(params)(frame, tiny)
    np.testing.assert_array_equal(again, values)
    assert len(calls) == 1  # the second scorer read every score from the on-disk cache
