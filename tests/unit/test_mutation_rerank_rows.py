"""recforge.rerank_rows: positive users, the training-user cap and the spilled validation rows (fast, no training).

Each test names the wrong behaviour it catches. Everything is hand-written: 4 users, 4 items, feature
blocks shaped like recforge.rerank.iter_part's (ids, dense ids, float features), a real spill file in
tmp_path, and plain functions as the scorer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.interactions import IdMaps
from recforge.rerank import positive_users, ranked_lists
from recforge.rerank_rows import (
    TRAIN_USERS_AUTO,
    ValRows,
    collect_val_rows,
    positive_val_users,
    sample_training_users,
)

MAPS = IdMaps(
    user_ids=pd.Index([10, 20, 30, 40], name="user_id"), item_ids=pd.Index([100, 101, 102, 103], name="item_id")
)
# held-out events: user 10 -> item 101, user 20 -> item 102, user 30 -> item 100
TRUTH = pd.DataFrame({"user_id": [10, 20, 30], "item_id": [101, 102, 100]})


def _lists(rows):
    """A candidate list frame from (user_id, item_id, rank) rows."""
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"]).assign(score=1.0)


def _block(users, items, features=None):
    """A feature block as iter_part yields it: dense (user, item), original ids, two float features."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    if features is None:  # distinct, exactly representable values: row r has (r + 0.5, -r - 0.25) plus an offset
        features = np.stack([users * 10 + items + 0.5, -(users * 10 + items) - 0.25], axis=1)
    return pd.DataFrame(
        {
            "user": users,
            "item": items,
            "user_id": MAPS.user_ids.to_numpy()[users],
            "item_id": MAPS.item_ids.to_numpy()[items],
            "f1": features[:, 0],
            "f2": features[:, 1],
        }
    )


# ---- positive_val_users -------------------------------------------------------------------------------


def test_positive_users_counts_a_hit_at_exactly_the_rank_cut():
    # catches `rank <= per_model` turned into `<` (the last candidate kept is dropped) and the cut ignored
    lists = {"pop": _lists([(10, 103, 1), (10, 101, 2), (20, 102, 3)])}
    np.testing.assert_array_equal(positive_val_users(lists.values(), TRUTH, MAPS, 2), [0])
    np.testing.assert_array_equal(positive_val_users(lists.values(), TRUTH, MAPS, 3), [0, 1])


def test_positive_users_take_the_union_of_the_models_sorted_int64():
    # catches the union computed from one model only, dense id 0 dropped (`users > 0`), ids left unsorted or
    # repeated, and the wrong dtype
    lists = {
        "pop": _lists([(30, 100, 1), (20, 103, 1)]),
        "knn": _lists([(10, 101, 1), (30, 100, 2), (20, 102, 2)]),
    }
    got = positive_val_users(lists.values(), TRUTH, MAPS, 2)
    np.testing.assert_array_equal(got, [0, 1, 2])
    assert got.dtype == np.int64


def test_positive_users_leave_out_users_unknown_to_the_maps():
    # catches the -1 of an unknown user kept (`users >= 0` dropped or turned into `> -1`-like slips)
    truth = pd.concat([TRUTH, pd.DataFrame({"user_id": [99], "item_id": [100]})], ignore_index=True)
    lists = {"pop": _lists([(99, 100, 1), (20, 102, 1)])}
    got = positive_val_users(lists.values(), truth, MAPS, 5)
    np.testing.assert_array_equal(got, [1])


def test_positive_users_of_no_lists_is_an_empty_int64_array():
    # catches the no-model case returning None or a float array (np.isin / indexing downstream needs int64)
    got = positive_val_users([], TRUTH, MAPS, 5)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == (0,)


# ---- sample_training_users ----------------------------------------------------------------------------


def test_no_cap_or_a_cap_not_below_the_count_keeps_every_user_without_logging(caplog):
    # catches `len <= cap` turned into `<` (a cap equal to the count would draw and log a sample), None
    # treated as a number (TypeError), and the ids not handed back as int64
    positive = np.array([5, 1, 3], dtype=np.int32)  # unsorted on purpose: the no-sample path keeps the input
    with caplog.at_level(logging.INFO, logger="recforge.rerank_rows"):
        for cap in (None, 3, 4):
            got = sample_training_users(positive, cap, 0)
            np.testing.assert_array_equal(got, [5, 1, 3])
            assert got.dtype == np.int64
    assert caplog.records == []


