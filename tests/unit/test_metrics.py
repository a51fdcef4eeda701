"""Metrics against hand-computed values, including ties and users without a hit."""

from __future__ import annotations

import math

import numpy as np
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


def at(k: int, recs: pd.DataFrame = RECS, truth: pd.DataFrame = TRUTH) -> dict[str, float]:
    return metrics.evaluate(recs, truth, [k], n_items=10)


def test_ndcg_hand_computed():
    expected = (1 / math.log2(3) + 1.0 + 0.0) / 3
    assert at(3)["ndcg@3"] == pytest.approx(expected)


def test_cutoff_excludes_later_hits():
    assert at(1)["ndcg@1"] == pytest.approx(1 / 3)
    assert at(1)["recall@1"] == pytest.approx(1 / 3)


def test_recall_is_hit_rate_under_leave_one_out():
    assert at(3)["recall@3"] == pytest.approx(2 / 3)


def test_mrr_and_map():
    assert at(3)["mrr@3"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # one relevant item each: AP = precision at the hit
    assert at(3)["map@3"] == pytest.approx((0.5 + 1.0) / 3)


def test_precision_counts_k_in_denominator():
    assert at(3)["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)


def test_multiple_relevant_items():
    truth = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 30]})
    result = at(3, RECS[RECS.user_id == 1], truth)
    dcg = 1.0 + 1 / math.log2(4)
    idcg = 1.0 + 1 / math.log2(3)
    assert result["ndcg@3"] == pytest.approx(dcg / idcg)
    assert result["recall@3"] == pytest.approx(1.0)
    assert result["map@3"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_user_without_recommendations_counts_as_zero():
    truth = pd.concat([TRUTH, pd.DataFrame({"user_id": [4], "item_id": [10]})])
    assert at(3, truth=truth)["recall@3"] == pytest.approx(2 / 4)


def test_ties_in_scores_break_by_item_id():
    # items 5 and 7 tie; 5 ranks first, so a target of 7 sits at rank 2
    recs = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [7, 5, 9], "score": [0.5, 0.5, 0.1]})
    truth = pd.DataFrame({"user_id": [1], "item_id": [7]})
    assert at(3, recs, truth)["mrr@3"] == pytest.approx(0.5)
    assert at(1, recs, truth)["ndcg@1"] == 0.0


def test_coverage_and_evaluate_keys():
    assert metrics.coverage_at_k(RECS, n_items=10, k=1) == pytest.approx(2 / 10)
    result = metrics.evaluate(RECS, TRUTH, [1, 3], n_items=10)
    assert {"ndcg@1", "recall@3", "mrr@3", "map@3", "precision@3", "coverage@3"} <= set(result)
    assert result["users"] == 3


# ---- the array core ---------------------------------------------------------------------------------------


def test_array_core_hand_computed_with_misses_padding_and_duplicates():
    top = np.array(
        [
            [3, 1, 2],  # target 1 at rank 2
            [5, -1, -1],  # a short list; target 5 at rank 1
            [7, 8, 9],  # miss
            [4, 6, 0],  # two of three targets (6 at rank 2, 0 at rank 3); target 2 is missed
        ]
    )
    truth = np.array([[1, -1, -1], [5, 5, -1], [2, -1, -1], [6, 0, 2]])  # row 1 lists its target twice
    result = metrics.ranking_metrics(top, truth, 3)
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    ndcg = [d2, 1.0, 0.0, (d2 + d3) / (1.0 + d2 + d3)]
    assert result["ndcg@3"] == pytest.approx(np.mean(ndcg))
    assert result["recall@3"] == pytest.approx(np.mean([1.0, 1.0, 0.0, 2 / 3]))
    assert result["mrr@3"] == pytest.approx(np.mean([0.5, 1.0, 0.0, 0.5]))
    assert result["map@3"] == pytest.approx(np.mean([0.5, 1.0, 0.0, (1 / 2 + 2 / 3) / 3]))
    assert result["precision@3"] == pytest.approx(np.mean([1 / 3, 1 / 3, 0.0, 2 / 3]))


def test_array_core_cuts_at_k_and_takes_one_target_per_row():
    top = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    result = metrics.ranking_metrics(top, np.array([1, 1]), 2, metrics=("ndcg", "recall"))
    assert set(result) == {"ndcg@2", "recall@2"}
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["ndcg@2"] == pytest.approx(0.5 / math.log2(3))


def test_array_core_does_not_match_padding():
    # -1 in the list and -1 in the truth padding are not a hit
    result = metrics.ranking_metrics(np.array([[-1, -1]]), np.array([[4, -1]]), 2)
    assert result["recall@2"] == 0.0 and result["ndcg@2"] == 0.0


def test_array_core_needs_a_target_per_row():
    with pytest.raises(ValueError, match="at least one"):
        metrics.ranking_metrics(np.array([[1, 2]]), np.array([[-1]]), 2)


def test_padded_truth_groups_rows_in_order():
    truth = metrics.padded_truth(np.array([2, 0, 2, 0, 2]), np.array([10, 11, 12, 13, 14]), 4)
    assert truth.tolist() == [[11, 13, -1], [-1, -1, -1], [10, 12, 14], [-1, -1, -1]]


def test_string_ids_and_users_absent_from_truth():
    recs = pd.DataFrame({"user_id": ["a", "a", "z"], "item_id": ["x", "y", "x"], "rank": [1, 2, 1]})
    truth = pd.DataFrame({"user_id": ["a"], "item_id": ["y"]})
    result = metrics.evaluate(recs, truth, [2], n_items=3)
    assert result["mrr@2"] == pytest.approx(0.5) and result["users"] == 1


# ---- mutation-found gaps: each test names the wrong behaviour it catches ------------------------------------


