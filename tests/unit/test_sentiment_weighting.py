"""Review sentiment as training weights: the synthetic reviews, the weights, the models that use them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vaderSentiment")

from recforge.data import synthetic  # noqa: E402
from recforge.interactions import Interactions  # noqa: E402
from recforge.params import SyntheticParams, load_params, paths_under  # noqa: E402
from recforge.protocols import FitContext  # noqa: E402
from recforge.sentiment import event_weights, score_texts, training_events  # noqa: E402

SMALL = {"num_users": 200, "num_items": 150, "num_interactions": 5000, "seed": 3}


# -- the synthetic reviews --


def test_reviews_off_adds_nothing_and_leaves_the_main_random_stream_alone():
    plain, items = synthetic.generate(SyntheticParams(**SMALL))
    assert "review" not in plain.columns
    # reviews on without bad experiences: the same events, plus the review column
    with_reviews, items_too = synthetic.generate(SyntheticParams(**SMALL, reviews=True, bad_experiences=0.0))
    pd.testing.assert_frame_equal(with_reviews.drop(columns="review"), plain)
    pd.testing.assert_frame_equal(items_too, items)
    again, _ = synthetic.generate(SyntheticParams(**SMALL, reviews=True))
    pd.testing.assert_frame_equal(again, synthetic.generate(SyntheticParams(**SMALL, reviews=True))[0])


def test_review_polarity_follows_good_and_bad_events():
    rng = np.random.default_rng(0)
    good = rng.random(4000) < 0.7
    scores = score_texts(synthetic._reviews(good, rng))
    positive, negative = scores > 0.05, scores < -0.05
    # ~75% carry their event's polarity (15% neutral, 10% flipped)
    assert 0.68 < positive[good].mean() < 0.82 and 0.68 < negative[~good].mean() < 0.82
    assert negative[good].mean() < 0.15 and positive[~good].mean() < 0.15
    assert 0.1 < ((scores == 0) | np.isnan(scores)).mean() < 0.2


def test_negative_reviews_mark_picks_outside_the_users_taste_and_ratings_do_not():
    interactions, items = synthetic.generate(SyntheticParams(**SMALL, reviews=True))
    events = interactions.merge(items[["item_id", "genres"]], on="item_id")
    # how much of the user's history shares the event's topic: low for a bad experience
    share = events.groupby(["user_id", "genres"])["item_id"].transform("size") / events.groupby("user_id")[
        "item_id"
    ].transform("size")
    scores = score_texts(events["review"].tolist())
    negative, positive = scores < -0.05, scores > 0.05
    assert 0.15 < negative.mean() < 0.4
    assert share[negative].mean() < share[positive].mean() - 0.04
    # a bad experience's rating is drawn as for the pick it replaced: the rating does not give it away
    assert abs(events["rating"][negative].mean() - events["rating"][positive].mean()) < 0.3


# -- the weights --


def test_event_weights_follow_sentiment_and_missing_text_weighs_one():
    assert event_weights(None) is None
    w = event_weights(np.array([np.nan, 0.0, 0.5, 1.0, -0.5, -1.0]), strength=1.0, floor=0.1)
    np.testing.assert_allclose(w, [1.0, 1.0, 1.5, 2.0, 0.5, 0.1], rtol=1e-6)
    np.testing.assert_allclose(event_weights(np.array([0.8, -0.8]), strength=0.5, floor=0.1), [1.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(event_weights(np.array([-0.5]), strength=1.0, floor=0.7), [0.7], rtol=1e-6)
    assert np.all(event_weights(np.array([0.9, -0.9]), strength=0.0) == 1.0)


def _events(weights=None) -> Interactions:
    # users 0, 1, 2; user 0 saw item 1 twice
    users = np.array([0, 0, 0, 1, 1, 2, 2], dtype=np.int32)
    items = np.array([0, 1, 1, 0, 2, 2, 3], dtype=np.int32)
    events = Interactions(users, items, np.arange(7, dtype=np.int64), None, 3, 4)
    return events if weights is None else events.with_weights(np.asarray(weights))


def test_weighted_csr_means_duplicates_and_is_the_binary_matrix_without_weights():
    plain = _events()
    assert plain.weighted_csr is plain.csr
    weighted = _events([2.0, 0.5, 1.5, 1.0, 0.2, 1.0, 1.8])
    dense = weighted.weighted_csr.toarray()
    assert dense[0, 1] == pytest.approx(1.0) and dense[0, 0] == pytest.approx(2.0) and dense[1, 2] == pytest.approx(0.2)
    np.testing.assert_array_equal(weighted.csr.toarray(), plain.csr.toarray())  # csr stays binary
    both = weighted.concat(_events())
    assert both.weights is not None and len(both.weights) == 14
    # each event pairs with its copy (same user, time, item; the stable sort keeps the weighted one first)
    np.testing.assert_allclose(both.weights[0::2], [2.0, 0.5, 1.5, 1.0, 0.2, 1.0, 1.8], rtol=1e-6)
    np.testing.assert_array_equal(both.weights[1::2], np.ones(7))
    with pytest.raises(ValueError):
        _events([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        _events([1.0, 1.0])


# -- the models --

WEIGHTS = [2.0, 0.5, 0.5, 1.0, 0.2, 1.0, 1.8]


def _context() -> FitContext:
    return FitContext(items=pd.DataFrame({"item_id": [1, 2, 3, 4]}))


def test_popularity_and_knn_train_on_the_weighted_matrix():
    from recforge_plugins.recommenders.itemknn import ItemKNN
    from recforge_plugins.recommenders.popularity import Popularity
    from recforge_plugins.recommenders.userknn import UserKNN

    weighted, plain = _events(WEIGHTS), _events()
    pop = Popularity().fit(weighted, context=_context())
    np.testing.assert_allclose(pop.item_scores, [3.0, 1.0, 1.2, 1.8], rtol=1e-6)
    np.testing.assert_allclose(Popularity().fit(plain, context=_context()).item_scores, [2, 2, 2, 1])
    for cls in (ItemKNN, UserKNN):
        model = cls(neighbors=None).fit(weighted, context=_context())
        np.testing.assert_allclose(model.seen.toarray(), weighted.weighted_csr.toarray())
        unweighted = cls(neighbors=None).fit(plain, context=_context())
        assert set(np.unique(unweighted.seen.data)) == {1.0}
        a, b = model.recommend(np.array([0, 1]), k=4), unweighted.recommend(np.array([0, 1]), k=4)
        assert not np.allclose(a[1], b[1])
    item_sims = ItemKNN(neighbors=None).fit(weighted, context=_context()).similarity.toarray()
    plain_sims = ItemKNN(neighbors=None).fit(plain, context=_context()).similarity.toarray()
    assert not np.allclose(item_sims, plain_sims)


class _FakeImplicit:
    """Stands in for implicit's ALS / BPR: records the matrix it is fitted on."""

    fitted: list = []

    def __init__(self, factors=4, **_):
        self.factors = factors

    def fit(self, matrix, show_progress=False):
        _FakeImplicit.fitted.append(matrix.copy())
        self.user_factors = np.ones((matrix.shape[0], self.factors), np.float32)
        self.item_factors = np.ones((matrix.shape[1], self.factors), np.float32)


