"""The LambdaRank re-ranker's round choice and honest out-of-fold scores (plugins/rerankers/lambdarank.py).

Fold ``f``'s out-of-fold scores are what the reported validation NDCG@10, the
validation lists and the ablations' validation column read. Reading them at a
round chosen on fold ``f``'s own labels (its own curve, or the mean curve that
includes it) made those figures optimistic by 0.003-0.006 on ml-latest-small;
these tests pin the round choice and where the out-of-fold scores are read.
"""

from __future__ import annotations

import numpy as np
import pytest

from recforge.candidates import positive_groups
from tests.contract.test_rerankers import FEATURES, candidate_table

from recforge_plugins.rerankers.lambdarank import LambdaRankReranker, fold_assignment, peak_round, window_mean


def test_window_mean_averages_each_fold_over_its_last_five_rounds():
    curves = [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    assert window_mean(curves, 1) == pytest.approx(0.5)  # fold means 1 and 0 over one round
    assert window_mean(curves, 2) == pytest.approx(0.25)  # 1/2 and 0
    assert window_mean(curves, 5) == pytest.approx(0.1)  # 1/5 and 0
    assert window_mean(curves, 6) == pytest.approx(0.0)  # the 1.0 has left the window
    assert window_mean(curves, 7) == pytest.approx(0.05)  # 0.5/5 and 0


def test_peak_round_is_two_before_the_first_peak_of_the_smoothed_mean():
    spike = [0.0] * 5 + [1.0] + [0.0] * 6  # the spike sits in the windows of rounds 6 to 10, all equal
    flat = [0.0] * 12
    assert peak_round([spike, flat]) == 4  # the first of the equal peaks (6), minus 2
    assert peak_round([[1.0, 0.0, 0.0, 0.0]]) == 1  # peak at round 1: never below 1
    late = [0.1, 0.1, 0.2, 0.3, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5]
    means = [window_mean([late], r) for r in range(1, 11)]
    assert peak_round([late]) == int(np.argmax(means)) + 1 - 2


def _fitted(selection: str) -> tuple[LambdaRankReranker, np.ndarray, np.ndarray, np.ndarray]:
    frame, labels, groups = candidate_table(users=240, seed=3)
    frame["signal"] = frame["signal"] * 0.25 + frame["noise"]  # a weak signal: noisy curves, rounds that differ
    reranker = LambdaRankReranker(
        folds=4,
        repeats=2,
        num_boost_round=80,
        early_stopping_rounds=20,
        min_data_in_leaf=10,
        num_leaves=4,
        seed=5,
        threads=1,
        selection=selection,
        features=FEATURES,
    )
    reranker.fit(frame, labels, groups)
    return reranker, frame[FEATURES].to_numpy(np.float32), labels, groups


@pytest.mark.parametrize("selection", ["mean", "fold"])
def test_out_of_fold_scores_are_read_at_rounds_the_other_folds_chose(selection):
    """Catches a fold scored at a round its own labels chose: at ``best_iterations`` (its own curve in 'fold'
    mode, the mean that includes it in 'mean' mode), or at a round of a curve set that includes its own."""
    reranker, X, labels, groups = _fitted(selection)
    folds, repeats = 4, 2
    assert len(reranker.boosters) == len(reranker.curves) == len(reranker.oof_iterations) == folds * repeats
    # the test means something only where the honest round differs from the ensemble's
    assert reranker.oof_iterations != reranker.best_iterations

    useful = np.flatnonzero(positive_groups(labels, groups))
    row_group = np.repeat(np.arange(len(groups)), groups)
    expected = np.zeros(len(X))
    for repeat in range(repeats):
        curves = reranker.curves[repeat * folds : (repeat + 1) * folds]
        trained = min(len(c) for c in curves)
        if selection == "mean":  # the ensemble's round: the peak of every fold's curve
            assert reranker.best_iterations[repeat * folds] == peak_round([c[:trained] for c in curves])
        fold_of_group = fold_assignment(len(groups), useful, folds, 5 + repeat)
        for fold in range(folds):
            model = repeat * folds + fold
            others = [c[:trained] for j, c in enumerate(curves) if j != fold]
            assert reranker.oof_iterations[model] == peak_round(others)
            rows = np.isin(row_group, np.flatnonzero(fold_of_group == fold))
            expected[rows] += reranker.boosters[model].predict(X[rows], num_iteration=reranker.oof_iterations[model])
    np.testing.assert_allclose(reranker.oof_scores, expected / repeats, rtol=1e-6, atol=1e-9)


def test_fold_assignment_deals_only_the_useful_groups_into_near_equal_folds():
    useful = np.array([0, 2, 3, 5, 6, 7, 9])
    folds = fold_assignment(10, useful, 3, seed=1)
    assert (folds[[1, 4, 8]] == -1).all() and (folds[useful] >= 0).all()
    assert sorted(np.bincount(folds[useful])) == [2, 2, 3]
    np.testing.assert_array_equal(folds, fold_assignment(10, useful, 3, seed=1))  # seeded


def test_a_fitted_reranker_keeps_no_training_data():
    """Catches the trained boosters kept with their LightGBM datasets (binned copies of every fold's rows, which
    sat under the whole test pass at 1M events), and a detached copy that lost trees (its predictions would
    differ from the out-of-fold scores the attached boosters gave: the test above)."""
    reranker, X, _, _ = _fitted("mean")
    assert all(getattr(booster, "train_set", None) is None for booster in reranker.boosters)
    assert all(booster.current_iteration() == len(curve) for booster, curve in zip(reranker.boosters, reranker.curves))
