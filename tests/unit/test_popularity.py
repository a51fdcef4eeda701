"""The popularity plugin's lists without a [users x items] matrix (plugins/recommenders/popularity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.ranking import top_k

from recforge_plugins.recommenders.popularity import Popularity


@pytest.mark.parametrize("k", [1, 5, 12, 40])
def test_lists_equal_top_k_over_the_whole_catalogue(k):
    """Catches a candidate window narrower than k + the most items a user has seen (a user who saw the popular
    items gets a short list), ties broken by something other than the lower item, window positions mapped back
    to the wrong items, and padding (-1) mapped to an item when k exceeds the catalogue (k = 40 > 30 items)."""
    rng = np.random.default_rng(k)
    model = Popularity()
    model.item_scores = rng.integers(0, 6, 30).astype(np.float64)  # many ties
    rows = [rng.choice(30, size=rng.integers(0, 25), replace=False) for _ in range(20)]
    rows[0] = np.argsort(-model.item_scores, kind="stable")[:20]  # a user who saw the 20 most popular items
    model.seen = sp.csr_matrix(
        (np.ones(sum(map(len, rows))), (np.repeat(np.arange(20), [len(r) for r in rows]), np.concatenate(rows))),
        shape=(20, 30),
    )
    users = np.arange(20)
    for exclude in (True, False):
        items, scores = model.recommend(users, k=k, exclude_seen=exclude)
        want_items, want_scores = top_k(
            np.broadcast_to(model.item_scores, (20, 30)), k, seen=model.seen if exclude else None
        )
        np.testing.assert_array_equal(items, want_items)
        np.testing.assert_array_equal(scores, want_scores)
    assert model.recommend(np.array([], dtype=np.int64), k=k)[0].shape == (0, k)