def test_a_cap_draws_that_many_distinct_users_sorted_and_logs_it(caplog):
    # catches the draw made with replacement (duplicates), a size other than the cap, an unsorted result,
    # the seed not used, and a wrong or unformattable log line (argument order: cap, then positive users)
    positive = np.arange(0, 300, 2, dtype=np.int32)  # 150 users
    with caplog.at_level(logging.INFO, logger="recforge.rerank_rows"):
        drawn = sample_training_users(positive, 120, 7)
    assert drawn.dtype == np.int64 and len(drawn) == 120
    assert len(np.unique(drawn)) == 120 and np.isin(drawn, positive).all()
    assert (np.diff(drawn) > 0).all()
    np.testing.assert_array_equal(drawn, sample_training_users(positive, 120, 7))
    assert not np.array_equal(drawn, sample_training_users(positive, 120, 8))
    want = np.sort(positive[np.random.default_rng(7).choice(150, size=120, replace=False)])
    np.testing.assert_array_equal(drawn, want)
    assert [r.getMessage() for r in caplog.records] == [
        "rerank: training on 120 of 150 users with a positive candidate (max_train_users)"
    ]
    assert caplog.records[0].levelno == logging.INFO


def test_auto_cap_is_train_users_auto():
    # catches `auto` not recognised (int("auto") fails) or mapped to another number
    many = np.arange(TRAIN_USERS_AUTO + 1)
    assert len(sample_training_users(many, "auto", 0)) == TRAIN_USERS_AUTO
    assert len(sample_training_users(many[:-1], "auto", 0)) == TRAIN_USERS_AUTO


# ---- ValRows ------------------------------------------------------------------------------------------


def _rows(tmp_path, train_users=(0, 2)):
    return ValRows(TRUTH, np.array(train_users), MAPS, spill_dir=tmp_path)


def _spilled(rows):
    """Every spilled (keys, X), joined (empty arrays of the right shape when nothing was spilled)."""
    blocks = list(rows.rest_blocks())
    if not blocks:
        return np.zeros((0, 2), np.int64), np.zeros((0, len(rows.features or [])), np.float32)
    return np.concatenate([k for k, _ in blocks]), np.concatenate([x for _, x in blocks])


def test_spill_files_live_in_the_spill_dir_and_close_removes_them(tmp_path):
    # catches spill_dir ignored (the spill goes to the system temp dir, e.g. a small /tmp), the files' names
    # changed (rerank-val-* is how a leaked spill is recognised), and close() leaving either file behind
    rows = _rows(tmp_path)
    paths = [Path(rows._spill.name), Path(rows._spill_keys.name)]
    assert [p.parent for p in paths] == [tmp_path, tmp_path]
    assert all(p.name.startswith("rerank-val-") for p in paths)
    assert paths[0].name.endswith(".f32") and paths[1].name.endswith(".keys")
    assert all(p.exists() for p in paths)
    rows.close()
    assert not any(p.exists() for p in paths)


def test_unfinished_rows_have_empty_int64_keys(tmp_path):
    # catches the declared key array made with a row, a wrong width or a float dtype
    rows = _rows(tmp_path)
    assert rows.train_keys.shape == (0, 2) and rows.train_keys.dtype == np.int64
    assert rows.X is None and rows.labels is None and rows.groups is None and rows.rest_rows == 0
    rows.close()


def test_training_rows_stay_in_memory_and_the_rest_is_spilled_in_order(tmp_path):
    # catches the split by user inverted, training features kept as float64, labels computed on the wrong
    # rows, keys stacked the wrong way (user/item swapped or transposed), the rest count overwritten per block
    # instead of summed, and spilled rows read back in another order, grouping or dtype
    blocks = [
        _block([0, 0, 1, 1], [1, 3, 2, 0]),  # user 0 trains (101 is its held-out item), user 1 spills
        _block([2, 2, 3], [0, 2, 1]),  # user 2 trains (100 held out), user 3 spills
    ]
    rows = _rows(tmp_path)
    for block in blocks:
        rows.add(block)
    assert rows.finish() is rows
    assert rows.features == ["f1", "f2"]
    assert rows.X.dtype == np.float32
    np.testing.assert_array_equal(rows.X, [[1.5, -1.25], [3.5, -3.25], [20.5, -20.25], [22.5, -22.25]])
    assert rows.labels.tolist() == [1, 0, 1, 0]
    np.testing.assert_array_equal(rows.groups, [2, 2])
    np.testing.assert_array_equal(rows.train_keys, [[0, 1], [0, 3], [2, 0], [2, 2]])
    assert rows.rest_rows == 3
    spilled = list(rows.rest_blocks())
    assert len(spilled) == 2  # one read per block that spilled
    (keys1, X1), (keys2, X2) = spilled
    assert keys1.dtype == np.int64 and X1.dtype == np.float32
    np.testing.assert_array_equal(keys1, [[1, 2], [1, 0]])
    np.testing.assert_array_equal(X1, [[12.5, -12.25], [10.5, -10.25]])
    np.testing.assert_array_equal(keys2, [[3, 1]])
    np.testing.assert_array_equal(X2, [[31.5, -31.25]])
    rows.close()


