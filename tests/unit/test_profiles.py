"""User profiles: weighting, vectors, keywords/genres, artifacts, and the encode stage that writes them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.interactions import IdMaps, Interactions
from recforge.profiles import (
    ProfileSettings,
    UserProfiles,
    blend,
    build_profiles,
    event_weights,
    history_weights,
    load_profiles,
    profile_vector,
    profile_vectors,
    user_texts,
)
from recforge.stages import get_stage


def _events(rows, n_users=3, n_items=4):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": list(range(n_items))})
    maps = IdMaps(user_ids=pd.Index(range(n_users)), item_ids=pd.Index(range(n_items)))
    return Interactions.from_frame(frame, maps), maps, items


def test_recent_events_weigh_more():
    weights = history_weights(np.arange(5) * 86_400, None, ProfileSettings(half_life_events=2.0, rating_weight=0))
    assert np.all(np.diff(weights) > 0)
    assert weights[-1] == pytest.approx(1.0) and weights[-3] == pytest.approx(0.5)
    by_days = history_weights(
        np.array([0, 10 * 86_400]), None, ProfileSettings(None, half_life_days=10, rating_weight=0)
    )
    np.testing.assert_allclose(by_days, [0.5, 1.0])


def test_higher_ratings_weigh_more_and_weights_stay_positive():
    weights = history_weights(None, np.array([1.0, 5.0, 3.0]), ProfileSettings(None, None, rating_weight=0.5))
    assert weights[1] > weights[2] > weights[0] > 0
    flat = history_weights(None, np.array([1.0, 5.0]), ProfileSettings(None, None, rating_weight=0.0))
    np.testing.assert_allclose(flat, 1.0)


def test_event_weights_match_per_user_history_weights():
    rows = [(0, 0, 5, 10), (0, 1, 1, 20), (0, 2, 3, 30), (2, 3, 4, 5), (2, 0, 2, 8)]
    events, _, _ = _events(rows)
    settings = ProfileSettings(half_life_events=1.5, half_life_days=0.0001, rating_weight=0.3)
    weights = event_weights(events, settings)
    for user in (0, 2):
        mask = events.user_ids == user
        expected = history_weights(events.timestamps[mask], events.ratings[mask], settings)
        np.testing.assert_allclose(weights[mask], expected)


def test_profile_vectors_are_normalised_weighted_means_and_zero_without_history():
    rows = [(0, 0, 5, 10), (0, 1, 5, 20), (2, 3, 4, 5)]
    events, _, _ = _events(rows)
    item_vectors = np.eye(4, dtype=np.float32)
    settings = ProfileSettings(half_life_events=1.0, rating_weight=0)
    profiles = profile_vectors(events, item_vectors, settings)
    assert profiles.dtype == np.float32 and profiles.shape == (3, 4)
    expected = np.array([0.5, 1.0, 0, 0]) / np.linalg.norm([0.5, 1.0])
    np.testing.assert_allclose(profiles[0], expected, atol=1e-6)
    assert not profiles[1].any()
    np.testing.assert_allclose(profiles[2], [0, 0, 0, 1])
    # fold-in of the same history gives the same profile
    np.testing.assert_allclose(profile_vector(np.array([0, 1]), item_vectors, settings), profiles[0], atol=1e-6)
    assert not profile_vector(np.array([], int), item_vectors, settings).any()


def test_blend_mixes_in_the_users_own_text():
    profile = np.array([1.0, 0.0], dtype=np.float32)
    text = np.array([0.0, 1.0], dtype=np.float32)
    mixed = blend(profile, text, 0.5)
    np.testing.assert_allclose(mixed, [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_array_equal(blend(profile, text, 0.0), profile)
    np.testing.assert_array_equal(blend(np.zeros(2, np.float32), text, 0.3), text)


def test_keywords_and_genres_follow_the_history_and_round_trip(tmp_path):
    rows = [(0, 0, 5, 1), (0, 1, 5, 2), (1, 2, 5, 1), (1, 3, 5, 2), (1, 2, 5, 3)]
    events, maps, _ = _events(rows, n_users=2)
    items = pd.DataFrame(
        {
            "item_id": range(4),
            "title": ["Rocket Man", "Star Trip", "Cake Day", "Soup"],
            "text": ["rocket space the", "space stars", "cake sugar", "soup sugar"],
            "genres": ["Sci-Fi|Action", "Sci-Fi", "Cooking", "Cooking|Drama"],
        }
    )
    vectors = {"toy": np.eye(4, dtype=np.float32)}
    profiles = build_profiles(
        events, maps, items, vectors, ProfileSettings(keywords=3), fields=["title", "text", "genres"]
    )
    assert profiles.keywords[0][0] == "space" and "the" not in profiles.keywords[0]
    assert profiles.keywords[1][0] == "sugar"
    assert profiles.genres[0][0] == "Sci-Fi" and set(profiles.genres[0]) == {"Sci-Fi", "Action"}
    assert profiles.genres[1][0] == "Cooking"
    assert profiles.counts.tolist() == [2, 3]

    profiles.save(tmp_path / "full")
    restored = UserProfiles.load(tmp_path / "full")
    np.testing.assert_allclose(restored.vectors["toy"], profiles.vectors["toy"])
    assert restored.keywords == profiles.keywords and restored.user_ids == [0, 1]
    summary = restored.summary(1)
    assert summary["genres"][0] == "Cooking" and summary["events"] == 3
    np.testing.assert_allclose(restored.vector("toy", 0), profiles.vectors["toy"][0])
    assert {p.suffix for p in (tmp_path / "full").iterdir()} == {".npz", ".json"}


def test_user_texts_align_with_dense_users():
    maps = IdMaps(user_ids=pd.Index(["a", "b", "c"]), item_ids=pd.Index([1]))
    users = pd.DataFrame({"user_id": ["c", "a", "zz"], "text": ["likes horror", None, "unknown user"]})
    texts, has_text = user_texts(users, maps)
    assert texts == ["", "", "likes horror"] and has_text.tolist() == [False, False, True]
    assert user_texts(None, maps)[1].sum() == 0


def test_encode_stage_writes_embeddings_encoder_state_and_profiles_and_reuses_the_cache(tiny_params):
    params = tiny_params.model_copy(deep=True)
    params.encode.encoders = ["tfidf"]
    for stage in ("ingest", "split", "encode"):
        get_stage(stage)(params)
    from pathlib import Path

    embeddings = np.load(Path(params.paths.embeddings_dir) / "tfidf.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape[0] == 80
    for part in ("val", "full"):
        profiles = load_profiles(params, part)
        assert profiles.vectors["tfidf"].shape == (120, embeddings.shape[1])
        norms = np.linalg.norm(profiles.vectors["tfidf"], axis=1)
        np.testing.assert_allclose(norms[profiles.counts > 0], 1.0, atol=1e-5)
        assert all(profiles.genres[u] for u in range(120) if profiles.counts[u])
    assert load_profiles(params, "full").counts.sum() > load_profiles(params, "val").counts.sum()

    from recforge.encoding import fitted_encoder

    encoder = fitted_encoder(params, "tfidf", texts=[])  # restored from the saved state: nothing to refit on
    assert encoder.vocabulary is not None

    cache = sorted(Path(params.paths.cache_dir).rglob("items.npy"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    get_stage("encode")(params)
    assert cache[0].stat().st_mtime_ns == stamp  # nothing re-encoded
    np.testing.assert_array_equal(np.load(Path(params.paths.embeddings_dir) / "tfidf.npy"), embeddings)
