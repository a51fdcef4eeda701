"""Metrics against hand-computed values, including ties and users without a hit."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from recforge import metrics

# user 1: target at rank 2; user 2: target at rank 1; user 3: no hit
RECS = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 2, 2, 2, 3, 3, 3],
        "item_id": [10, 20, 30, 40, 10, 20, 10, 20, 30],
        "rank": [1, 2, 3, 1, 2, 3, 1, 2, 3],
    }
)
TRUTH = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [20, 40, 99]})


def test_ndcg_hand_computed():
    expected = (1 / math.log2(3) + 1.0 + 0.0) / 3
    assert metrics.ndcg_at_k(RECS, TRUTH, 3) == pytest.approx(expected)


def test_cutoff_excludes_later_hits():
    assert metrics.ndcg_at_k(RECS, TRUTH, 1) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(RECS, TRUTH, 1) == pytest.approx(1 / 3)


def test_recall_is_hit_rate_under_leave_one_out():
    assert metrics.recall_at_k(RECS, TRUTH, 3) == pytest.approx(2 / 3)


def test_mrr_and_map():
    assert metrics.mrr_at_k(RECS, TRUTH, 3) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # one relevant item each: AP = precision at the hit
    assert metrics.map_at_k(RECS, TRUTH, 3) == pytest.approx((0.5 + 1.0) / 3)


def test_precision_counts_k_in_denominator():
    assert metrics.precision_at_k(RECS, TRUTH, 3) == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)


def test_multiple_relevant_items():
    truth = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 30]})
    recs = RECS[RECS.user_id == 1]
    dcg = 1.0 + 1 / math.log2(4)
    idcg = 1.0 + 1 / math.log2(3)
    assert metrics.ndcg_at_k(recs, truth, 3) == pytest.approx(dcg / idcg)
    assert metrics.recall_at_k(recs, truth, 3) == pytest.approx(1.0)
    assert metrics.map_at_k(recs, truth, 3) == pytest.approx((1.0 + 2 / 3) / 2)


def test_user_without_recommendations_counts_as_zero():
    truth = pd.concat([TRUTH, pd.DataFrame({"user_id": [4], "item_id": [10]})])
    assert metrics.recall_at_k(RECS, truth, 3) == pytest.approx(2 / 4)


def test_ties_in_scores_break_by_item_id():
    # items 5 and 7 tie; 5 ranks first, so a target of 7 sits at rank 2
    recs = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [7, 5, 9], "score": [0.5, 0.5, 0.1]})
    truth = pd.DataFrame({"user_id": [1], "item_id": [7]})
    assert metrics.mrr_at_k(recs, truth, 3) == pytest.approx(0.5)
    assert metrics.ndcg_at_k(recs, truth, 1) == 0.0


def test_coverage_and_evaluate_keys():
    assert metrics.coverage_at_k(RECS, n_items=10, k=1) == pytest.approx(2 / 10)
    result = metrics.evaluate(RECS, TRUTH, [1, 3], n_items=10)
    assert {"ndcg@1", "recall@3", "mrr@3", "map@3", "precision@3", "coverage@3"} <= set(result)
    assert result["users"] == 3