def test_als_gets_the_weights_as_confidences_and_bpr_drops_negative_events(monkeypatch):
    import implicit.cpu.als
    import implicit.cpu.bpr

    from recforge_plugins.recommenders.mf import MatrixFactorization

    monkeypatch.setattr(implicit.cpu.als, "AlternatingLeastSquares", _FakeImplicit)
    monkeypatch.setattr(implicit.cpu.bpr, "BayesianPersonalizedRanking", _FakeImplicit)
    _FakeImplicit.fitted = []
    weighted = _events(WEIGHTS)
    als = MatrixFactorization(algorithm="als", factors=4).fit(weighted, context=_context())
    np.testing.assert_allclose(_FakeImplicit.fitted[-1].toarray(), weighted.weighted_csr.toarray())
    np.testing.assert_array_equal(als.seen.toarray(), weighted.csr.toarray())  # every event stays excluded
    MatrixFactorization(algorithm="bpr", factors=4).fit(weighted, context=_context())
    liked = _FakeImplicit.fitted[-1].toarray()
    # (0, 1) weighs 0.5 and (1, 2) 0.2: not liked; the rest are
    assert liked[0, 1] == 0 and liked[1, 2] == 0 and liked[0, 0] > 0 and liked[2, 3] > 0 and liked[1, 0] > 0
    MatrixFactorization(algorithm="als", factors=4).fit(_events(), context=_context())
    np.testing.assert_array_equal(_FakeImplicit.fitted[-1].toarray(), _events().csr.toarray())


