"""recforge.ranking: top-k selection (ties, padding, exclusions), batching, history rows, RRF."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.ranking import RRF_OFFSET, TORCH_MIN_SCORES, batched, history_row, reciprocal_rank_fusion, top_k


def test_rrf_sums_over_the_models_that_listed_the_item():
    ranks = np.array([[1.0, 3.0], [np.nan, 2.0], [np.nan, np.nan]])
    fused = reciprocal_rank_fusion(ranks)
    assert fused[0] == pytest.approx(1 / (RRF_OFFSET + 1) + 1 / (RRF_OFFSET + 3))
    assert fused[1] == pytest.approx(1 / (RRF_OFFSET + 2))
    assert fused[2] == 0.0


# ---- top_k: ties, padding, exclusions (every recommender's lists come from here) ----------------------------


def reference_top_k(scores, k, seen=None, candidates=None):
    """The documented contract written the slow way: eligible items by (-score, index), -1 / -inf padded."""
    items, values = [], []
    for r, row in enumerate(np.asarray(scores, dtype=np.float64)):
        eligible = set(range(len(row)))
        if candidates is not None:
            eligible &= {int(c) for c in candidates[r] if c >= 0}
        if seen is not None:
            eligible -= set(seen[r].indices.tolist())
        ranked = sorted((i for i in eligible if row[i] != -np.inf), key=lambda i: (-row[i], i))[:k]
        items.append(ranked + [-1] * (k - len(ranked)))
        values.append([row[i] for i in ranked] + [-np.inf] * (k - len(ranked)))
    return np.array(items, dtype=np.int64).reshape(len(items), k), np.array(values).reshape(len(items), k)


def test_top_k_orders_by_score_and_returns_the_documented_types():
    # catches a reversed order, a lost row, and dtypes the list writers rely on (int64 items, float32 scores)
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    items, values = top_k(scores, 2)
    assert items.tolist() == [[1, 3], [0, 1]]
    np.testing.assert_allclose(values, [[0.9, 0.7], [4.0, 3.0]], rtol=1e-6)
    assert items.dtype == np.int64 and values.dtype == np.float32


def test_top_k_breaks_ties_towards_the_lower_item_index_at_the_cut():
    # catches argpartition's arbitrary pick among items tied at the k-th place (the _fix_ties path):
    # items 1..7 tie; the lowest indices win, whatever order argpartition returns them in
    scores = np.array([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    items, values = top_k(scores, 3)
    assert items.tolist() == [[8, 1, 2], [0, 1, 2]]
    assert values.tolist() == [[5.0, 1.0, 1.0], [2.0, 2.0, 2.0]]


def test_top_k_ties_inside_the_list_also_break_by_index():
    # catches the secondary sort key dropped (ties above the cut in argpartition's order)
    scores = np.array([[3.0, 7.0, 3.0, 7.0, 0.0, 3.0]])
    assert top_k(scores, 5)[0].tolist() == [[1, 3, 0, 2, 5]]


def test_top_k_excludes_seen_items_and_pads_rows_without_enough_items():
    # catches the history mask ignored or applied to the wrong row, and padding that repeats or invents items
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    seen = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0]]))
    items, values = top_k(scores, 3, seen=seen)
    assert items.tolist() == [[1, -1, -1], [0, 1, 2]]
    assert values[0, 0] == pytest.approx(0.8) and np.isneginf(values[0, 1:]).all()


def test_top_k_restricts_to_candidates_and_ignores_their_padding():
    # catches candidates ignored, candidate -1 padding read as the last item, and rows mixed up
    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    candidates = np.array([[0, 2, -1], [3, 1, 2]])
    items, values = top_k(scores, 3, candidates=candidates)
    assert items.tolist() == [[2, 0, -1], [1, 2, 3]]
    assert values[0].tolist()[:2] == pytest.approx([0.3, 0.1]) and values[0, 2] == -np.inf


def test_top_k_pads_when_k_exceeds_the_catalogue():
    # catches k > n_items crashing or returning fewer than k columns
    items, values = top_k(np.array([[0.5, 0.25]]), 4)
    assert items.tolist() == [[0, 1, -1, -1]]
    assert values[0, :2].tolist() == [0.5, 0.25] and np.isneginf(values[0, 2:]).all()


def test_top_k_does_not_modify_the_callers_scores():
    # catches the masks written into the caller's array (models reuse their score matrices)
    scores = np.array([[0.3, 0.2, 0.1]])
    top_k(scores, 1, seen=sp.csr_matrix(np.array([[1, 0, 0]])), candidates=np.array([[0, 1]]))
    assert scores.tolist() == [[0.3, 0.2, 0.1]]


def test_top_k_equals_the_slow_reference_on_random_ties():
    # catches any deviation from the contract on many shapes: integer scores make ties common,
    # seen and candidate masks overlap, k below, at and above the catalogue size
    rng = np.random.default_rng(7)
    for trial in range(60):
        n_rows, n_items = int(rng.integers(1, 6)), int(rng.integers(1, 12))
        k = int(rng.integers(1, n_items + 3))
        scores = rng.integers(0, 4, size=(n_rows, n_items)).astype(np.float64)
        seen = sp.csr_matrix(rng.random((n_rows, n_items)) < 0.3) if trial % 2 else None
        candidates = None
        if trial % 3 == 0:
            candidates = rng.integers(-1, n_items, size=(n_rows, int(rng.integers(1, n_items + 2))))
        items, values = top_k(scores, k, seen=seen, candidates=candidates)
        want_items, want_values = reference_top_k(scores, k, seen, candidates)
        assert items.tolist() == want_items.tolist(), (trial, scores, k)
        assert values.tolist() == want_values.astype(np.float32).tolist(), trial


@pytest.mark.parametrize("torch_installed", [True, False])
def test_top_k_over_a_wide_block_equals_the_reference_with_and_without_torch(monkeypatch, torch_installed):
    # catches the multi-threaded path (a block of TORCH_MIN_SCORES scores or more) keeping torch's arbitrary member
    # of a tie at the cut, or asked for the wrong number of columns; and the numpy fallback broken where the
    # optional torch extra is not installed (an import of a None module raises ImportError)
    if not torch_installed:
        monkeypatch.setitem(sys.modules, "torch", None)
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, size=(40, 2000)).astype(np.float32)  # 80,000 scores, ties everywhere
    assert scores.size >= TORCH_MIN_SCORES
    seen = sp.csr_matrix(rng.random(scores.shape) < 0.1)
    for k in (1, 7, 100):
        items, values = top_k(scores, k, seen=seen)
        want_items, want_values = reference_top_k(scores, k, seen)
        assert items.tolist() == want_items.tolist(), k
        assert values.tolist() == want_values.astype(np.float32).tolist(), k


def test_top_k_finds_the_lowest_index_ties_far_into_a_long_row():
    # catches the tie search stopping at its first prefix (4 k columns) when the tied items come later, the prefix
    # grown past items it should keep, and the items above the tie dropped or left out of (-score, index) order
    scores = np.full((3, 5000), -1.0)
    scores[0, [4100, 4200, 4300, 4400, 4500, 4600]] = 1.0  # six tied at the cut for k = 5, all beyond 1,280 columns
    scores[1, [3000, 10, 20]] = [3.0, 2.0, 2.0]  # two above the cut, in the partition's set
    scores[1, [2500, 2600, 2700, 4999]] = 1.0
    scores[2, 7] = 5.0  # a sparse row tied at -1 from column 0 on
    for k in (3, 5):
        items, values = top_k(scores, k)
        want_items, want_values = reference_top_k(scores, k)
        assert items.tolist() == want_items.tolist(), k
        assert values.tolist() == want_values.astype(np.float32).tolist(), k
    assert top_k(scores, 5)[0][0].tolist() == [4100, 4200, 4300, 4400, 4500]


@pytest.mark.parametrize("columns", [12, TORCH_MIN_SCORES // 2])
def test_top_k_never_lists_an_item_scored_nan(columns):
    # catches NaN ranked first by torch's topk (the wide path) or kept as a listed item with a NaN score when a
    # row has fewer than k other items: a NaN counts as -inf on both paths, and the caller's array is not changed
    scores = np.zeros((2, columns), dtype=np.float32)
    scores[:, :3] = [0.5, np.nan, 0.25]
    scores[1, 3:] = np.nan  # row 1: two real scores only
    items, values = top_k(scores, 4)
    assert items[0].tolist() == [0, 2, 3, 4] and values[0].tolist() == [0.5, 0.25, 0.0, 0.0]
    assert items[1].tolist() == [0, 2, -1, -1] and values[1].tolist() == [0.5, 0.25, -np.inf, -np.inf]
    assert np.isnan(scores[0, 1]) and np.isnan(scores[1, 3:]).all()


def test_top_k_hands_only_wide_blocks_to_torch(monkeypatch):
    # catches the threshold inverted or dropped: torch's call overhead (about 0.2 ms) would be paid by every
    # single list at serving time, and the wide blocks of a 100,000-item catalogue would stay single-threaded
    torch = pytest.importorskip("torch")
    calls, real = [], torch.topk
    monkeypatch.setattr(
        torch,
        "topk",
        lambda values, *args, **kwargs: calls.append(tuple(values.shape)) or real(values, *args, **kwargs),
    )
    assert top_k(np.zeros((1, TORCH_MIN_SCORES - 1)), 5)[0].tolist() == [[0, 1, 2, 3, 4]]
    assert calls == []
    assert top_k(np.zeros((1, TORCH_MIN_SCORES)), 5)[0].tolist() == [[0, 1, 2, 3, 4]]
    assert calls == [(1, TORCH_MIN_SCORES)]


def test_batched_covers_the_range_once():
    # catches a lost last batch, overlapping or overlong slices
    assert list(batched(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert list(batched(6, 3)) == [slice(0, 3), slice(3, 6)]
    assert list(batched(0, 3)) == []


def test_history_row_marks_each_known_item_once():
    # catches out-of-range ids kept (a crash or a wrong exclusion), duplicates counted twice, a wrong shape
    row = history_row(np.array([3, 1, 3, -1, 5, 0]), 5)
    assert row.shape == (1, 5)
    assert row.toarray().tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0]]
    assert row.dtype == np.float32 and row.nnz == 3
    assert history_row(np.array([], dtype=np.int64), 3).nnz == 0


def test_top_k_accepts_integer_scores_with_masks():
    # catches the float64 copy dropped: count-based scores (popularity) are integers, and the -inf masks
    # cannot be written into an integer array
    scores = np.array([[5, 9, 7, 1]])
    items, values = top_k(scores, 2, seen=sp.csr_matrix(np.array([[0, 1, 0, 0]])), candidates=np.array([[1, 2, 3]]))
    assert items.tolist() == [[2, 3]] and values.tolist() == [[7.0, 1.0]]


def test_top_k_equals_a_full_sort_on_long_rows():
    # catches a partition at the wrong place (k - 2 instead of k - 1): on long rows of distinct scores the
    # items after the partition point come in arbitrary order, so the k-th item would be wrong
    rng = np.random.default_rng(11)
    scores = rng.random((20, 300))
    for k in (1, 2, 10, 299):
        items, _ = top_k(scores, k)
        assert items.tolist() == np.argsort(-scores, axis=1)[:, :k].tolist(), k


def test_top_k_keeps_float64_precision_and_float32_scores_give_the_same_lists():
    # catches float64 scores compared in float32 (1 and 1 + 1e-12 become a tie, broken by the lower index), and
    # float32 scores ranked differently from their exact float64 values
    items, _ = top_k(np.array([[1.0, 1.0 + 1e-12, 0.5]]), 1)
    assert items.tolist() == [[1]]
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 50, (6, 40)).astype(np.float32) / 7
    seen = sp.random(6, 40, density=0.2, format="csr", random_state=1)
    for k in (3, 10, 45):
        got, want = top_k(scores, k, seen=seen), top_k(scores.astype(np.float64), k, seen=seen)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].dtype == np.float32


def test_top_k_masks_seen_given_in_any_sparse_format():
    # catches the seen mask read from CSR arrays on a matrix of another format (COO has no indptr; CSC's
    # indptr runs over columns, so its items would be masked in the wrong rows)
    scores = np.array([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0], [9.0, 8.0, 7.0, 6.0]])
    dense = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    want = top_k(scores, 2, seen=sp.csr_matrix(dense))
    assert want[0].tolist() == [[1, 2], [2, 1], [0, 1]]
    for other in (sp.coo_matrix(dense), sp.csc_matrix(dense), sp.csr_array(dense)):
        items, values = top_k(scores, 2, seen=other)
        assert items.tolist() == want[0].tolist(), other.format
        assert values.tolist() == want[1].tolist(), other.format
