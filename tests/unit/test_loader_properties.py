"""Property tests for every loader and for id parsing (issue 11).

Whatever a file holds (CSV text, JSON lines, raw bytes, a truncated gzip),
``load`` then ``prepare`` give canonical tables or raise ``RecforgeError``;
any other exception fails the test. Tables that pass the gate's id-type check
can be written to Parquet. Each property runs a bounded number of examples
(``RECFORGE_PROPERTY_EXAMPLES``, default 200) with a fixed seed (``RECFORGE_PROPERTY_SEED``), so the file
runs in well under a minute on two cores; ``pytest -s`` prints the examples
run per loader and how they ended.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import string
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from recforge.data.loaders import ITEM_COLUMNS, Tables, load, prepare
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps, parse_int_id
from recforge.params import DataParams
from recforge.validation import id_type_frame

EXAMPLES = int(os.environ.get("RECFORGE_PROPERTY_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written under the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SEED = int(os.environ.get("RECFORGE_PROPERTY_SEED", "20261129"))
OUTCOMES: dict[str, Counter] = {}


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    lines = [
        f"{name}: {sum(counter.values())} examples ({', '.join(f'{k} {v}' for k, v in sorted(counter.items()))})"
        for name, counter in sorted(OUTCOMES.items())
    ]
    print("\nloader property examples:\n  " + "\n  ".join(lines))
    target = os.environ.get("RECFORGE_PROPERTY_REPORT")
    if target:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in OUTCOMES.items()}, indent=1))


def check_load(name: str, params: DataParams) -> None:
    """The property: canonical tables or a one-line RecforgeError; never another exception."""
    counter = OUTCOMES.setdefault(name, Counter())
    try:
        tables = load(params)
        prepared = prepare(tables, params)
    except RecforgeError as error:
        assert "\n" not in str(error), str(error)
        counter["RecforgeError"] += 1
        return
    assert_canonical(tables)
    assert_canonical(prepared)
    assert_parquet_when_ids_pass(tables)
    counter["loaded"] += 1


def assert_canonical(tables: Tables) -> None:
    inter = tables.interactions
    assert {"user_id", "item_id", "timestamp"} <= set(inter.columns)
    assert str(inter["timestamp"].dtype) in ("int64", "Int64"), inter["timestamp"].dtype
    if "rating" in inter:
        assert pd.api.types.is_numeric_dtype(inter["rating"]) and not pd.api.types.is_bool_dtype(inter["rating"])
    assert list(tables.items.columns) == ITEM_COLUMNS
    for column in ("title", "text", "genres"):
        assert tables.items[column].map(lambda v: isinstance(v, str)).all(), column


def assert_parquet_when_ids_pass(tables: Tables) -> None:
    """What the gate's id check lets through, Parquet can store (the 10**30 crash)."""
    for frame in (tables.interactions, tables.items):
        kinds, expected = id_type_frame(frame, ["user_id", "item_id"])
        if all(kinds[c].dropna().eq(kind).all() for c, kind in expected):
            frame[[c for c, _ in expected]].to_parquet(io.BytesIO(), index=False)


def _write(directory: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        (directory / name).write_bytes(data)


def run_loader(name: str, data_format: str, files: dict[str, bytes | str], **extra) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, files)
        check_load(name, DataParams(format=data_format, path=str(root), kcore=extra.pop("kcore", 0), **extra))


# ---- strategies -------------------------------------------------------------------------------------------

INT64 = 2**63
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=2_000_000_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64, 10**30, 1e19, -1e300]),
)
cell_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=string.digits + "-+.eE_ ", max_size=12),
    st.sampled_from(
        ["", "nan", "NaN", "inf", "-inf", "abc", "١", "2020-01-01", "2020-13-45", "1e400", "0x10", "true", "None"]
    ),
    st.sampled_from(["2021-06-01T12:00:00Z", "01/02/2020", "1970-01-01 00:00:00+05:00", "3000-01-01", "9999-12-31"]),
)
csv_cell = st.one_of(numbers.map(str), cell_text)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy = csv_cell, weight: int = 3) -> st.SearchStrategy:
    """``weight`` parts plausible values, one part anything: enough files load to exercise conversion and filtering."""
    return st.integers(min_value=0, max_value=weight).flatmap(lambda pick: bad if pick == 0 else good)


