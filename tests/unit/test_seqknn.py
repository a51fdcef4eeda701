"""The order-aware item kNN (plugins/recommenders/seqknn.py): the similarity it
is documented to compute, recency weighting, the history cap, fold-in, limits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.interactions import IdMaps, Interactions
from recforge.protocols import FitContext

from recforge_plugins.recommenders.seqknn import SequentialKNN, transition_similarity


def events(histories: list[list[int]], n_items: int) -> tuple[Interactions, FitContext]:
    """Users' time-ordered item histories (dense ids = item ids, user u = row u)."""
    rows = [(user, item, 1_000 + t) for user, history in enumerate(histories) for t, item in enumerate(history)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(n_items), "title": [f"item {i}" for i in range(n_items)]})
    maps = IdMaps.build(frame, items)
    return Interactions.from_frame(frame, maps), FitContext(items=items, maps=maps)


def test_similarity_is_the_documented_sum() -> None:
    """One history a, b, c; window 2, step decay 0.5, backward 0.25, alpha 0.5, every item seen once
    (so the normalisation is 1): C[a,b] = 1 (gap 1), C[a,c] = 0.5 (gap 2), C[c,a] = 0.25 * 0.5."""
    train, _ = events([[0, 1, 2]], 3)
    sim = transition_similarity(train, window=2, step_decay=0.5, backward=0.25, alpha=0.5).toarray()
    expected = np.array(
        [
            [0.0, 1.0, 0.5],
            [0.25, 0.0, 1.0],
            [0.125, 0.25, 0.0],
        ]
    )
    np.testing.assert_allclose(sim, expected, rtol=1e-6)


def test_similarity_normalises_by_popularity_and_never_crosses_users() -> None:
    # item 0 is in both histories (count 2), item 3 follows it once; items 1 and 2 belong to other
    # users, so the end of one history and the start of the next are not neighbours
    train, _ = events([[0, 1], [2, 0, 3]], 4)
    sim = transition_similarity(train, window=1, step_decay=1.0, backward=0.0, alpha=0.5).toarray()
    assert sim[1, 2] == 0.0 and sim[2, 1] == 0.0, "pairs across two users' histories"
    np.testing.assert_allclose(sim[0, 3], 1.0 / (2**0.5 * 1**0.5), rtol=1e-6)
    np.testing.assert_allclose(sim[0, 1], 1.0 / 2**0.5, rtol=1e-6)
    np.testing.assert_allclose(sim[2, 0], 1.0 / 2**0.5, rtol=1e-6)
    skewed = transition_similarity(train, window=1, step_decay=1.0, backward=0.0, alpha=1.0).toarray()
    np.testing.assert_allclose(skewed[0, 3], 0.5, rtol=1e-6)  # alpha 1: divided by the source's count only
    assert np.all(
        np.diag(
            transition_similarity(events([[5, 5, 5]], 6)[0], window=2, step_decay=1, backward=1, alpha=0.5).toarray()
        )
        == 0
    )


def test_the_most_recent_item_counts_most() -> None:
    # the pattern 0 -> 1 and 2 -> 3 (twice each, in other users' histories); the scored user saw 0
    # long ago and 2 last, so with recency < 1 item 3 must rank above item 1, and the reverse order
    # of the history must reverse the answer
    histories = [[0, 1], [0, 1], [2, 3], [2, 3], [0, 4, 5, 6, 2], [2, 4, 5, 6, 0]]
    train, context = events(histories, 7)
    model = SequentialKNN(window=1, backward=0.0, recency=0.5, history=10).fit(train, context=context)
    items, _ = model.recommend(np.array([4, 5]), k=2)
    assert items[0, 0] == 3 and items[1, 0] == 1
    flat = SequentialKNN(window=1, backward=0.0, recency=1.0, history=10).fit(train, context=context)
    _, scores = flat.recommend(np.array([4]), k=2)
    assert scores[0, 0] == pytest.approx(scores[0, 1]), "recency 1 weighs every history item alike"


def test_only_the_last_history_items_score() -> None:
    histories = [[0, 1], [0, 1], [2, 3], [2, 3], [0, 4, 5, 2]]
    train, context = events(histories, 6)
    model = SequentialKNN(window=1, backward=0.0, recency=1.0, history=3).fit(train, context=context)
    items, scores = model.recommend(np.array([4]), k=3)
    assert items[0, 0] == 3
    assert 1 not in set(items[0][np.isfinite(scores[0]) & (scores[0] > 0)]), "item 0 is 4 events back: beyond history=3"


def test_fold_in_of_a_users_own_history_gives_their_scores() -> None:
    rng = np.random.default_rng(0)
    histories = [list(rng.choice(30, 12, replace=False)) for _ in range(25)]
    train, context = events(histories, 30)
    model = SequentialKNN(window=4, history=6, recency=0.7).fit(train, context=context)
    for user in (0, 7, 24):
        known = model.recommend(np.array([user]), k=10)
        folded = model.recommend_history(np.array(histories[user]), k=10)
        np.testing.assert_array_equal(known[0], folded[0])
        np.testing.assert_allclose(known[1], folded[1], rtol=1e-6)


def test_deterministic_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(1)
    histories = [list(rng.choice(40, 10, replace=False)) for _ in range(30)]
    train, context = events(histories, 40)
    a = SequentialKNN(neighbors=5).fit(train, context=context)
    b = SequentialKNN(neighbors=5).fit(train, context=context)
    assert (a.similarity != b.similarity).nnz == 0
    assert np.diff(a.similarity.indptr).max() <= 5, "neighbors prunes each row"
    a.save(tmp_path)
    loaded = SequentialKNN.load(tmp_path, context=context)
    np.testing.assert_array_equal(a.recommend(np.arange(30), k=5)[0], loaded.recommend(np.arange(30), k=5)[0])


@pytest.mark.parametrize(
    "options",
    [
        {"window": 0},
        {"window": 201},
        {"window": 2.5},
        {"step_decay": 0.0},
        {"step_decay": 1.5},
        {"backward": -0.1},
        {"alpha": float("nan")},
        {"neighbors": 0},
        {"history": True},
        {"recency": 0},
        {"recency": "auto"},
    ],
)
def test_options_out_of_range_are_one_line_errors(options) -> None:
    with pytest.raises(ValueError) as error:
        SequentialKNN(**options)
    assert "\n" not in str(error.value) and next(iter(options)) in str(error.value)