def test_real_als_factors_change_with_the_weights():
    from recforge_plugins.recommenders.mf import MatrixFactorization

    options = {"algorithm": "als", "factors": 4, "iterations": 3, "threads": 1, "seed": 0}
    a = MatrixFactorization(**options).fit(_events(WEIGHTS), context=_context())
    b = MatrixFactorization(**options).fit(_events(), context=_context())
    assert not np.allclose(a.user_factors, b.user_factors)


# -- the train stage --


@pytest.fixture(scope="module")
def review_workspace(tmp_path_factory) -> Path:
    """ingest .. split of a small synthetic dataset with reviews."""
    from recforge.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("reviews")
    overrides = paths_under(root) + [
        "data.synthetic.reviews=true",
        "data.synthetic.num_users=80",
        "data.synthetic.num_items=60",
        "data.synthetic.num_interactions=1500",
        "recommenders={popularity: {}, itemknn: {neighbors: 20}}",
        "rerank.enabled=false",
    ]
    run_pipeline(load_params(None, overrides), ["ingest", "validate", "split"])
    return root


def _params(root: Path, *extra: str):
    return load_params(
        None,
        paths_under(root) + ["recommenders={popularity: {}, itemknn: {neighbors: 20}}", "rerank.enabled=false", *extra],
    )


def test_training_events_weighted_by_default_and_plain_when_off_or_without_reviews(review_workspace, tmp_path):
    from recforge.workspace import Workspace

    on = Workspace(_params(review_workspace))
    train = training_events(on, "train")
    assert train.weights is not None and (train.weights < 1).any() and (train.weights > 1).any()
    np.testing.assert_array_equal(train.item_ids, on.events("train").item_ids)
    full = training_events(on, "train+val")
    assert len(full.weights) == len(on.events("train+val"))

    off = Workspace(_params(review_workspace, "train.sentiment_weighting=false"))
    assert training_events(off, "train").weights is None

    # the same split without the review column: no weights, whatever the key says
    for part in ("train", "val", "test"):
        frame = pd.read_parquet(review_workspace / "data/split" / f"{part}.parquet")
        (tmp_path / "data/split").mkdir(parents=True, exist_ok=True)
        frame.drop(columns="review").to_parquet(tmp_path / "data/split" / f"{part}.parquet")
    no_reviews = Workspace(_params(tmp_path, f"paths.canonical_dir={review_workspace / 'data/canonical'}"))
    assert training_events(no_reviews, "train").weights is None


def test_train_stage_uses_the_weights_and_off_equals_no_reviews(review_workspace, tmp_path):
    from recforge.stages.train import train_model
    from recforge.workspace import Workspace

    def lists(root: Path, *extra: str, models_dir: Path) -> dict[str, pd.DataFrame]:
        params = _params(
            root,
            *extra,
            f"paths.models_dir={models_dir / 'models'}",
            f"paths.lists_dir={models_dir / 'lists'}",
        )
        workspace = Workspace(params)
        out = {}
        for name in ("popularity", "itemknn"):
            train_model(workspace, name)
            for part in ("val", "test"):  # the val model (fitted on train) and the full one (train + val)
                out[f"{name}/{part}"] = pd.read_parquet(models_dir / "lists" / name / f"{part}.parquet")
        return out

    weighted = lists(review_workspace, models_dir=tmp_path / "on")
    off = lists(review_workspace, "train.sentiment_weighting=false", models_dir=tmp_path / "off")
    meta = json.loads((tmp_path / "on" / "models" / "itemknn" / "full" / "meta.json").read_text())
    assert meta["event_weights"]["source"] == "review sentiment" and meta["event_weights"]["min"] < 1
    assert "event_weights" not in json.loads(
        (tmp_path / "off" / "models" / "itemknn" / "full" / "meta.json").read_text()
    )
    for name in weighted:
        assert not weighted[name]["score"].equals(off[name]["score"])

    # weighting off gives exactly the lists of the same data without review text
    for part in ("train", "val", "test"):
        frame = pd.read_parquet(review_workspace / "data/split" / f"{part}.parquet")
        (tmp_path / "plain/data/split").mkdir(parents=True, exist_ok=True)
        frame.drop(columns="review").to_parquet(tmp_path / "plain/data/split" / f"{part}.parquet")
    plain = lists(
        tmp_path / "plain",
        f"paths.canonical_dir={review_workspace / 'data/canonical'}",
        models_dir=tmp_path / "plain",
    )
    for name in plain:
        pd.testing.assert_frame_equal(plain[name], off[name])