ID_CELL = mostly(st.one_of(st.integers(1, 6).map(str), st.sampled_from(["u1", "u2", "i1", "i2"])), weight=12)
CELLS = {
    "user_id": ID_CELL,
    "userId": ID_CELL,
    "item_id": ID_CELL,
    "movieId": ID_CELL,
    "timestamp": mostly(st.integers(0, 2_000_000_000).map(str), weight=12),
    "rating": mostly(st.sampled_from(["1", "2.5", "4.0", "5"]), weight=12),
    "tag": mostly(st.text(max_size=8)),
    "title": mostly(st.text(max_size=12)),
    "flag": mostly(st.sampled_from(["0", "1"]), weight=12),
}


def typed_cells(head: list[str]) -> st.SearchStrategy[list[str]]:
    return st.tuples(*(CELLS.get(column, csv_cell) for column in head)).map(list)


def csv_text(columns: list[str], max_rows: int = 8) -> st.SearchStrategy[str]:
    """A CSV with these columns (sometimes one dropped or renamed) and cells that quote or break the format."""
    header = mostly(
        st.just(columns),
        st.one_of(
            st.permutations(columns),
            st.lists(st.sampled_from([*columns, "x", ""]), min_size=1, max_size=len(columns) + 1),
        ),
    )

    def build(head_rows):
        head, rows = head_rows
        out = io.StringIO()
        if rows:
            pd.DataFrame(rows).to_csv(out, index=False, header=False)
        return ",".join(head) + "\n" + out.getvalue()

    return header.flatmap(
        lambda head: st.tuples(
            st.just(head),
            st.lists(typed_cells(head), max_size=max_rows),
        )
    ).map(build)


