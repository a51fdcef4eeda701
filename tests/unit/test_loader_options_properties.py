"""The loaders' options combined (issue 24): ``data.min_rating`` x ``data.duplicates`` x ``data.kcore``.

Hypothesis draws small raw interaction tables (a few users and items, so the same (user, item) pair comes back
at equal and at different timestamps with other ratings; ratings on both sides of each threshold; users and
items with one or two events, which a k-core removes, and removals that cascade) and writes them as a CSV, with
an items file holding items nobody interacted with in some examples. The table loader reads the file once
(``load``), then ``prepare`` runs with every combination of the three options, and each canonical output is
compared with ``reference``: a brute-force prepare over plain Python rows, written from what the options are
documented to do, in the documented order (``prepare``'s docstring: "the rating threshold, duplicate policy and
iterative k-core filter"):

1. ``min_rating``: keep ratings >= the threshold;
2. ``duplicates``: per (user, item), ``first`` keeps the earliest event and ``last`` the latest (equal
   timestamps: the one earlier / later in the file), ``keep`` keeps every event;
3. ``kcore`` (None: 5 for real data, this ``table`` format): drop every event of a user or item with fewer
   than k events and repeat until nothing changes (k <= 1: nothing to drop, and the catalogue stays whole;
   k > 1: the catalogue is cut to the items left);
4. events ordered by (user, timestamp, item), file order among equal keys; items by id.

``RECFORGE_PROPERTY_EXAMPLES`` (default 60 tables, 60 combinations each) and ``RECFORGE_PROPERTY_SEED`` as in
test_loader_properties.py; about 10-15 s on 2 shared cores.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from recforge.data.loaders import load, prepare
from recforge.params import DataParams

EXAMPLES = int(os.environ.get("RECFORGE_PROPERTY_EXAMPLES", "60"))
SEED = int(os.environ.get("RECFORGE_PROPERTY_SEED", "20261207"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written under the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MIN_RATINGS = [None, 2.5, 3.0, 4.0]
DUPLICATES = ["last", "first", "keep"]
KCORES = [None, 0, 1, 2, 3]
RATINGS = [1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0]  # each threshold is met exactly by one of them

Row = tuple  # (user_id, item_id, rating, timestamp)


def reference(rows: list[Row], catalogue: list, min_rating, duplicates: str, kcore) -> tuple[list[Row], list]:
    """The canonical (interactions, item ids) the options are documented to give, by brute force."""
    # 1. the rating threshold
    events = [(position, row) for position, row in enumerate(rows) if min_rating is None or row[2] >= min_rating]
    # 2. the duplicate policy, per (user, item): earliest / latest timestamp, the file order breaking ties
    if duplicates != "keep":
        chosen: dict[tuple, tuple[int, Row]] = {}
        for position, row in events:
            key, best = (row[0], row[1]), chosen.get((row[0], row[1]))
            earlier = best is not None and row[3] < best[1][3]
            later_or_same = best is not None and row[3] >= best[1][3]  # a later line at the same time wins
            if best is None or (earlier if duplicates == "first" else later_or_same):
                chosen[key] = (position, row)
        events = sorted(chosen.values())
    # 3. the iterative k-core, until stable
    k = 5 if kcore is None else kcore
    if k > 1:
        while True:
            users = {}
            items = {}
            for _, row in events:
                users[row[0]] = users.get(row[0], 0) + 1
                items[row[1]] = items.get(row[1], 0) + 1
            kept = [(p, row) for p, row in events if users[row[0]] >= k and items[row[1]] >= k]
            if len(kept) == len(events):
                break
            events = kept
    # 4. the canonical order
    events.sort(key=lambda event: (event[1][0], event[1][3], event[1][1], event[0]))
    interactions = [row for _, row in events]
    item_ids = sorted({row[1] for row in interactions} if k > 1 else set(catalogue))
    return interactions, item_ids


@st.composite
def raw_tables(draw) -> tuple[list[Row], list]:
    """A small raw table: 1-5 users, 1-5 items, up to 30 events on few timestamps, plus catalogue-only items."""
    n_users = draw(st.integers(1, 5))
    n_items = draw(st.integers(1, 5))
    strings = draw(st.booleans())  # ids as text (u3, i2) or as integers
    user = st.integers(0, n_users - 1).map(lambda u: f"u{u}" if strings else u)
    item = st.integers(0, n_items - 1).map(lambda i: f"i{i}" if strings else 10 + i)
    timestamp = st.integers(0, 6).map(lambda t: 1_600_000_000 + 3600 * t)  # few values: equal times recur
    row = st.tuples(user, item, st.sampled_from(RATINGS), timestamp)
    rows = draw(st.lists(row, min_size=1, max_size=30))
    # repeat some events of the same pair at the same or another time with another rating
    for index in draw(st.lists(st.integers(0, len(rows) - 1), max_size=6)):
        u, i, _, t = rows[index]
        rows.insert(
            draw(st.integers(0, len(rows))),
            (u, i, draw(st.sampled_from(RATINGS)), draw(st.sampled_from([t, t + 60, t - 60]))),
        )
    extra = draw(st.integers(0, 2))  # items in the items file that no event names
    catalogue = None
    if draw(st.booleans()) or extra:
        used = list(dict.fromkeys(r[1] for r in rows))
        catalogue = used + [f"i{n_items + n}" if strings else 10 + n_items + n for n in range(extra)]
        catalogue = draw(st.permutations(catalogue))
    return rows, catalogue


def write(directory: Path, rows: list[Row], catalogue: list | None) -> None:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    frame.to_csv(directory / "interactions.csv", index=False)
    if catalogue is not None:
        titles = [f"title of {item}" for item in catalogue]
        pd.DataFrame({"item_id": catalogue, "title": titles}).to_csv(directory / "items.csv", index=False)


def plain(value):
    return value.item() if isinstance(value, np.generic) else value


# min_rating before duplicates: the later event (rating 2) is below 3, so `last` keeps the earlier one (5);
# deduplicating first would keep rating 2 and then drop the pair altogether
@example(tables=([(1, 10, 5.0, 100), (1, 10, 2.0, 200)], None))
# duplicates before the k-core: user 1's two events on item 10 are one under first/last (below a 2-core) and
# two under keep; then item 11 loses user 2's only partner and the k-core cascades
@example(tables=([(1, 10, 4.0, 100), (1, 10, 4.0, 100), (2, 10, 3.0, 5), (2, 11, 3.0, 6), (3, 11, 1.0, 7)], None))
# equal timestamps: `last` keeps the later line, `first` the earlier one (their ratings tell them apart)
@example(tables=([(1, 10, 1.0, 100), (1, 10, 5.0, 100), (1, 10, 3.0, 50)], [10, 12, 11]))
# one user, one time, two items listed in reverse: the canonical order puts item 10 first
@example(tables=([(1, 11, 3.0, 100), (1, 10, 3.0, 100), (2, 10, 3.0, 90)], None))
@seed(SEED)
@SETTINGS
@given(tables=raw_tables())
def test_every_option_combination_equals_the_reference_prepare(tables):
    """Catches the options applied in another order than documented (duplicates resolved before the rating
    threshold, the k-core before the duplicates), `first`/`last` ignoring the timestamp or the file order at
    equal timestamps, a rating equal to min_rating dropped, a single k-core pass or a k-core on users only or
    with `>`, the default k-core (5 for real data) lost, the catalogue cut without a k-core or kept whole with
    one, and events not in (user, timestamp, item) order or with a gapped index."""
    rows, catalogue = tables
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp), rows, catalogue)
        raw = load(DataParams(format="table", path=tmp))
    file_items = catalogue if catalogue is not None else list(dict.fromkeys(r[1] for r in rows))
    assert [plain(i) for i in raw.items["item_id"]] == file_items
    outcomes = set()
    for min_rating, duplicates, kcore in itertools.product(MIN_RATINGS, DUPLICATES, KCORES):
        params = DataParams(format="table", path="x", min_rating=min_rating, duplicates=duplicates, kcore=kcore)
        out = prepare(raw, params)
        expected_rows, expected_items = reference(rows, file_items, min_rating, duplicates, kcore)
        got = out.interactions
        case = (min_rating, duplicates, kcore)
        assert sorted(got.columns) == ["item_id", "rating", "timestamp", "user_id"], case
        got_rows = [
            (plain(u), plain(i), float(r), int(t))
            for u, i, r, t in zip(got["user_id"], got["item_id"], got["rating"], got["timestamp"], strict=True)
        ]
        assert got_rows == expected_rows, case
        assert got.index.tolist() == list(range(len(got))), case
        assert [plain(i) for i in out.items["item_id"]] == expected_items, case
        assert out.items.index.tolist() == list(range(len(out.items))), case
        assert set(got["item_id"]) <= set(out.items["item_id"]), case  # every event's item is in the catalogue
        outcomes.add(len(got_rows))
    assert outcomes  # 60 combinations compared