def test_lists_equal_cutting_the_whole_part_at_once(tmp_path):
    # catches a block's training scores or spilled rows taken from another block (offsets not advanced, or
    # advanced by the wrong count), the scorer given the training rows, a block's rows cut to k without its
    # training rows, and the lists out of user order: they must equal ranked_lists over every row at once
    blocks = [
        _block([0, 0, 0, 1, 1, 1], [1, 3, 2, 2, 0, 3]),  # user 0 trains, user 1 spills
        _block([2, 2, 3, 3, 3], [0, 2, 1, 0, 2]),  # user 2 trains, user 3 spills
    ]
    rows = _rows(tmp_path)
    for block in blocks:
        rows.add(block)
    rows.finish()
    train_scores = np.array([0.3, 0.9, 0.1, 0.5, 0.7])
    seen = []

    def score(X):
        seen.append(X.copy())
        return -X[:, 0]  # lower f1 ranks first

    got = rows.lists(train_scores, score, k=2)
    assert [len(x) for x in seen] == [3, 3] and all(x.dtype == np.float32 for x in seen)
    keys = np.concatenate([rows.train_keys, _spilled(rows)[0]])
    scores = np.concatenate([train_scores, -_spilled(rows)[1][:, 0]])
    want = ranked_lists(pd.DataFrame({"user": keys[:, 0], "item": keys[:, 1]}), scores, 2, maps=MAPS)
    pd.testing.assert_frame_equal(got, want.sort_values(["user_id", "rank"], ignore_index=True))
    assert got["user_id"].tolist() == [10, 10, 20, 20, 30, 30, 40, 40]
    assert got["item_id"].tolist() == [103, 101, 100, 102, 102, 100, 100, 101]
    rows.close()


def test_lists_follow_the_training_rows_over_blocks_with_and_without_spilled_rows(tmp_path):
    # catches the training offset set to the last block's count instead of advanced by it (right for two
    # blocks, wrong from the third), and the spilled blocks given up at a block that spilled nothing
    rows = _rows(tmp_path, train_users=(0, 2, 3))
    rows.add(_block([0, 0], [1, 3]))  # trains only
    rows.add(_block([1, 1, 2], [0, 2, 1]))  # user 1 spills, user 2 trains
    rows.add(_block([3, 3], [0, 2]))  # trains only
    rows.finish()
    got = rows.lists(np.array([0.1, 0.2, 0.3, 0.5, 0.4]), lambda X: -X[:, 0], k=1)
    assert got["user_id"].tolist() == [10, 20, 30, 40]
    assert got["item_id"].tolist() == [103, 100, 101, 100]
    assert got["score"].tolist() == pytest.approx([0.2, -10.5, 0.3, 0.5])
    rows.close()
    assert rows.X is None


def test_lists_refuse_training_scores_of_another_length(tmp_path):
    # catches scores silently misaligned with the training rows (a fold's scores, or the scores of another run)
    rows = _rows(tmp_path)
    rows.add(_block([0, 1], [1, 2]))
    rows.finish()
    with pytest.raises(ValueError, match="2 training scores for 1 training rows"):
        rows.lists(np.zeros(2), lambda X: X[:, 0], k=5)
    rows.close()


def test_all_rows_spilled_leaves_empty_training_arrays_of_the_right_shape(tmp_path):
    # catches the empty training X made with a row, without the feature width or as float64, the empty
    # labels made with a row or another dtype, and (a bug found here) one empty group reported for no
    # training row: positive_users() then raised IndexError, so a validation part without a positive
    # candidate crashed the rerank stage instead of reaching the fit's ValueError and the rank-fusion fallback
    rows = _rows(tmp_path, train_users=())
    rows.add(_block([1, 3], [0, 1]))
    rows.finish()
    assert rows.X.shape == (0, 2) and rows.X.dtype == np.float32
    assert rows.labels.shape == (0,) and rows.labels.dtype == np.int32
    assert rows.groups.tolist() == [] and rows.groups.dtype == np.int64 and rows.train_keys.shape == (0, 2)
    assert positive_users(rows.labels, rows.groups) == 0
    np.testing.assert_array_equal(_spilled(rows)[0], [[1, 0], [3, 1]])
    lists = rows.lists(np.zeros(0), lambda X: X[:, 0], k=5)
    assert lists["user_id"].tolist() == [20, 40] and lists["item_id"].tolist() == [100, 101]
    rows.close()