def broken(text_strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | bytes]:
    """The text as it is, or mangled: cut short, a stray quote, non-UTF-8 bytes, a NUL."""
    return mostly(
        text_strategy,
        st.one_of(
            st.tuples(text_strategy, st.integers(min_value=0, max_value=200)).map(lambda t: t[0][: t[1]]),
            text_strategy.map(lambda t: t.replace(",", '"', 1)),
            text_strategy.map(lambda t: t.encode("utf-8") + b"\xe9\xff\n1,2,3\n"),
            text_strategy.map(lambda t: t.replace("\n", "\x00\n", 1)),
            st.binary(max_size=300),
        ),
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=10),
    st.sampled_from(["", "2020-01-01", "١", "NaN", "1400000000"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
REVIEW_KEYS = ["reviewerID", "asin", "overall", "unixReviewTime", "summary", "reviewText"]


def _dump(value) -> str:
    return json.dumps(value, allow_nan=True)


review_objects = st.fixed_dictionaries(
    {
        "reviewerID": mostly(st.sampled_from(["A1", "A2", "A3"]), json_values),
        "asin": mostly(st.sampled_from(["B1", "B2"]), json_values),
        "overall": mostly(st.sampled_from([1.0, 5.0, 3]), json_values),
        "unixReviewTime": mostly(st.integers(min_value=0, max_value=2_000_000_000), json_values),
    },
    optional={"summary": json_values, "reviewText": json_values, "extra": json_values},
)
json_line = mostly(
    review_objects.map(_dump),
    st.one_of(
        st.dictionaries(st.sampled_from(REVIEW_KEYS), json_values, max_size=6).map(_dump),
        json_values.map(_dump),  # a list, a number, null: not an object
        st.text(max_size=40),  # not JSON at all
        st.sampled_from(["", "   ", "{", '{"a": NaN}', '{"overall": Infinity}', "[" * 3000 + "]" * 3000]),
    ),
    weight=8,
)


def json_lines_file(lines=json_line) -> st.SearchStrategy[bytes]:
    text = st.lists(lines, max_size=8).map(lambda rows: "\n".join(rows) + "\n")
    return mostly(
        text.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.one_of(
            text.map(lambda t: t.encode("latin-1", "replace")),
            st.tuples(text, st.binary(min_size=1, max_size=8), st.integers(0, 400)).map(
                lambda t: t[0].encode("utf-8", "surrogatepass")[: t[2]] + t[1]
            ),
            st.binary(max_size=300),
        ),
    )


def gzipped(blob: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Gzip of the content, whole or cut anywhere (a truncated download), or bytes that only start like gzip."""
    return mostly(
        blob.map(gzip.compress),
        st.one_of(
            st.tuples(blob, st.floats(min_value=0.0, max_value=1.0)).map(
                lambda t: gzip.compress(t[0])[: int(len(gzip.compress(t[0])) * t[1])]
            ),
            st.binary(max_size=200).map(lambda b: b"\x1f\x8b" + b),
        ),
    )


# ---- the loaders --------------------------------------------------------------------------------------------


@seed(SEED)
@SETTINGS
@given(interactions=broken(csv_text(["user_id", "item_id", "timestamp", "rating"])))
def test_table_csv(interactions):
    run_loader("table (interactions.csv)", "table", {"interactions.csv": interactions})


@seed(SEED)
@SETTINGS
@given(
    interactions=csv_text(["user_id", "item_id", "timestamp", "rating"], max_rows=6),
    items=broken(csv_text(["item_id", "title", "text", "genres"], max_rows=6)),
)
def test_table_csv_with_items(interactions, items):
    run_loader("table (+ items.csv)", "table", {"interactions.csv": interactions, "items.csv": items})


parquet_columns = st.one_of(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=3, max_size=3),
    st.lists(st.text(max_size=5), min_size=3, max_size=3),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=3, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.just([pd.Timestamp("2020-01-01"), pd.NaT, pd.Timestamp("2262-01-01")]),
)


@seed(SEED)
@SETTINGS
@given(
    columns=st.dictionaries(
        st.sampled_from(["user_id", "item_id", "timestamp", "rating", "x"]), parquet_columns, min_size=1
    ),
    mangle=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
)
def test_table_parquet(columns, mangle):
    out = io.BytesIO()
    pd.DataFrame(columns).to_parquet(out, index=False)
    blob = out.getvalue() if mangle is None else out.getvalue()[:mangle]
    run_loader("table (interactions.parquet)", "table", {"interactions.parquet": blob})


@seed(SEED)
@SETTINGS
@given(
    ratings=broken(csv_text(["userId", "movieId", "rating", "timestamp"])),
    movies=csv_text(["movieId", "title", "genres"], max_rows=5),
    tags=st.one_of(st.none(), broken(csv_text(["userId", "movieId", "tag", "timestamp"], max_rows=5))),
)
def test_movielens_latest(ratings, movies, tags):
    files = {"ratings.csv": ratings, "movies.csv": movies}
    if tags is not None:
        files["tags.csv"] = tags
    run_loader("movielens-latest", "movielens-latest", files)


def separated(sep: str, columns: list[str], max_rows: int = 8) -> st.SearchStrategy[str]:
    """Headerless lines of these columns; now and then a field too many or too few."""
    exact = typed_cells(columns)
    other = st.lists(csv_cell, min_size=max(1, len(columns) - 1), max_size=len(columns) + 1)
    row = mostly(exact, other).map(lambda cells: sep.join(c.replace("\n", " ").replace(sep, " ") for c in cells))
    return st.lists(row, max_size=max_rows).map(lambda rows: "\n".join(rows) + "\n")


def latin1(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return mostly(text.map(lambda t: t.encode("latin-1", "replace")), st.binary(max_size=200))


@seed(SEED)
@SETTINGS
@given(
    ratings=latin1(separated("::", ["user_id", "item_id", "rating", "timestamp"])),
    movies=latin1(separated("::", ["item_id", "title", "genres"], max_rows=5)),
)
def test_movielens_1m(ratings, movies):
    run_loader("movielens-1m", "movielens-1m", {"ratings.dat": ratings, "movies.dat": movies})


@seed(SEED)
@SETTINGS
@given(
    data=mostly(
        separated("\t", ["user_id", "item_id", "rating", "timestamp"]).map(
            lambda t: t.encode("utf-8", "surrogatepass")
        ),
        st.binary(max_size=200),
    ),
    genre=latin1(separated("|", ["title", "flag"], max_rows=4)),
    item=latin1(separated("|", ["item_id", "title", "date", "video", "url", "flag", "flag", "flag"], max_rows=4)),
)
def test_movielens_100k(data, genre, item):
    run_loader("movielens-100k", "movielens-100k", {"u.data": data, "u.genre": genre, "u.item": item})


@seed(SEED)
@SETTINGS
@given(reviews=json_lines_file())
def test_amazon_reviews_json(reviews):
    run_loader("amazon-reviews (reviews.json)", "amazon-reviews", {"reviews.json": reviews})


@seed(SEED)
@SETTINGS
@given(reviews=gzipped(json_lines_file()))
def test_amazon_reviews_gzip(reviews):
    run_loader("amazon-reviews (reviews.json.gz)", "amazon-reviews", {"reviews.json.gz": reviews})


meta_line = st.one_of(
    st.fixed_dictionaries(
        {"asin": mostly(st.sampled_from(["B1", "B2"]), json_values)},
        optional={"title": json_values, "categories": json_values, "description": json_values},
    ).map(_dump),
    json_line,
)


@seed(SEED)
@SETTINGS
@given(
    reviews=st.lists(review_objects.map(_dump), min_size=1, max_size=6).map(lambda r: "\n".join(r)),
    meta=json_lines_file(meta_line),
)
def test_amazon_reviews_with_metadata(reviews, meta):
    run_loader("amazon-reviews (+ meta.json)", "amazon-reviews", {"reviews.json": reviews, "meta.json": meta})


# ---- id parsing -------------------------------------------------------------------------------------------

MAPS = IdMaps(
    user_ids=pd.Index(np.array([0, 1, 7, 10, 123, -5, 2**63 - 1], dtype=np.int64), name="user_id"),
    item_ids=pd.Index(np.array(["a", "1", "007", "١", " 2"], dtype=object), name="item_id"),
)
raw_ids = st.one_of(
    st.sampled_from(["0", "1", "7", "10", "123", "-5", "9223372036854775807", "a", "007", "١", " 2", "01", "+7"]),
    st.sampled_from([0, 1, 7, 10, -5, 2**63 - 1, 2**63, 1.0, 7.5, True]),
    st.text(max_size=25),
    st.text(alphabet="0123456789-+ _١٢３¹.", max_size=25),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@seed(SEED)
@SETTINGS
@given(raw=raw_ids)
def test_id_lookup(raw):
    """A lookup never raises; a string finds an integer user only when it is that integer's ASCII decimal spelling;
    a string item id is found only by itself (or an integer whose decimal spelling it is)."""
    OUTCOMES.setdefault("id lookup", Counter())
    user, item = MAPS.lookup_user(raw), MAPS.lookup_item(raw)
    assert -1 <= user < len(MAPS.user_ids) and -1 <= item < len(MAPS.item_ids)
    if isinstance(raw, str) and user >= 0:
        assert raw == str(int(MAPS.user_ids[user])) and raw.isascii()
    if item >= 0:  # an integral float (a row read from a mixed frame) counts as its integer
        spelling = str(int(raw)) if isinstance(raw, float) else str(raw)
        assert spelling == MAPS.item_ids[item] and not isinstance(raw, bool)
    OUTCOMES["id lookup"]["found" if max(user, item) >= 0 else "unknown"] += 1


@seed(SEED)
@SETTINGS
@given(raw=st.one_of(raw_ids.filter(lambda r: isinstance(r, str)), st.integers(-(2**64), 2**64).map(str)))
def test_parse_int_id(raw):
    OUTCOMES.setdefault("parse_int_id", Counter())
    value = parse_int_id(raw)
    if value is None:
        assert not (
            raw.isascii() and raw.lstrip("-").isdigit() and str(int(raw)) == raw and -(2**63) <= int(raw) < 2**63
        )
    else:
        assert str(value) == raw and -(2**63) <= value < 2**63
    OUTCOMES["parse_int_id"]["int" if value is not None else "None"] += 1
