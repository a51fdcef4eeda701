"""recforge.spans: span names, the span directory, reading a span as the configured loader names its columns,
`add-span`'s checks and atomic copy, the base data with spans appended, spans.json (fast; each test names the
wrong behaviour it catches). tests/e2e/test_spans.py runs the same through the CLI and ingest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from recforge import spans
from recforge.data.loaders import Tables
from recforge.errors import RecforgeError
from recforge.params import load_params
from tests.conftest import tmp_overrides

PARAMS = load_params(None, tmp_overrides("/nonexistent-root"))


def params_for(tmp_path: Path, held_out: int = 1, **data):
    """PARAMS with the spans under tmp_path/spans, the canonical tables under tmp_path/canonical."""
    section = PARAMS.data.model_copy(update={"spans": str(tmp_path / "spans"), "spans_held_out": held_out, **data})
    paths = PARAMS.paths.model_copy(update={"canonical_dir": str(tmp_path / "canonical")})
    return PARAMS.model_copy(update={"data": section, "paths": paths})


def write_csv(path: Path, rows: list[tuple], header: str = "user_id,item_id,timestamp,rating") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(",".join(map(str, row)) for row in rows)]) + "\n")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- names -----------------------------------------------------------------------------------------------

NAME_ERROR = "span name {!r}: use letters, digits, '.', '_' or '-' (at most 100, no '..'), ending in .csv or .parquet"


@pytest.mark.parametrize(
    "name", ["", "a.txt", ".a.csv", "a..csv", "a/b.csv", "x" * 101 + ".csv", "a b.csv", "a.csv.tmp", 5, None]
)
def test_check_span_name_refuses(name):
    # catches a name that would escape the directory (a '/' or '..'), a hidden name (staging files start with
    # '.'), another suffix, a name past 100 characters or not a string accepted, and the message losing the
    # rule the user must follow
    with pytest.raises(RecforgeError) as info:
        spans.check_span_name(name)
    assert str(info.value) == NAME_ERROR.format(name)


@pytest.mark.parametrize("name", ["2024-01.csv", "0003.parquet", "a_b.c-d.csv", "x" * 100 + ".csv", "A.csv"])
def test_check_span_name_accepts(name):
    # catches the names the docs suggest refused (dates, numbers, dots inside, 100 characters)
    assert spans.check_span_name(name) == name


# ---- the span directory ----------------------------------------------------------------------------------


def test_span_files_in_name_order_skipping_hidden_staging(tmp_path):
    # catches the spans not in name order (name order is time order), a missing directory not meaning no
    # spans, and a writer's hidden staging file taken for a span
    params = params_for(tmp_path)
    assert spans.span_dir(params) == tmp_path / "spans"
    assert spans.span_files(params) == []
    for name in ["0002.csv", "0010.parquet", "0001.csv", ".0003.csv.x.tmp"]:
        write_csv(tmp_path / "spans" / name, [(1, 2, 3, 4)])
    assert spans.span_files(params) == [tmp_path / "spans" / n for n in ["0001.csv", "0002.csv", "0010.parquet"]]


def test_span_files_refuses_what_is_not_a_span(tmp_path):
    # catches data.spans being a file, a badly named file, a link or a directory among the spans accepted,
    # and the messages not naming the path
    params = params_for(tmp_path)
    (tmp_path / "spans").write_text("")
    with pytest.raises(RecforgeError) as info:
        spans.span_files(params)
    assert str(info.value) == f"data.spans: {tmp_path / 'spans'} is not a directory"
    (tmp_path / "spans").unlink()
    write_csv(tmp_path / "spans" / "bad name.csv", [(1, 2, 3, 4)])
    with pytest.raises(RecforgeError, match="^span name 'bad name.csv': use letters"):
        spans.span_files(params)
    (tmp_path / "spans" / "bad name.csv").unlink()
    (tmp_path / "spans" / "0001.csv").mkdir()
    with pytest.raises(RecforgeError) as info:
        spans.span_files(params)
    assert str(info.value) == f"{tmp_path / 'spans' / '0001.csv'}: a span must be a regular file"
    (tmp_path / "spans" / "0001.csv").rmdir()
    target = write_csv(tmp_path / "elsewhere.csv", [(1, 2, 3, 4)])
    (tmp_path / "spans" / "0002.csv").symlink_to(target)
    with pytest.raises(RecforgeError) as info:
        spans.span_files(params)
    assert str(info.value) == f"{tmp_path / 'spans' / '0002.csv'}: a span must be a regular file"


def test_span_files_caps_the_number_of_spans(tmp_path, monkeypatch):
    # catches the cap off by one (MAX_SPANS spans are allowed) and its message
    monkeypatch.setattr(spans, "MAX_SPANS", 3)
    params = params_for(tmp_path)
    for i in range(3):
        write_csv(tmp_path / "spans" / f"{i}.csv", [(1, 2, 3, 4)])
    assert len(spans.span_files(params)) == 3
    write_csv(tmp_path / "spans" / "3.csv", [(1, 2, 3, 4)])
    with pytest.raises(RecforgeError) as info:
        spans.span_files(params)
    assert str(info.value) == f"{tmp_path / 'spans'}: 4 spans, more than 3; merge old spans into the base data"


@pytest.mark.parametrize(("held", "read", "kept"), [(0, 3, 0), (1, 2, 1), (2, 1, 2), (3, 0, 3), (5, 0, 3)])
def test_partition_holds_out_the_newest(tmp_path, held, read, kept):
    # catches the oldest spans held out instead of the newest, and more held out than there are spans
    # wrapping around (a negative cut)
    names = ["a.csv", "b.csv", "c.csv"]
    for name in names:
        write_csv(tmp_path / "spans" / name, [(1, 2, 3, 4)])
    used, held_out = spans.partition(params_for(tmp_path, held_out=held))
    assert [p.name for p in used] == names[:read]
    assert [p.name for p in held_out] == names[read:]
    assert len(held_out) == kept


# ---- reading a span --------------------------------------------------------------------------------------


def test_read_span_with_canonical_columns(tmp_path):
    # catches the base data's items file read for a span (items_path must be dropped: it points elsewhere),
    # the index not reset, and the loader's format not forced to a table
    path = write_csv(tmp_path / "s.csv", [(1, 10, 100, 4.0), (2, 11, 200, 5.0)])
    params = params_for(tmp_path, items_path=str(tmp_path / "no-items.csv"), path=str(tmp_path / "no-base"))
    frame = spans.read_span(path, params)
    assert frame.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert frame["user_id"].tolist() == [1, 2] and frame["timestamp"].tolist() == [100, 200]
    assert frame["rating"].tolist() == [4.0, 5.0]
    assert frame.index.tolist() == [0, 1]


def test_read_span_with_the_table_column_map(tmp_path):
    # catches data.column_map not applied to a span of `table` data, or its item-text entries (title) passed
    # to the span's loader
    path = write_csv(tmp_path / "s.csv", [(1, 10, 100, 4.0)], header="u,i,t,r")
    column_map = {"user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r", "title": "name"}
    frame = spans.read_span(path, params_for(tmp_path, format="table", column_map=column_map))
    assert frame.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert frame.iloc[0].tolist() == [1, 10, 100, 4.0]


def test_read_span_with_movielens_columns(tmp_path):
    # catches a MovieLens span's userId / movieId not mapped (its span has the ratings file's columns)
    path = write_csv(tmp_path / "s.csv", [(1, 10, 4.0, 100)], header="userId,movieId,rating,timestamp")
    frame = spans.read_span(path, params_for(tmp_path, format="movielens-100k"))
    assert frame.iloc[0][["user_id", "item_id", "timestamp", "rating"]].tolist() == [1, 10, 100, 4.0]
    assert spans._column_map(params_for(tmp_path, format="movielens-1m")) == {"user_id": "userId", "item_id": "movieId"}
    assert spans._column_map(params_for(tmp_path, format="synthetic", column_map={"user_id": "u"})) == {}


def test_read_span_refuses_what_is_not_a_span_file(tmp_path, monkeypatch):
    # catches a link, a directory, an oversized file, another suffix or an empty span read, and the
    # messages not naming the file (the size with thousands separators)
    params = params_for(tmp_path)
    good = write_csv(tmp_path / "s.csv", [(1, 10, 100, 4.0)])
    (tmp_path / "link.csv").symlink_to(good)
    for path in (tmp_path / "link.csv", tmp_path / "missing.csv"):
        with pytest.raises(RecforgeError) as info:
            spans.read_span(path, params)
        assert str(info.value) == f"{path}: not a regular file"
    size = good.stat().st_size
    monkeypatch.setattr(spans, "MAX_SPAN_BYTES", size)
    assert len(spans.read_span(good, params)) == 1  # at the limit: read
    monkeypatch.setattr(spans, "MAX_SPAN_BYTES", size - 1)
    with pytest.raises(RecforgeError) as info:
        spans.read_span(good, params)
    assert str(info.value) == f"{good}: {size:,} bytes, more than the {size - 1:,} a span may hold; split it"
    monkeypatch.setattr(spans, "MAX_SPAN_BYTES", 1 << 30)
    text = write_csv(tmp_path / "s.txt", [(1, 10, 100, 4.0)])
    with pytest.raises(RecforgeError) as info:
        spans.read_span(text, params)
    assert str(info.value) == f"{text}: a span is a .csv or .parquet file"
    empty = write_csv(tmp_path / "e.csv", [])
    with pytest.raises(RecforgeError) as info:
        spans.read_span(empty, params)
    assert str(info.value) == f"{empty}: no events"


def test_read_span_size_message_uses_thousands_separators(tmp_path, monkeypatch):
    # catches the size printed without separators (1,234 bytes), so the user can read it
    params = params_for(tmp_path)
    big = write_csv(tmp_path / "s.csv", [(1, 10, 1_000_000 + i, 4.0) for i in range(80)])
    monkeypatch.setattr(spans, "MAX_SPAN_BYTES", 1000)
    with pytest.raises(RecforgeError, match=rf"^{big}: {big.stat().st_size:,} bytes, more than the 1,000 a span"):
        spans.read_span(big, params)


def test_describe_records_count_hash_and_time_range(tmp_path):
    # catches the time range not the smallest and largest timestamps, text timestamps not coerced, the event
    # count or the file's sha256 wrong, and a span without a timestamp not recording null bounds
    path = write_csv(tmp_path / "s.csv", [(1, 10, 100, 4.0)])
    frame = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 1, 1], "timestamp": ["300", "x", "100"]})
    record = spans.describe("0001.csv", path, frame)
    assert record == spans.SpanRecord("0001.csv", sha(path), 3, 100, 300)
    assert type(record.time_min) is int and type(record.time_max) is int
    assert record.to_dict() == {"name": "0001.csv", "sha256": sha(path), "events": 3, "time_min": 100, "time_max": 300}
    none = spans.describe("x.csv", path, frame.assign(timestamp=["x", "y", "z"]))
    assert none.time_min is None and none.time_max is None and none.events == 3


# ---- add-span --------------------------------------------------------------------------------------------


def test_add_span_copies_the_file_in(tmp_path):
    # catches the file not copied byte for byte, a staging file left behind, the record not the copy's, the
    # name not defaulting to the file's own, and adding the same content again not a no-op
    params = params_for(tmp_path)
    source = write_csv(tmp_path / "in" / "0001.csv", [(1, 10, 100, 4.0), (2, 11, 300, 5.0)])
    record, added = spans.add_span(params, source)
    assert added is True
    assert record == spans.SpanRecord("0001.csv", sha(source), 2, 100, 300)
    assert os.listdir(tmp_path / "spans") == ["0001.csv"]
    assert (tmp_path / "spans" / "0001.csv").read_bytes() == source.read_bytes()
    again, added = spans.add_span(params, str(source))
    assert added is False and again == record
    renamed, added = spans.add_span(params, source, "0002.csv")
    assert added is True and renamed.name == "0002.csv"
    assert sorted(os.listdir(tmp_path / "spans")) == ["0001.csv", "0002.csv"]


def test_add_span_refuses(tmp_path):
    # catches each refusal dropped or its message losing what to do: a missing file, a bad name, a name
    # with another suffix, other content under an existing name, a name sorting before an existing span
    params = params_for(tmp_path)
    with pytest.raises(RecforgeError) as info:
        spans.add_span(params, tmp_path / "nope.csv")
    assert str(info.value) == f"{tmp_path / 'nope.csv'}: file not found"
    source = write_csv(tmp_path / "in" / "0005.csv", [(1, 10, 100, 4.0)])
    with pytest.raises(RecforgeError, match="^span name 'a b.csv'"):
        spans.add_span(params, source, "a b.csv")
    with pytest.raises(RecforgeError) as info:
        spans.add_span(params, source, "0005.parquet")
    assert str(info.value) == "span name '0005.parquet': keep the file's suffix (.csv)"
    spans.add_span(params, source)
    other = write_csv(tmp_path / "other" / "0005.csv", [(2, 10, 100, 4.0)])
    with pytest.raises(RecforgeError) as info:
        spans.add_span(params, other)
    dest = tmp_path / "spans" / "0005.csv"
    assert str(info.value) == f"{dest}: a span of that name holds other events; spans are never rewritten"
    assert dest.read_bytes() == source.read_bytes()
    spans.add_span(params, other, "0007.csv")
    with pytest.raises(RecforgeError) as info:
        spans.add_span(params, other, "0006.csv")
    assert str(info.value) == (
        "span '0006.csv' sorts before '0007.csv', which is there already; spans are read in name order: "
        "name it so it sorts last"
    )
    assert sorted(os.listdir(tmp_path / "spans")) == ["0005.csv", "0007.csv"]


def test_add_span_refuses_a_file_the_loader_cannot_read(tmp_path):
    # catches a file that holds no events copied in (it would stop every later ingest)
    params = params_for(tmp_path)
    empty = write_csv(tmp_path / "in" / "0001.csv", [])
    with pytest.raises(RecforgeError, match="no events$"):
        spans.add_span(params, empty)
    assert not (tmp_path / "spans" / "0001.csv").exists()


# ---- the base data with spans ----------------------------------------------------------------------------


def base_tables(with_rating: bool = True) -> Tables:
    interactions = pd.DataFrame({"user_id": [1], "item_id": [10], "timestamp": [50]})
    if with_rating:
        interactions["rating"] = [3.0]
    return Tables(interactions=interactions, items=pd.DataFrame({"item_id": [10]}))


def test_with_spans_appends_the_read_spans_and_records_the_held_out(tmp_path):
    # catches a held-out span's events reaching training data, the spans appended out of name order, the
    # index not renumbered, the spans' extra columns (review) kept, and the records not in span order
    write_csv(tmp_path / "spans" / "0001.csv", [(2, 11, 100, 4.0)])
    (tmp_path / "spans" / "0002.csv").write_text("user_id,item_id,timestamp,rating,review\n3,12,200,5.0,good\n")
    write_csv(tmp_path / "spans" / "0003.csv", [(4, 13, 300, 1.0)])
    raw = base_tables()
    tables, read, held = spans.with_spans(raw, params_for(tmp_path, held_out=1))
    frame = tables.interactions
    assert frame.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert frame.values.tolist() == [[1, 10, 50, 3.0], [2, 11, 100, 4.0], [3, 12, 200, 5.0]]
    assert frame.index.tolist() == [0, 1, 2]
    assert [r.name for r in read] == ["0001.csv", "0002.csv"] and [r.name for r in held] == ["0003.csv"]
    assert held[0] == spans.SpanRecord("0003.csv", sha(tmp_path / "spans" / "0003.csv"), 1, 300, 300)
    assert read[0].sha256 == sha(tmp_path / "spans" / "0001.csv") and read[1].time_min == 200
    assert tables.items is raw.items
    assert len(raw.interactions) == 1  # the base tables are left as they were


def test_with_spans_drops_ratings_the_base_data_lacks(tmp_path):
    # catches a span's ratings added to base data without ratings (half the events would have none)
    write_csv(tmp_path / "spans" / "0001.csv", [(2, 11, 100, 4.0)])
    tables, read, held = spans.with_spans(base_tables(with_rating=False), params_for(tmp_path, held_out=0))
    assert tables.interactions.columns.tolist() == ["user_id", "item_id", "timestamp"]
    assert tables.interactions.values.tolist() == [[1, 10, 50], [2, 11, 100]]
    assert [r.name for r in read] == ["0001.csv"] and held == []


def test_with_spans_without_spans_to_read_returns_the_base_tables(tmp_path):
    # catches the base tables rebuilt (or the held-out span appended) when every span is held out
    write_csv(tmp_path / "spans" / "0001.csv", [(2, 11, 100, 4.0)])
    raw = base_tables()
    tables, read, held = spans.with_spans(raw, params_for(tmp_path, held_out=1))
    assert tables is raw and read == [] and [r.name for r in held] == ["0001.csv"]


def test_with_held_out_appends_only_the_held_out_spans(tmp_path):
    # catches the gate not seeing the held-out spans' events (the evaluation data must be checked too), the
    # read spans appended twice, and the base tables rebuilt when nothing is held out
    write_csv(tmp_path / "spans" / "0001.csv", [(2, 11, 100, 4.0)])
    (tmp_path / "spans" / "0002.csv").write_text("user_id,item_id,timestamp,rating,review\n3,12,200,5.0,good\n")
    raw = base_tables()
    gated = spans.with_held_out(raw, params_for(tmp_path, held_out=1)).interactions
    assert gated.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert gated.values.tolist() == [[1, 10, 50, 3.0], [3, 12, 200, 5.0]]
    assert gated.index.tolist() == [0, 1]
    assert spans.with_held_out(raw, params_for(tmp_path, held_out=0)) is raw


# ---- spans.json ------------------------------------------------------------------------------------------


def test_manifest_round_trip_and_empty_before_any_span(tmp_path):
    # catches the read and held-out records swapped or lost, and a missing manifest not read as no spans
    params = params_for(tmp_path)
    assert spans.read_manifest(params) == {"spans": [], "held_out": []}
    one = spans.SpanRecord("0001.csv", "a" * 64, 2, 100, 300)
    two = spans.SpanRecord("0002.csv", "b" * 64, 1, None, None)
    directory = tmp_path / "canonical"
    directory.mkdir()
    spans.write_manifest(directory, [one], [two])
    text = (directory / "spans.json").read_text()
    assert text == json.dumps({"spans": [one.to_dict()], "held_out": [two.to_dict()]}, indent=2) + "\n"
    assert spans.read_manifest(params) == {"spans": [one.to_dict()], "held_out": [two.to_dict()]}
    (directory / "spans.json").write_text("{}")
    assert spans.read_manifest(params) == {"spans": [], "held_out": []}


def test_read_span_reads_parquet(tmp_path):
    # catches .parquet spans refused (the docs name 0003.parquet as a span)
    path = tmp_path / "0003.parquet"
    pd.DataFrame({"user_id": [1], "item_id": [10], "timestamp": [100], "rating": [4.0]}).to_parquet(path)
    assert spans.read_span(path, params_for(tmp_path)).values.tolist() == [[1, 10, 100, 4.0]]


def test_add_span_refuses_a_file_changed_while_it_is_added(tmp_path, monkeypatch):
    # catches a span still being written copied in with other content than was checked and recorded; the
    # writer is simulated by appending to the file right after add-span has checked it
    params = params_for(tmp_path)
    source = write_csv(tmp_path / "in" / "0001.csv", [(1, 10, 100, 4.0)])
    checked = spans.describe

    def describe_then_write(name, path, frame):
        record = checked(name, path, frame)
        with open(source, "a") as writer:
            writer.write("2,11,200,5.0\n")
        return record

    monkeypatch.setattr(spans, "describe", describe_then_write)
    with pytest.raises(RecforgeError) as info:
        spans.add_span(params, source)
    assert str(info.value) == f"{source}: changed while it was copied; add it again"
    assert os.listdir(tmp_path / "spans") == []  # neither the span nor a staging file