def test_no_rows_at_all_finishes_empty(tmp_path):
    # catches `features or []` turned into `and` (len(None) fails) when a part yields no block, and the
    # lists of nothing failing or carrying other columns
    rows = _rows(tmp_path).finish()
    assert rows.X.shape == (0, 0) and rows.labels.shape == (0,)
    assert list(rows.rest_blocks()) == []
    lists = rows.lists(np.zeros(0), lambda X: pytest.fail("nothing to score"), k=5)
    assert list(lists.columns) == ["user_id", "item_id", "rank", "score"] and len(lists) == 0
    rows.close()


def test_all_rows_training_spills_nothing_and_scores_nothing(tmp_path):
    # catches a spill (and a rest count) made when every row trains, and the scorer called with no rows
    rows = _rows(tmp_path, train_users=(0, 1))
    rows.add(_block([0, 1], [1, 2]))
    rows.finish()
    assert rows.rest_rows == 0 and os.path.getsize(rows._spill.name) == 0
    assert os.path.getsize(rows._spill_keys.name) == 0
    assert list(rows.rest_blocks()) == []
    lists = rows.lists(np.array([0.5, 0.25]), lambda X: pytest.fail("nothing to score"), k=5)
    assert lists["user_id"].tolist() == [10, 20] and lists["score"].tolist() == [0.5, 0.25]
    assert rows.labels.tolist() == [1, 1]
    rows.close()


def test_keys_are_int64_whatever_the_block_id_dtype(tmp_path):
    # catches the block's id columns kept in their own dtype (int32 here): the spilled keys are read back as
    # int64 pairs, so int32 ones would come back as garbage
    block = _block([0, 1, 1], [1, 2, 3]).astype({"user": np.int32, "item": np.int32})
    rows = _rows(tmp_path, train_users=(0,))
    rows.add(block)
    rows.finish()
    assert rows.train_keys.dtype == np.int64
    np.testing.assert_array_equal(rows.train_keys, [[0, 1]])
    np.testing.assert_array_equal(_spilled(rows)[0], [[1, 2], [1, 3]])
    rows.close()


def test_a_scorer_writing_into_its_rows_leaves_the_spill_as_it_was(tmp_path):
    # catches the spill mapped read-write (np.memmap's default, "r+"): a scorer that normalises X in place
    # would write into the spilled rows, and a second pass would score the changed rows
    rows = _rows(tmp_path, train_users=())
    rows.add(_block([0, 1], [0, 1]))
    rows.finish()

    def bump(X):
        X[:, 0] += 1.0
        return X[:, 0].copy()

    first = rows.lists(np.zeros(0), bump, k=5)
    second = rows.lists(np.zeros(0), lambda X: X[:, 0].copy(), k=5)
    np.testing.assert_array_equal(second["score"], first["score"] - 1.0)
    rows.close()


# ---- collect_val_rows ---------------------------------------------------------------------------------


def test_collect_calls_each_on_every_block_before_adding_it(tmp_path):
    # catches `each` skipped (candidate recall not counted), called when None, or the truth / training users /
    # maps not handed to ValRows
    blocks = [_block([0, 1], [1, 2]), _block([2], [0])]
    seen = []
    rows = collect_val_rows(blocks, TRUTH, np.array([0, 2]), MAPS, each=lambda b: seen.append(len(b)))
    assert seen == [2, 1]
    assert rows.labels.tolist() == [1, 1] and rows.rest_rows == 1
    np.testing.assert_array_equal(_spilled(rows)[0], [[1, 2]])
    assert rows.lists(np.zeros(2), lambda X: X[:, 0], k=1)["user_id"].tolist() == [10, 20, 30]  # maps given
    np.testing.assert_array_equal(rows.X, [[1.5, -1.25], [20.5, -20.25]])
    rows.close()
    plain = collect_val_rows(iter(blocks), TRUTH, np.array([1]), MAPS)
    assert plain.labels.tolist() == [1] and plain.rest_rows == 2
    plain.close()
