"""recforge.candidates: LambdaRank's positive groups and the float32 score / gap columns of the candidate
table, on tiny hand-made lists (fast; each test names the wrong behaviour it catches)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recforge.candidates import dense_candidate_frame, group_sizes, positive_groups
from recforge.interactions import IdMaps

MAPS = IdMaps(user_ids=pd.Index([7, 8]), item_ids=pd.Index(["a", "b", "c"]))

# ---- positive_groups -------------------------------------------------------------------------------------


def test_positive_groups_one_flag_per_group():
    # catches the group starts shifted (the first group starting at row 1 misses its positive in row 0), the
    # last start dropped or all but the first (a group flagged by its neighbour's rows, or fewer flags than
    # groups), and the threshold moved (>= 0 flags every group, > 1 misses a group with a single positive)
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0], dtype=np.int32)
    groups = np.array([2, 3, 1, 2], dtype=np.int64)  # rows 0-1 | 2-4 | 5 | 6-7
    flags = positive_groups(labels, groups)
    assert flags.tolist() == [True, False, True, False]
    assert flags.dtype == bool


def test_positive_groups_counts_several_positives_once():
    # catches a group with two positives treated differently from one with a single positive
    labels = np.array([1, 1, 0, 0, 1], dtype=np.int32)
    assert positive_groups(labels, np.array([2, 2, 1])).tolist() == [True, False, True]


def test_positive_groups_of_no_groups_is_an_empty_bool_array():
    # catches the empty case not short-cut (reduceat on no rows fails) or answered with a flag or floats
    # (the caller masks groups with it: a float or one-element mask breaks the indexing)
    flags = positive_groups(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64))
    assert flags.shape == (0,) and flags.dtype == bool


# ---- dense_candidate_frame: float32 scores -----------------------------------------------------------------


def test_gap_is_computed_from_the_float32_scores_the_frame_holds():
    # catches float64 scores kept for the gap (the score column is float32, so two scores equal in the frame
    # could show a non-zero gap: 100000001 and 100000000 are both 1e8 in float32)
    users = np.array([0, 0, 1])
    items = np.array([0, 1, 2])
    scores = np.array([100000001.0, 100000000.0, 5.0], dtype=np.float64)
    ranks = np.array([1.0, 2.0, 1.0])
    frame = dense_candidate_frame({"m": (users, items, scores, ranks)}, MAPS)
    assert frame["m_score"].tolist() == [1e8, 1e8, 5.0]
    assert frame["m_gap"].tolist() == [0.0, 0.0, 0.0]
    assert frame["m_score"].dtype == np.float32 and frame["m_gap"].dtype == np.float32
    assert (frame["m_gap"] == frame["m_score"] - frame.groupby("user")["m_score"].transform("max")).all()


def test_group_sizes_of_no_rows_is_no_group():
    """Catches one group of size 0 for an empty frame (LambdaRank's groups then disagree with its rows: the rerank
    stage crashed in positive_groups instead of falling back to rank fusion), or sizes that are not int64."""
    empty = group_sizes(pd.DataFrame({"user": np.zeros(0, np.int64)}))
    assert empty.shape == (0,) and empty.dtype == np.int64
    sizes = group_sizes(pd.DataFrame({"user": [3, 3, 5, 9, 9, 9]}))
    assert sizes.tolist() == [2, 1, 3] and sizes.dtype == np.int64
