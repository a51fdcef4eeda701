"""The `content` recommender: the Recommender contract, its optional protocols, and behaviour.

Behavioural test: on synthetic data (items carry a `genres` topic and text
drawn from that topic's vocabulary) a user whose history is one topic gets
mostly that topic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge import registry
from recforge.data.synthetic import generate
from recforge.interactions import IdMaps, Interactions
from recforge.params import SyntheticParams
from recforge.protocols import FitContext, FoldIn, Recommender, SimilarItems


@pytest.fixture(scope="module")
def data():
    interactions, items = generate(SyntheticParams(num_users=150, num_items=120, num_interactions=3000, num_topics=4))
    # one extra user whose whole history is the topic of item 1
    topic = items["genres"].iloc[0]
    own = items.index[items["genres"] == topic][:8]
    extra = pd.DataFrame(
        {
            "user_id": 10_000,
            "item_id": items["item_id"].iloc[own].to_numpy(),
            "rating": 5.0,
            "timestamp": 1_700_000_000 + np.arange(len(own)),
        }
    )
    interactions = pd.concat([interactions, extra], ignore_index=True)
    # items nobody has seen (cold start): appended to the catalogue
    cold = pd.DataFrame(
        {
            "item_id": [9001, 9002],
            "title": ["Unseen One", "Unseen Two"],
            "text": [" ".join(items["text"].iloc[own[0]].split()[:8]), "nothing shared here"],
            "genres": [topic, "other"],
        }
    )
    items = pd.concat([items, cold], ignore_index=True)
    maps = IdMaps.build(interactions, items)
    train = Interactions.from_frame(interactions, maps)
    return train, items, maps, topic


def fit(data, **options):
    train, items, maps, _ = data
    model = registry.recommenders.create("content", **options)
    return model.fit(train, context=FitContext(items=items, maps=maps))


@pytest.fixture(scope="module")
def model(data):
    return fit(data)


def test_satisfies_the_protocols(model):
    assert isinstance(model, Recommender)
    assert isinstance(model, SimilarItems)
    assert isinstance(model, FoldIn)


def test_recommend_shapes_order_and_history_exclusion(model, data):
    train = data[0]
    users = np.arange(10)
    items, scores = model.recommend(users, k=15)
    assert items.shape == scores.shape == (10, 15)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    for row, user in enumerate(users):
        assert not set(items[row]) & set(train.sequences[user].tolist())
    kept, _ = model.recommend(users[:3], k=train.n_items, exclude_seen=False)
    assert set(train.sequences[0].tolist()) <= set(kept[0].tolist())


def test_candidates_restrict_the_ranking(model):
    candidates = np.array([[5, 7, 9, -1], [1, 2, -1, -1]])
    items, scores = model.recommend(np.array([0, 1]), k=4, exclude_seen=False, candidates=candidates)
    assert set(items[0][items[0] >= 0]) <= {5, 7, 9}
    assert items[1, 2] == -1 and np.isneginf(scores[1, 2])


def test_items_without_interactions_can_be_recommended(model, data):
    train, items, maps, topic = data
    cold = maps.item_index([9001])[0]
    assert train.item_counts[cold] == 0
    user = maps.user_index([10_000])[0]
    ranked, _ = model.recommend(np.array([user]), k=train.n_items)
    position = list(ranked[0]).index(cold)
    assert position < train.n_items // 3  # a cold item on the user's topic ranks high


def test_similar_items_exclude_the_item_and_share_its_topic(model, data):
    items_table = data[1]
    similar, scores = model.similar_items(0, k=5)
    assert 0 not in similar and len(similar) == 5
    assert np.all(np.diff(scores) <= 1e-6)
    assert (items_table["genres"].iloc[similar] == items_table["genres"].iloc[0]).mean() >= 0.8


def test_fold_in_and_cold_start_text(model, data):
    train, items_table, maps, topic = data
    history = np.nonzero(items_table["genres"].to_numpy() == topic)[0][:5]
    ranked, _ = model.recommend_history(history, k=10)
    assert not set(ranked[0]) & set(history)
    assert (items_table["genres"].iloc[ranked[0]] == topic).mean() >= 0.8
    text = " ".join(items_table["text"].iloc[history[0]].split()[:6])
    by_text, scores = model.recommend_text(text, k=10)
    assert (items_table["genres"].iloc[by_text[0]] == topic).mean() >= 0.8
    assert np.isfinite(scores).all()


def test_save_and_load_round_trip(model, data, tmp_path):
    train, items, maps, _ = data
    model.save(tmp_path)
    assert {p.suffix for p in tmp_path.rglob("*") if p.is_file()} <= {".json", ".npz", ".npy"}
    restored = type(model).load(tmp_path, context=FitContext(items=items, maps=maps))
    users = np.arange(20)
    np.testing.assert_array_equal(restored.recommend(users, k=10)[0], model.recommend(users, k=10)[0])
    np.testing.assert_array_equal(restored.recommend_text("space", k=5)[0], model.recommend_text("space", k=5)[0])


@pytest.mark.parametrize("encoder", ["tfidf", "word2vec", "transformer"])
def test_one_topic_history_gets_mostly_that_topic(data, encoder):
    train, items_table, maps, topic = data
    model = fit(data, encoder=encoder)
    user = maps.user_index([10_000])[0]
    ranked, _ = model.recommend(np.array([user]), k=10)
    share = (items_table["genres"].iloc[ranked[0]] == topic).mean()
    assert share >= 0.8, f"{encoder}: only {share:.0%} of the top 10 on the user's topic"


def test_popularity_weight_breaks_towards_popular_items(data):
    train = data[0]
    plain = fit(data, popularity_weight=0.0)
    popular = fit(data, popularity_weight=10.0)
    users = np.arange(30)
    counts = train.item_counts
    assert counts[popular.recommend(users, k=10)[0]].mean() > counts[plain.recommend(users, k=10)[0]].mean()


def test_pipeline_trains_saves_and_reloads_content_with_the_encode_stage_outputs(tiny_params):
    from recforge.stages import get_stage
    from recforge.stages.train import load_model

    params = tiny_params.model_copy(deep=True)
    params.encode.encoders = ["tfidf"]
    params.recommenders = {"content": {"encoder": "tfidf", "popularity_weight": 0.1}}
    for stage in ("ingest", "split", "encode", "train"):
        get_stage(stage)(params)
    model = load_model(params, "content", "full")
    embeddings = np.load(f"{params.paths.embeddings_dir}/tfidf.npy")
    np.testing.assert_array_equal(model.item_vectors, embeddings)  # the encode stage's vectors, not re-encoded
    items, scores = model.recommend(np.arange(5), k=10)
    assert items.shape == (5, 10) and (items >= 0).all()
    # cold start from text works on the reloaded model (fitted tfidf state restored from disk)
    assert model.encoder.encode(["space"]).shape == (1, embeddings.shape[1])
    ranked, _ = model.recommend_text("space rocket", k=5)
    assert (ranked >= 0).all()


def test_centering_keeps_the_topic_and_survives_save_and_load(data, tmp_path):
    train, items, maps, topic = data
    model = fit(data, center=True)
    assert abs(float(model.offset @ model.offset)) > 0
    user = maps.user_index([10_000])[0]
    ranked, _ = model.recommend(np.array([user]), k=10)
    assert (items["genres"].iloc[ranked[0]] == topic).mean() >= 0.8
    model.save(tmp_path)
    restored = type(model).load(tmp_path, context=FitContext(items=items, maps=maps))
    np.testing.assert_array_equal(restored.recommend_text("space", k=5)[0], model.recommend_text("space", k=5)[0])


def test_an_encoder_missing_from_the_encode_stage_is_encoded_once_through_its_cache(tiny_params):
    from pathlib import Path

    from recforge.stages import get_stage

    params = tiny_params.model_copy(deep=True)
    params.encode.encoders = []
    params.recommenders = {"content": {"encoder": "word2vec"}}
    for stage in ("ingest", "split", "encode", "train"):
        get_stage(stage)(params)
    cached = list(Path(params.paths.cache_dir).rglob("items.npy"))
    assert len(cached) == 1 and "word2vec" in str(cached[0])  # val fit encoded, the refit reused it
