"""Contract tests for EVERY registered re-ranker (built-in or third party).

Each re-ranker is fitted on a small synthetic candidate table where the answer
is known: every user has ``CANDIDATES`` candidate rows and one positive; the
feature ``signal`` is higher for the positive than for the others (with noise),
``noise`` carries nothing and ``rank`` is the candidate's position in a random
list. A re-ranker that follows recforge.protocols.Reranker must learn to put
the positive first on users it has not seen, give honest out-of-fold scores for
its training rows, report the importance of its features and save and load to
identical scores in safe formats.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge import registry
from recforge.protocols import Reranker

USERS, CANDIDATES = 150, 10
FEATURES = ["signal", "noise", "rank"]

# cheap settings for the built-in re-rankers; other plugins use their defaults
OPTIONS: dict[str, dict] = {
    "lambdarank": {"folds": 3, "num_boost_round": 60, "early_stopping_rounds": 15, "min_data_in_leaf": 10, "seed": 1},
}

NAMES = sorted(registry.rerankers.available())


def candidate_table(users: int = USERS, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(candidates, labels, groups): ``users`` consecutive blocks of ``CANDIDATES`` rows, one positive each."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), CANDIDATES)
    labels = np.zeros(len(user), dtype=np.float64)
    labels[np.arange(users) * CANDIDATES + rng.integers(0, CANDIDATES, users)] = 1.0
    item = rng.integers(0, 500, len(user))
    frame = pd.DataFrame(
        {
            "user": user,
            "item": item,
            "user_id": user + 10_000,
            "item_id": item + 20_000,
            "signal": (2.0 * labels + rng.normal(scale=0.6, size=len(user))).astype(np.float32),
            "noise": rng.normal(size=len(user)).astype(np.float32),
            "rank": np.concatenate([rng.permutation(CANDIDATES) + 1 for _ in range(users)]).astype(np.float32),
        }
    )
    return frame, labels, np.full(users, CANDIDATES, dtype=np.int64)


def top1_share(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of users whose positive gets their highest score."""
    scores, labels = scores.reshape(-1, CANDIDATES), labels.reshape(-1, CANDIDATES)
    return float(labels[np.arange(len(labels)), scores.argmax(axis=1)].mean())


_fitted: dict[str, Reranker] = {}


def fitted(name: str) -> Reranker:
    """One re-ranker per name fitted on the training table, shared by the module."""
    if name not in _fitted:
        reranker = registry.rerankers.create(name, **OPTIONS.get(name, {}))
        frame, labels, groups = candidate_table()
        assert reranker.fit(frame, labels, groups) is reranker
        _fitted[name] = reranker
    return _fitted[name]


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def test_the_built_in_reranker_is_registered():
    assert "lambdarank" in NAMES


def test_satisfies_the_protocol(name):
    fresh = registry.rerankers.create(name, **OPTIONS.get(name, {}))
    assert isinstance(fresh, Reranker)
    assert fresh.oof_scores is None
    assert isinstance(fitted(name), Reranker)


def test_puts_the_positive_first_for_unseen_users(name):
    frame, labels, _ = candidate_table(users=100, seed=7)
    scores = fitted(name).rerank(frame)
    assert isinstance(scores, np.ndarray) and scores.shape == (len(frame),)
    assert np.isfinite(scores).all()
    assert top1_share(scores, labels) >= 0.85
    assert top1_share(frame["noise"].to_numpy(), labels) < 0.3  # the table is not trivial


def test_scores_of_a_row_do_not_depend_on_the_other_users(name):
    frame, _, _ = candidate_table(users=40, seed=3)
    whole = fitted(name).rerank(frame)
    part = fitted(name).rerank(frame.iloc[CANDIDATES * 5 : CANDIDATES * 9])
    np.testing.assert_allclose(part, whole[CANDIDATES * 5 : CANDIDATES * 9], rtol=1e-9)


def test_out_of_fold_scores_cover_every_training_row(name):
    frame, labels, _ = candidate_table()
    oof = fitted(name).oof_scores
    assert isinstance(oof, np.ndarray) and oof.shape == (len(frame),)
    assert np.isfinite(oof).all()
    assert top1_share(oof, labels) >= 0.7  # honest, yet still learned (chance: 0.1)


def test_feature_importance_covers_the_features(name):
    table = fitted(name).feature_importance()
    assert isinstance(table, pd.DataFrame)
    assert {"feature", "gain", "splits", "gain_share"} <= set(table.columns)
    assert set(table["feature"]) == set(FEATURES)
    assert table["gain"].is_monotonic_decreasing
    assert table.iloc[0]["feature"] == "signal"
    assert np.isclose(table["gain_share"].sum(), 1.0)


def test_save_and_load_give_identical_scores(name, tmp_path):
    reranker = fitted(name)
    frame, _, _ = candidate_table(users=50, seed=11)
    reranker.save(tmp_path / "state")
    restored = registry.rerankers.get(name).load(tmp_path / "state")
    assert isinstance(restored, Reranker)
    np.testing.assert_array_equal(restored.rerank(frame), reranker.rerank(frame))
    pd.testing.assert_frame_equal(restored.feature_importance(), reranker.feature_importance())
    # nothing unsafe on disk (LightGBM's text model format is .txt)
    suffixes = {p.suffix for p in (tmp_path / "state").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".npz", ".npy", ".safetensors", ".txt"}


def test_a_table_without_positives_is_refused_with_a_value_error(name):
    frame, labels, groups = candidate_table(users=20)
    with pytest.raises(ValueError):
        registry.rerankers.create(name, **OPTIONS.get(name, {})).fit(frame, np.zeros_like(labels), groups)
