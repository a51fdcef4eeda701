"""User-kNN's batched dense scoring against a brute-force reference written here."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.interactions import Interactions
from recforge.protocols import FitContext

import recforge_plugins.recommenders.userknn as userknn
from recforge_plugins.recommenders.userknn import UserKNN


def _events(seed: int = 0, n_users: int = 60, n_items: int = 40) -> Interactions:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 8)
    items = rng.integers(0, n_items, len(users))
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    # event weights make every similarity distinct: no tie decides which neighbours vote
    weights = rng.uniform(0.5, 2.0, len(pairs)).astype(np.float32)
    return Interactions(
        pairs[:, 0].astype(np.int32),
        pairs[:, 1].astype(np.int32),
        np.arange(len(pairs)),
        None,
        n_users,
        n_items,
        weights=weights,
    )


def _reference(seen: np.ndarray, neighbors: int, shrink: float, pool: np.ndarray | None = None) -> np.ndarray:
    """Every user's votes from its ``neighbors`` most similar users among ``pool`` (every user when None)."""
    norms = np.sqrt((seen**2).sum(1))
    sims = seen @ seen.T / (norms[:, None] * norms[None, :] + shrink + 1e-12)
    np.fill_diagonal(sims, 0.0)
    if pool is not None:
        outside = np.setdiff1d(np.arange(len(seen)), pool)
        sims[:, outside] = 0.0
    votes = np.zeros_like(seen)
    for u in range(len(seen)):
        top = np.argsort(-sims[u], kind="stable")[:neighbors]
        votes[u] = sims[u, top] @ seen[top]
    return votes


@pytest.mark.parametrize("torch_path", [False, True])
@pytest.mark.parametrize("dense_entries", [10**9, 7 * 60, 1])  # one block, blocks of 7 users, one user a block
def test_scores_equal_brute_force(monkeypatch, dense_entries, torch_path) -> None:
    """Catches a block's users excluded at the wrong offset, a norm of the wrong side, or the pruning keeping
    other than each row's ``neighbors`` largest similarities (numpy's partition and torch's topk alike)."""
    import recforge.ranking as ranking

    monkeypatch.setattr(userknn, "DENSE_ENTRIES", dense_entries)
    if torch_path:
        pytest.importorskip("torch")
        monkeypatch.setattr(ranking, "TORCH_MIN_SCORES", 1)
    events = _events()
    model = UserKNN(neighbors=5, shrink=2.0).fit(events, context=FitContext(items=None, maps=None))
    seen = events.weighted_csr.toarray().astype(np.float64)
    want = _reference(seen, 5, 2.0)
    users = np.arange(events.n_users)
    got = model._score(model.vectors[users], users)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # recommend excludes the seen items and ranks the rest by those scores
    items, scores = model.recommend(users[:3], k=5)
    for row, user in enumerate(users[:3]):
        assert not set(items[row]) & set(np.flatnonzero(seen[user]))
        np.testing.assert_allclose(
            scores[row], np.sort(np.where(seen[user] > 0, -np.inf, want[user]))[::-1][:5], rtol=1e-4
        )


@pytest.mark.parametrize("weighting", ["none", "tfidf", "bm25"])
def test_a_history_is_weighted_as_a_training_row(weighting) -> None:
    """recommend_history's row is weighted as weight_rows weights it among the training rows (catches the 'none'
    shortcut giving another row than the full reweighting, e.g. binary where the training rows carry weights)."""
    import scipy.sparse as sp

    from recforge.ranking import history_row, top_k

    from recforge_plugins.recommenders._knn import weight_rows

    events = _events(seed=1)
    model = UserKNN(neighbors=8, weighting=weighting).fit(events, context=FitContext(items=None, maps=None))
    history = np.array([3, 17, 5, 29])
    row = history_row(history, events.n_items)
    stacked = weight_rows(sp.vstack([model.seen, row]).tocsr(), weighting)[-1]
    want = top_k(model._score(stacked, None), 6, seen=row)
    got = model.recommend_history(history, k=6)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


@pytest.mark.parametrize("dense_entries", [10**9, 7 * 25])
def test_a_pool_restricts_the_neighbours_to_its_users(monkeypatch, dense_entries, tmp_path) -> None:
    """pool=n: every query (in the pool or not) takes its neighbours among n users drawn with the run's seed
    (catches a user's pool column taken for its index, a pool user voting for itself, or the pool's own
    rows not used for the votes); the saved model scores the same; another seed draws another pool."""
    monkeypatch.setattr(userknn, "DENSE_ENTRIES", dense_entries)
    events = _events(seed=2)
    model = UserKNN(neighbors=4, shrink=1.0, pool=25).fit(events, context=FitContext(items=None, maps=None, seed=3))
    pool = model.pool_users
    assert len(pool) == 25 and np.all(np.diff(pool) > 0) and pool.max() < events.n_users
    np.testing.assert_array_equal(pool, userknn.draw_pool(events.n_users, 25, 3))
    assert not np.array_equal(pool, userknn.draw_pool(events.n_users, 25, 4))
    seen = events.weighted_csr.toarray().astype(np.float64)
    users = np.arange(events.n_users)
    want = _reference(seen, 4, 1.0, pool)
    np.testing.assert_allclose(model._score(model.vectors[users], users), want, rtol=1e-4, atol=1e-5)
    model.save(tmp_path)
    loaded = UserKNN.load(tmp_path, context=FitContext(items=None, maps=None))
    np.testing.assert_array_equal(loaded.pool_users, pool)
    np.testing.assert_allclose(loaded._score(loaded.vectors[users], users), want, rtol=1e-4, atol=1e-5)


def test_pool_sizes() -> None:
    """auto is POOL_AUTO users; no pool when there are no more users than its size; bad values are refused."""
    assert UserKNN(pool="auto").config["pool"] == userknn.POOL_AUTO
    assert userknn.draw_pool(60, 60, 0) is None and userknn.draw_pool(60, None, 0) is None
    assert len(userknn.draw_pool(61, 60, 0)) == 60
    events = _events()
    model = UserKNN(pool=events.n_users).fit(events, context=FitContext(items=None, maps=None))
    assert model.pool_users is None
    for bad in (0, -3, "all", 2.5, True):
        with pytest.raises(ValueError, match="pool must be"):
            UserKNN(pool=bad)
