"""Contract tests for EVERY registered recommender (built-in or third party),
in the style of implicit's shared test mixin: each model is fitted on a
synthetic "checkerboard" where the right answer is known.

Checkerboard: users and items each belong to one of two groups (parity of the
index). A user has interacted with 10 of the 15 items of their own group and
with none of the other group, in a random time order. A personalised model
must therefore recommend the user's 5 unseen own-group items first. The item
titles and genres name the group too, so text-based models have the same
signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import registry
from recforge.interactions import IdMaps, Interactions
from recforge.protocols import FitContext, FoldIn, Recommender, Refittable, SimilarItems

N_USERS, N_ITEMS, SEEN_PER_USER = 40, 30, 10

# cheap settings for the built-in models that train iteratively; other plugins use their defaults
OPTIONS: dict[str, dict] = {
    "mf[als]": {"algorithm": "als", "factors": 2, "iterations": 15, "regularization": 0.1, "seed": 1},
    "mf[bpr]": {"algorithm": "bpr", "factors": 8, "iterations": 200, "learning_rate": 0.05, "seed": 1},
    "itemknn[bm25]": {"weighting": "bm25", "shrink": 1.0},
    "userknn[bm25]": {"weighting": "bm25", "shrink": 1.0},
    **{
        f"sequential[{cell}]": {
            "cell": cell,
            "dim": 16,
            "layers": 1,
            "heads": 1,
            "max_len": 12,
            "epochs": 20,
            "batch_size": 8,
            "dropout": 0.3,
            "lr": 1e-2,
            "threads": 1,
            "device": "cpu",
            "seed": 1,
        }
        for cell in ("gru", "lstm", "sasrec")
    },
}
# models that do not personalise: the structural contract applies, the checkerboard answer does not
NOT_PERSONALISED = {"popularity"}


def _cases() -> list[tuple[str, str]]:
    plugins = sorted(registry.recommenders.available())
    cases = []
    for plugin in plugins:
        variants = [key for key in OPTIONS if key.split("[")[0] == plugin]
        cases += [(key, plugin) for key in variants] if variants else [(plugin, plugin)]
    return cases


def checkerboard(seed: int = 0) -> tuple[Interactions, FitContext]:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in range(N_USERS):
        own = np.arange(user % 2, N_ITEMS, 2)
        chosen = rng.choice(own, SEEN_PER_USER, replace=False)
        users += [user] * SEEN_PER_USER
        items += list(chosen)
        times += list(1_000_000 + user * 100 + np.arange(SEEN_PER_USER))
    names = np.where(np.arange(N_ITEMS) % 2 == 0, "Comedy", "Horror")
    item_frame = pd.DataFrame(
        {
            "item_id": np.arange(N_ITEMS) + 100,
            "title": [f"{name.lower()} story {i}" for i, name in enumerate(names)],
            "genres": names,
            "text": [f"a {name.lower()} film full of {name.lower()}" for name in names],
        }
    )
    frame = pd.DataFrame({"user_id": np.array(users) + 1000, "item_id": np.array(items) + 100, "timestamp": times})
    frame["rating"] = 4.0
    maps = IdMaps.build(frame, item_frame)
    return Interactions.from_frame(frame, maps), FitContext(items=item_frame, maps=maps, seed=0, device="cpu")


@pytest.fixture(scope="module")
def board() -> tuple[Interactions, FitContext]:
    return checkerboard()


@pytest.fixture(scope="module", params=_cases(), ids=lambda case: case[0])
def fitted(request, board):
    key, plugin = request.param
    train, context = board
    model = registry.recommenders.create(plugin, **OPTIONS.get(key, {}))
    model.fit(train, context=context)
    return key, plugin, model


def _parity_share(items: np.ndarray, users: np.ndarray) -> float:
    valid = items >= 0
    return float(((items % 2) == (users[:, None] % 2))[valid].mean())


def test_satisfies_protocol(fitted) -> None:
    _, _, model = fitted
    assert isinstance(model, Recommender)


def test_checkerboard_answer(fitted, board) -> None:
    key, plugin, model = fitted
    train, _ = board
    users = np.arange(N_USERS)
    items, scores = model.recommend(users, k=5, exclude_seen=True)
    assert items.shape == scores.shape == (N_USERS, 5)
    seen = train.csr
    assert not any(seen[u, i] for u, row in zip(users, items) for i in row if i >= 0), "a seen item was recommended"
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be in descending order"
    if plugin not in NOT_PERSONALISED:
        # the 5 unseen own-group items are the right answer
        assert _parity_share(items, users) >= 0.95, f"{key}: {_parity_share(items, users):.2f} own-group"


def test_exclude_seen_false_allows_history(fitted, board) -> None:
    key, plugin, model = fitted
    train, _ = board
    users = np.arange(N_USERS)
    items, _ = model.recommend(users, k=N_ITEMS, exclude_seen=False)
    assert (items >= 0).all(), "without exclusion every item is eligible"
    assert all(len(set(row)) == N_ITEMS for row in items)


def test_candidates_restrict_the_ranking(fitted) -> None:
    _, _, model = fitted
    rng = np.random.default_rng(3)
    users = np.arange(0, N_USERS, 3)
    candidates = np.stack([rng.choice(N_ITEMS, 6, replace=False) for _ in users])
    candidates[:, -2:] = -1  # padding
    items, scores = model.recommend(users, k=8, exclude_seen=False, candidates=candidates)
    assert items.shape == (len(users), 8)
    for row, allowed in zip(items, candidates):
        chosen = row[row >= 0]
        assert set(chosen) <= set(allowed[allowed >= 0])
        assert len(chosen) == 4, "all four real candidates are eligible without exclusion"
    assert (items[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()


def test_k_larger_than_catalogue_pads(fitted, board) -> None:
    _, _, model = fitted
    train, _ = board
    users = np.array([0, 1, 7])
    k = N_ITEMS + 5
    items, scores = model.recommend(users, k=k, exclude_seen=True)
    assert items.shape == scores.shape == (len(users), k)
    for user, row, row_scores in zip(users, items, scores):
        real = row[row >= 0]
        assert len(real) == N_ITEMS - SEEN_PER_USER
        assert len(set(real)) == len(real)
        assert not set(real) & set(train.csr[user].indices)
        assert (row[len(real) :] == -1).all() and np.isneginf(row_scores[len(real) :]).all()


def test_save_load_round_trip(fitted, board, tmp_path: Path) -> None:
    _, plugin, model = fitted
    _, context = board
    model.save(tmp_path)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))
    loaded = registry.recommenders.get(plugin).load(tmp_path, context=context)
    users = np.arange(N_USERS)
    before = model.recommend(users, k=7, exclude_seen=True)
    after = loaded.recommend(users, k=7, exclude_seen=True)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], rtol=1e-5, atol=1e-6)


def test_similar_items(fitted) -> None:
    _, plugin, model = fitted
    if not isinstance(model, SimilarItems):
        pytest.skip("no similar_items")
    for item in (0, 1, 10):
        items, scores = model.similar_items(item, k=5)
        assert len(items) == len(scores) == 5
        assert item not in set(items)
        if plugin not in NOT_PERSONALISED:
            assert ((items % 2) == item % 2).mean() >= 0.8, f"neighbours of {item}: {items}"


def test_fold_in_history(fitted) -> None:
    _, plugin, model = fitted
    if not isinstance(model, FoldIn):
        pytest.skip("no recommend_history")
    history = np.array([2, 8, 14, 20])  # all from group 0
    items, scores = model.recommend_history(history, k=6, exclude_seen=True)
    items = np.asarray(items).ravel()
    assert len(items) == 6
    assert not set(items) & set(history)
    if plugin not in NOT_PERSONALISED:
        assert ((items % 2) == 0).mean() >= 0.8, f"fold-in of a group-0 history gave {items}"


def test_refit_options_are_options_the_plugin_accepts(fitted, board) -> None:
    """A Refittable model's refit options are constructor options: the train stage refits with them."""
    key, plugin, model = fitted
    if not isinstance(model, Refittable):
        pytest.skip("no refit_options")
    refit = model.refit_options()
    assert isinstance(refit, dict)
    train, context = board
    again = registry.recommenders.create(plugin, **{**OPTIONS.get(key, {}), **refit})
    context = FitContext(items=context.items, maps=context.maps, seed=context.seed, device=context.device)
    again.fit(train, context=context)  # no validation events, as in the train + val refit
    assert again.recommend(np.arange(4), k=3)[0].shape == (4, 3)