def test_coverage_of_a_one_item_catalogue_and_of_an_empty_one():
    # catches the division guard max(n_items, 1) turned into max(n_items, 2): one item recommended out of
    # one is full coverage; an empty catalogue must not divide by zero
    recs = pd.DataFrame({"user_id": [1], "item_id": [10], "rank": [1]})
    assert metrics.coverage_at_k(recs, n_items=1, k=1) == 1.0
    assert metrics.coverage_at_k(recs.iloc[:0], n_items=0, k=1) == 0.0


def test_evaluate_reports_coverage_at_each_k():
    # catches coverage left out of evaluate or computed at the wrong cutoff (RECS: 2 items at rank 1, 4 in top 3)
    result = metrics.evaluate(RECS, TRUTH, [1, 3], n_items=10)
    assert result["coverage@1"] == pytest.approx(2 / 10)
    assert result["coverage@3"] == pytest.approx(4 / 10)


def test_short_lists_count_as_misses_up_to_k():
    # catches the padding of lists shorter than k dropped (a crash) or sized wrong: two columns scored at k=4
    top = np.array([[2, 1], [3, 5]])
    result = metrics.ranking_metrics(top, np.array([1, 4]), 4)
    assert result["precision@4"] == pytest.approx((1 / 4 + 0) / 2)
    assert result["ndcg@4"] == pytest.approx((1 / math.log2(3)) / 2)
    assert result["map@4"] == pytest.approx(0.5 / 2)


def test_missing_ranks_are_filled_with_no_item_not_with_a_real_code():
    # catches the empty slots of the [users, k] table filled with a real item code (+1 is the second truth
    # item here): user b's single recommendation misses, so the slots after it must not hit 'y'
    recs = pd.DataFrame({"user_id": ["b"], "item_id": ["z"], "rank": [1]})
    truth = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]})
    result = metrics.evaluate(recs, truth, [3], n_items=3)
    assert result["recall@3"] == 0.0 and result["ndcg@3"] == 0.0


def test_float_ranks_still_place_items():
    # catches the rank column used as float positions (a CSV column with a gap reads as float)
    recs = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 20], "rank": [1.0, 2.0]})
    truth = pd.DataFrame({"user_id": [1], "item_id": [20]})
    assert metrics.evaluate(recs, truth, [2], n_items=2)["mrr@2"] == pytest.approx(0.5)


def test_row_count_mismatch_names_both_counts():
    # catches the message dropped: the caller learns which side is short
    with pytest.raises(ValueError, match=r"^2 top-k rows for 3 truth rows$"):
        metrics.ranking_metrics_per_row(np.array([[1], [2]]), np.array([1, 2, 3]), 1)


def test_a_row_without_targets_is_an_error_even_with_no_truth_columns():
    # catches max() over an empty truth array failing with numpy's message instead of the documented one
    with pytest.raises(ValueError, match=r"^every row needs at least one held-out item$"):
        metrics.ranking_metrics(np.array([[1, 2]]), np.zeros((1, 0), dtype=np.int64), 2)


def test_no_rows_give_empty_per_row_metrics():
    # catches the empty case returning one fake row (or crashing)
    per_row = metrics.ranking_metrics_per_row(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64), 3)
    assert set(per_row) == set(metrics.METRICS) and all(len(v) == 0 for v in per_row.values())


def test_padded_truth_keeps_input_order_within_a_row():
    # catches an unstable sort: numpy's default quicksort reorders equal keys on longer inputs (the
    # small-input case above is stable by accident), so each row's items must come out in input order
    rows = np.array([0, 1] * 50)
    truth = metrics.padded_truth(rows, np.arange(100), 2)
    assert truth[0].tolist() == list(range(0, 100, 2)) and truth[1].tolist() == list(range(1, 100, 2))


def test_padded_truth_without_items():
    # catches the row count lost when no row has an item (bincount without minlength) and a fake column
    assert metrics.padded_truth(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2).shape == (2, 0)
    assert metrics.padded_truth(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 0).shape == (0, 0)


def test_empty_lists_score_zero():
    # catches max() over a list array without columns crashing: a model that lists nothing scores 0
    result = metrics.ranking_metrics(np.zeros((2, 0), dtype=np.int64), np.array([1, 2]), 3)
    assert result == {f"{name}@3": 0.0 for name in metrics.METRICS}


def test_discounts_are_one_over_log2_of_rank_plus_one():
    """Catches a scaled discount (2 / log2(...)): NDCG hides it, since the ideal scales too."""
    assert metrics.discounts(3) == pytest.approx([1.0, 1 / math.log2(3), 0.5])


def test_with_rank_orders_users_ascending_then_score_descending():
    """Catches users sorted in descending order: with_rank documents its row order, not only the rank."""
    recs = pd.DataFrame({"user_id": [2, 1, 2, 1], "item_id": [5, 6, 7, 8], "score": [0.1, 0.2, 0.9, 0.3]})
    ranked = metrics.with_rank(recs)
    assert ranked["user_id"].tolist() == [1, 1, 2, 2]
    assert ranked["item_id"].tolist() == [8, 6, 7, 5]
    assert ranked["rank"].tolist() == [1, 2, 1, 2]


def test_table_arrays_pads_short_lists_with_minus_one():
    """Catches another padding value (-2) in the top-k array: -1 is the documented 'no item'."""
    recs = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [10, 20, 10], "rank": [1, 1, 2]})
    truth = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 30]})
    top_items, truth_items = metrics.table_arrays(recs, truth, 3)
    # codes: 10 -> 0, 30 -> 1, 20 -> 2
    assert top_items.tolist() == [[0, -1, -1], [2, 0, -1]]
    assert truth_items.tolist() == [[0], [1]]
