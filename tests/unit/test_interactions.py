"""recforge.interactions: dense ids and the event arrays every model trains on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recforge.interactions import IdMaps, Interactions, csr_from_arrays, csr_to_arrays


@pytest.fixture
def tables():
    items = pd.DataFrame({"item_id": ["c", "a", "b", "z"]})  # item order is the items table's, 'z' has no events
    events = pd.DataFrame(
        {
            "user_id": [30, 10, 10, 30, 10, 20],
            "item_id": ["a", "b", "a", "c", "b", "c"],
            "timestamp": [5, 9, 9, 1, 3, 7],
            "rating": [1.0, 2.0, 3.0, 4.0, 5.0, 2.5],
        }
    )
    return events, items


def test_maps_sort_users_and_keep_the_items_table_order(tables):
    # catches users left in event order (dense ids would differ between runs) and items re-sorted
    # (item i must be row i of the items table, including items without events)
    events, items = tables
    maps = IdMaps.build(events, items)
    assert maps.user_ids.tolist() == [10, 20, 30] and maps.user_ids.name == "user_id"
    assert maps.item_ids.tolist() == ["c", "a", "b", "z"] and maps.item_ids.name == "item_id"
    assert maps.user_index([30, 99, 10]).tolist() == [2, -1, 0]
    assert maps.item_index(["z", "q", "c"]).tolist() == [3, -1, 0]


def test_events_sorted_by_user_time_then_item_with_their_ratings(tables):
    # catches a wrong sort key order (the sequence models read time order per user), ratings not moved with
    # their events, and the dtypes the models index with
    events, items = tables
    maps = IdMaps.build(events, items)
    h = Interactions.from_frame(events, maps)
    assert h.user_ids.tolist() == [0, 0, 0, 1, 2, 2]
    assert h.timestamps.tolist() == [3, 9, 9, 7, 1, 5]
    assert h.item_ids.tolist() == [2, 1, 2, 0, 0, 1]  # user 10 at t=9: item a (1) before b (2)
    assert h.ratings.tolist() == [5.0, 3.0, 2.0, 2.5, 4.0, 1.0]
    assert (h.n_users, h.n_items, len(h)) == (3, 4, 6)
    assert h.user_ids.dtype == np.int32 and h.item_ids.dtype == np.int32 and h.timestamps.dtype == np.int64
    assert h.ratings.dtype == np.float32


def test_events_without_ratings(tables):
    # catches a missing rating column crashing or inventing ratings
    events, items = tables
    h = Interactions.from_frame(events.drop(columns="rating"), IdMaps.build(events, items))
    assert h.ratings is None


def test_unknown_ids_are_refused(tables):
    # catches events of an unmapped user or item silently indexed as -1 (the last row of every matrix)
    events, items = tables
    maps = IdMaps.build(events, items)
    for column, value in (("user_id", 99), ("item_id", "q")):
        bad = events.copy()
        bad.loc[0, column] = value
        with pytest.raises(ValueError, match="not in the id maps"):
            Interactions.from_frame(bad, maps)


def test_concat_resorts_and_keeps_ratings_only_when_both_have_them(tables):
    # catches train + validation left unsorted (sequence order), and ratings invented for one side
    events, items = tables
    maps = IdMaps.build(events, items)
    train = Interactions.from_frame(events.iloc[:3], maps)
    val = Interactions.from_frame(events.iloc[3:], maps)
    both = train.concat(val)
    whole = Interactions.from_frame(events, maps)
    for name in ("user_ids", "item_ids", "timestamps", "ratings"):
        assert getattr(both, name).tolist() == getattr(whole, name).tolist(), name
    assert (both.n_users, both.n_items) == (3, 4)
    unrated = Interactions.from_frame(events.iloc[3:].drop(columns="rating"), maps)
    assert train.concat(unrated).ratings is None and unrated.concat(train).ratings is None


def test_csr_is_binary_per_user_and_item(tables):
    # catches repeated events counted (user 10 has item b twice) and a wrong shape
    events, items = tables
    h = Interactions.from_frame(events, IdMaps.build(events, items))
    assert h.csr.shape == (3, 4)
    assert h.csr.toarray().tolist() == [[0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]


def test_bounds_sequences_counts_and_last_time(tables):
    # catches off-by-one offsets (a user's events mixed with the next user's), sequences out of time order,
    # counts that drop items without events, and the last timestamp of an empty set
    events, items = tables
    maps = IdMaps(user_ids=pd.Index([10, 20, 30, 40]), item_ids=pd.Index(items["item_id"]))
    h = Interactions.from_frame(events, maps)
    assert h.bounds.tolist() == [0, 3, 4, 6, 6]
    assert [s.tolist() for s in h.sequences] == [[2, 1, 2], [0], [0, 1], []]
    assert h.item_counts.tolist() == [2.0, 2.0, 2.0, 0.0]
    assert h.last_timestamp() == 9
    empty = Interactions.from_frame(events.iloc[:0], maps)
    assert empty.last_timestamp() == 0 and empty.bounds.tolist() == [0, 0, 0, 0, 0]


def test_csr_round_trips_through_plain_arrays():
    # catches a lost shape (trailing empty rows/columns) or swapped parts when saved without pickle
    matrix = sp.csr_matrix(np.array([[0, 2.5, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]))
    arrays = csr_to_arrays(matrix.tocoo(), "m")
    assert set(arrays) == {"m_data", "m_indices", "m_indptr", "m_shape"}
    back = csr_from_arrays(arrays, "m")
    assert back.shape == (4, 3) and (back != matrix).nnz == 0


def test_unknown_id_error_message():
    # catches the message garbled: it is what a user sees when a split and its id maps disagree
    events = pd.DataFrame({"user_id": [1], "item_id": ["x"], "timestamp": [1]})
    maps = IdMaps(user_ids=pd.Index([2]), item_ids=pd.Index(["x"]))
    with pytest.raises(ValueError, match=r"^interactions reference ids that are not in the id maps$"):
        Interactions.from_frame(events, maps)


def test_narrow_timestamps_are_widened_to_int64():
    # catches int32 timestamps kept (a parquet column may be int32): window keys multiply them and overflow
    events = pd.DataFrame({"user_id": [1], "item_id": ["x"], "timestamp": np.array([5], dtype=np.int32)})
    h = Interactions.from_frame(events, IdMaps(user_ids=pd.Index([1]), item_ids=pd.Index(["x"])))
    assert h.timestamps.dtype == np.int64


def test_lookup_at_the_int64_bounds():
    # catches the int64 range checks made strict: the largest and smallest int64 ids are valid ids, as
    # integers and in their decimal spelling
    from recforge.interactions import parse_int_id

    top, bottom = 2**63 - 1, -(2**63)
    maps = IdMaps(user_ids=pd.Index(np.array([bottom, 0, top], dtype=np.int64)), item_ids=pd.Index(["a"]))
    assert parse_int_id(str(top)) == top and parse_int_id(str(bottom)) == bottom
    assert maps.lookup_user(top) == 2 and maps.lookup_user(str(top)) == 2
    assert maps.lookup_user(bottom) == 0 and maps.lookup_user(str(bottom)) == 0


def test_lookup_of_integers_beyond_int64_uses_their_decimal_string():
    # catches the decimal spelling of a huge integer lost (a string id of 22 digits is a valid id)
    maps = IdMaps(user_ids=pd.Index(["1180591620717411303424", "x"]), item_ids=pd.Index(["a"]))
    assert maps.lookup_user(2**70) == 0


def test_lookup_of_integral_floats_matches_string_ids():
    # catches the float -> decimal-string reading dropped or limited (a row read from a mixed frame turns
    # ids into floats: 7.0 and 1000.0 must still find the string ids "7" and "1000")
    maps = IdMaps(user_ids=pd.Index(["7", "1000"]), item_ids=pd.Index(["a"]))
    assert maps.lookup_user(7.0) == 0 and maps.lookup_user(np.float64(1000.0)) == 1


def test_lookup_of_floats_beyond_int64_is_not_converted():
    # catches the float guard loosened (> instead of >=, or a larger bound): 2.0**63 is outside int64, so
    # it must not be read as the integer 9223372036854775808 and match that string id
    maps = IdMaps(user_ids=pd.Index(["9223372036854775808"]), item_ids=pd.Index(["a"]))
    assert maps.lookup_user(2.0**63) == -1
