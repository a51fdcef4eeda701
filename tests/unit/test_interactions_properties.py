"""Property tests: ``Interactions`` (from_frame, concat, csr, weights) against a brute-force reference (issue 24).

Two event tables (say train and validation) are drawn over a few users and items with timestamps from a
tiny range, so events of one user often share a timestamp within a table and across the two, and the same
(user, item, time) can appear more than once. The reference sorts the joined events with Python's stable
``sorted`` by (user index, time, item index): the order ``Interactions`` documents, ties between identical
keys keeping the first table's events first and each table's own order. Each property runs a bounded number
of examples (``RECFORGE_PROPERTY_EXAMPLES``, default 150) with a fixed seed.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from recforge.interactions import IdMaps, Interactions

EXAMPLES = int(os.environ.get("RECFORGE_PROPERTY_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written under the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEED = int(os.environ.get("RECFORGE_PROPERTY_SEED", "20261207"))


@st.composite
def two_tables(draw):
    """(items table, first events, second events): ids in any order, shared timestamps, repeated events."""
    item_ids = draw(st.lists(st.integers(0, 50), min_size=1, max_size=6, unique=True))  # table order, unsorted
    user_ids = draw(st.lists(st.sampled_from(["u3", "u10", "u2", "a", "b7"]), min_size=1, max_size=4, unique=True))
    times = st.integers(0, 3) | st.sampled_from([2**53 + 1, 2**62 + 3])  # ties, and values only int64 holds exactly

    def events(min_size: int) -> pd.DataFrame:
        rows = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(user_ids),
                    st.sampled_from(item_ids),
                    times,
                    st.sampled_from([0.5, 1.0, 3.0, 5.0]),
                ),
                min_size=min_size,
                max_size=12,
            )
        )
        return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).astype(
            {"timestamp": np.int64, "rating": np.float32, "item_id": np.int64}
        )

    items = pd.DataFrame({"item_id": item_ids, "title": [f"t{i}" for i in item_ids]})
    first = events(1)
    second = events(0)
    if draw(st.booleans()):  # force a cross-table tie: a second-table event at a first-table event's time
        at = draw(st.integers(0, len(first) - 1))
        tie = {
            "user_id": first["user_id"].iloc[at],
            "item_id": draw(st.sampled_from(item_ids)),
            "timestamp": first["timestamp"].iloc[at],
            "rating": 2.0,
        }
        second = pd.concat([second, pd.DataFrame([tie]).astype(first.dtypes.to_dict())], ignore_index=True)
    return items, first, second


def reference(events: list[tuple], maps: IdMaps) -> list[tuple]:
    """(user index, item index, time, rating, weight) sorted stably by user, time, item."""
    indexed = [
        (int(maps.user_index([u])[0]), int(maps.item_index([i])[0]), int(t), float(r), float(w))
        for u, i, t, r, w in events
    ]
    return sorted(indexed, key=lambda e: (e[0], e[2], e[1]))


def rows_of(frame: pd.DataFrame, weights=None) -> list[tuple]:
    weights = np.ones(len(frame)) if weights is None else weights
    return list(zip(frame["user_id"], frame["item_id"], frame["timestamp"], frame["rating"], weights))


def as_tuples(events: Interactions) -> list[tuple]:
    weights = events.weights if events.weights is not None else np.ones(len(events))
    ratings = events.ratings if events.ratings is not None else np.full(len(events), np.nan)
    return [
        (int(u), int(i), int(t), float(r), float(w))
        for u, i, t, r, w in zip(events.user_ids, events.item_ids, events.timestamps, ratings, weights)
    ]


@seed(SEED)
@SETTINGS
@given(tables=two_tables(), order=st.randoms(use_true_random=False))
def test_from_frame_and_concat_sort_like_the_reference_with_shared_timestamps(tables, order):
    # catches: concat sorting by (user, time) only or losing the item tie-break, a sort that is not stable for
    # identical keys (ratings swapped between repeated events), ratings or timestamps not moved with their
    # events, concat disagreeing with from_frame of the joined table, timestamps narrowed below int64
    items, first, second = tables
    maps = IdMaps.build(pd.concat([first, second]), items)
    a, b = Interactions.from_frame(first, maps), Interactions.from_frame(second, maps)
    assert as_tuples(a) == reference(rows_of(first), maps)
    joined = a.concat(b)
    expected = reference(rows_of(first) + rows_of(second), maps)
    assert as_tuples(joined) == expected
    assert as_tuples(Interactions.from_frame(pd.concat([first, second], ignore_index=True), maps)) == expected
    assert (joined.n_users, joined.n_items) == (len(maps.user_ids), len(items))
    assert joined.timestamps.dtype == np.int64
    # the rows' order within a table does not matter beyond identical keys: shuffled, the keys are the same
    shuffled = first.sample(frac=1.0, random_state=order.randint(0, 1000))
    keys = [e[:3] for e in as_tuples(Interactions.from_frame(shuffled, maps).concat(b))]
    assert keys == [e[:3] for e in expected]


@seed(SEED)
@SETTINGS
@given(tables=two_tables())
def test_csr_sequences_bounds_and_counts_of_the_joined_events(tables):
    # catches: csr counting repeats (not binary) or missing events of one table, sequences out of time order or
    # with same-time events out of item order, bounds off by one, counts from one table only, the last timestamp
    items, first, second = tables
    maps = IdMaps.build(pd.concat([first, second]), items)
    a, b = Interactions.from_frame(first, maps), Interactions.from_frame(second, maps)
    joined = a.concat(b)
    expected = reference(rows_of(first) + rows_of(second), maps)
    dense = np.zeros((joined.n_users, joined.n_items))
    for u, i, *_ in expected:
        dense[u, i] = 1.0
    assert joined.csr.toarray().tolist() == dense.tolist()
    assert ((a.csr + b.csr).toarray() > 0).tolist() == (dense > 0).tolist()
    assert [s.tolist() for s in joined.sequences] == [
        [i for u, i, *_ in expected if u == user] for user in range(joined.n_users)
    ]
    assert joined.bounds.tolist() == [sum(e[0] < user for e in expected) for user in range(joined.n_users + 1)]
    assert joined.item_counts.tolist() == [sum(e[1] == item for e in expected) for item in range(joined.n_items)]
    assert joined.last_timestamp() == max(e[2] for e in expected)


@seed(SEED)
@SETTINGS
@given(tables=two_tables(), data=st.data())
def test_weights_follow_their_events_through_concat_and_average_per_pair(tables, data):
    # catches: weights not re-sorted with the events, a table without weights given zeros (or dropping the
    # other table's weights), weighted_csr summing repeats instead of averaging them, ratings kept when only one
    # table has them
    items, first, second = tables
    maps = IdMaps.build(pd.concat([first, second]), items)
    positive = st.floats(0.125, 8.0, width=32)
    w_first = np.array(data.draw(st.lists(positive, min_size=len(first), max_size=len(first))), dtype=np.float32)
    a = Interactions.from_frame(first, maps)
    # from_frame sorts the events (checked above): give each sorted event the weight of its row in ``first``
    users, items_, times = maps.user_index(first["user_id"]), maps.item_index(first["item_id"]), first["timestamp"]
    order = sorted(range(len(first)), key=lambda r: (users[r], int(times.iloc[r]), items_[r]))
    a = a.with_weights(w_first[order])
    b = Interactions.from_frame(second, maps)
    joined = a.concat(b)
    expected = reference(rows_of(first, w_first) + rows_of(second), maps)
    assert as_tuples(joined) == [(u, i, t, r, pytest.approx(w)) for u, i, t, r, w in expected]
    pairs: dict[tuple[int, int], list[float]] = {}
    for u, i, _t, _r, w in expected:
        pairs.setdefault((u, i), []).append(w)
    weighted = joined.weighted_csr.toarray()
    assert weighted.dtype == np.float32
    assert {(int(u), int(i)) for u, i in zip(*np.nonzero(weighted))} == set(pairs)
    for (u, i), ws in pairs.items():
        assert weighted[u, i] == pytest.approx(np.mean(ws), rel=1e-5)
    assert b.with_weights(None).concat(b).weights is None  # no weights on either side: none invented
    unrated = Interactions.from_frame(second.drop(columns="rating"), maps)
    assert a.concat(unrated).ratings is None and unrated.concat(a).ratings is None
