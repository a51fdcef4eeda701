from __future__ import annotations

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
