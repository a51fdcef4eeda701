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
    frame = pd.DataFrame({"user_id": [1] * 10, "item_id": list(range(10)), "timestamp": list(range(10))})
    train, val, test = split(frame, SplitParams(method="temporal", test_fraction=0.2, val_fraction=0.2))
    assert train.timestamp.max() < frame.timestamp.max()
    assert test.empty or test.timestamp.min() > train.timestamp.max()


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


def test_empty_table_is_a_user_error():
    with pytest.raises(RecforgeError):
        split(pd.DataFrame(columns=["user_id", "item_id", "timestamp"]), SplitParams())
