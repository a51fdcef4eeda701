from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.errors import RecforgeError
from recforge.params import SplitParams
from recforge.split import split


def _events() -> pd.DataFrame:
    # user 1: 4 events, two at the same time (item order breaks the tie); user 2: 2 events; user 3: 1 event
    return pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2, 2, 3],
            "item_id": [30, 10, 20, 40, 5, 6, 7],
            "timestamp": [100, 50, 300, 300, 10, 20, 1],
        }
    )


def test_leave_last_out_orders_by_time_then_item():
    train, val, test = split(_events(), SplitParams())
    assert test[test.user_id == 1].item_id.tolist() == [40]
    assert val[val.user_id == 1].item_id.tolist() == [20]
    assert sorted(train[train.user_id == 1].item_id) == [10, 30]
    # two events: test only; one event: train only
    assert test[test.user_id == 2].item_id.tolist() == [6] and 2 not in set(val.user_id)
    assert 3 not in set(test.user_id) and train[train.user_id == 3].item_id.tolist() == [7]


def test_leave_last_out_partitions_every_event():
    train, val, test = split(_events(), SplitParams())
    assert len(train) + len(val) + len(test) == len(_events())


def test_temporal_cut_is_global():
    # 40 events at t=0..39 over 4 users and 5 items (every user and item appears before the cuts),
    # plus one event of a never-trained item at the very end
    frame = pd.DataFrame({"user_id": [t % 4 for t in range(40)], "item_id": [t % 5 for t in range(40)]})
    frame["timestamp"] = range(40)
    frame = pd.concat([frame, pd.DataFrame({"user_id": [0], "item_id": [99], "timestamp": [40]})], ignore_index=True)
    train, val, test = split(frame, SplitParams(method="temporal", test_fraction=0.25, val_fraction=0.25))
    # the cuts are the 50% and 75% quantiles of all 41 times (20.0 and 30.0), one for every user
    assert sorted(train.timestamp) == list(range(20))
    assert sorted(val.timestamp) == list(range(20, 30))
    assert sorted(test.timestamp) == list(range(30, 40)), "item 99 was never trained: not scorable"
    assert set(val.user_id) == set(test.user_id) == set(range(4))


def test_random_split_is_deterministic_and_keeps_first_event_in_train():
    frame = pd.DataFrame(
        {
            "user_id": [u for u in range(20) for _ in range(10)],
            "item_id": list(range(200)),
            "timestamp": list(range(200)),
        }
    )
    params = SplitParams(method="random", seed=3)
    first = split(frame, params)
    second = split(frame, params)
    for a, b in zip(first, second):
        pd.testing.assert_frame_equal(a, b)
    firsts = frame.groupby("user_id").head(1)
    assert set(firsts.item_id) <= set(first[0].item_id)
    # every event in exactly one part (items are unique here, so item ids identify events)
    train, val, test = (set(part.item_id) for part in first)
    assert not (train & val or train & test or val & test)
    assert len(train) + len(val) + len(test) == len(frame)
    # the default fractions (0.1 + 0.1), drawn per event: 20 users x 9 eligible events each
    assert 8 <= len(val) <= 32 and 8 <= len(test) <= 32, (len(val), len(test))
    other = split(frame, SplitParams(method="random", seed=4))
    assert set(other[2].item_id) != test, "the seed decides the draw"


def test_empty_table_is_a_user_error():
    with pytest.raises(RecforgeError):
        split(pd.DataFrame(columns=["user_id", "item_id", "timestamp"]), SplitParams())


# ---- mutation-found gaps: each test names the wrong behaviour it catches ------------------------------------


def test_three_events_give_one_validation_event():
    # catches `sizes >= 3` turned into `> 3` / `>= 4`: a user with exactly 3 events must lose one to validation
    frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    train, val, test = split(frame, SplitParams())
    assert (train.item_id.tolist(), val.item_id.tolist(), test.item_id.tolist()) == ([1], [2], [3])


@pytest.mark.parametrize("method", ["leave-last-out", "temporal", "random"])
def test_parts_keep_the_input_columns_and_a_fresh_index(method):
    # catches reset_index(drop=False): an extra 'index' column would reach the split files and every model
    frame = pd.DataFrame(
        {"user_id": [u for u in range(6) for _ in range(6)], "item_id": [i % 9 for i in range(36)]},
        index=range(100, 136),
    )
    frame["timestamp"] = range(36)
    for part in split(frame, SplitParams(method=method, seed=1)):
        assert list(part.columns) == ["user_id", "item_id", "timestamp"]
        assert part.index.equals(pd.RangeIndex(len(part)))


def test_empty_table_error_says_why():
    # catches the message dropped or garbled: the user must learn the table was empty
    with pytest.raises(RecforgeError, match=r"^cannot split an empty interactions table$"):
        split(pd.DataFrame(columns=["user_id", "item_id", "timestamp"]), SplitParams())


def test_temporal_validation_needs_both_user_and_item_known():
    # catches `&` turned into `|` in the known-user/known-item filter of validation: an event of a known
    # user on a never-trained item (or of a new user on a known item) cannot be scored, so it is dropped
    train_part = pd.DataFrame({"user_id": [0, 1, 0, 1], "item_id": [0, 1, 1, 0], "timestamp": [0, 1, 2, 3]})
    val_part = pd.DataFrame({"user_id": [0, 9, 1], "item_id": [99, 0, 1], "timestamp": [4, 5, 6]})
    test_part = pd.DataFrame({"user_id": [0, 9, 1], "item_id": [98, 1, 0], "timestamp": [7, 8, 9]})
    frame = pd.concat([train_part, val_part, test_part], ignore_index=True)
    train, val, test = split(frame, SplitParams(method="temporal", test_fraction=0.3, val_fraction=0.3))
    assert sorted(train.timestamp) == [0, 1, 2, 3]
    assert val[["user_id", "item_id"]].values.tolist() == [[1, 1]]
    assert test[["user_id", "item_id"]].values.tolist() == [[1, 0]]


def test_random_split_intervals_are_half_open(monkeypatch):
    # catches `<` / `>=` swapped for `<=` / `>` at the fraction boundaries: a draw of exactly test_fraction
    # belongs to validation, exactly test_fraction + val_fraction to train ([0, t) test, [t, t + v) val)
    class Draws:
        def __init__(self, seed):
            pass

        def random(self, n):
            return np.array([0.0, 0.25, 0.5, 0.75, 0.2499, 0.7499])[:n]

    monkeypatch.setattr(np.random, "default_rng", Draws)
    frame = pd.DataFrame({"user_id": [1] * 6, "item_id": range(6), "timestamp": range(6)})
    train, val, test = split(frame, SplitParams(method="random", test_fraction=0.25, val_fraction=0.5))
    # event 0 is the user's first: always train
    assert sorted(train.item_id) == [0, 3]
    assert sorted(val.item_id) == [1, 2, 5]
    assert sorted(test.item_id) == [4]
