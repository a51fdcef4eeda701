"""recforge.data.loaders: conversions, error locations, format details and prepare() (fast, tiny files).

Each test names the wrong behaviour it catches.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recforge.data import loaders, parsing
from recforge.data.loaders import Tables, load, prepare
from recforge.errors import RecforgeError
from recforge.params import DataParams

# ---- timestamps ------------------------------------------------------------------------------------------


def _err(call) -> str:
    with pytest.raises(RecforgeError) as info:
        call()
    return str(info.value)


def test_integer_timestamps_stay_exact_and_missing_stays_missing():
    # catches integer seconds sent through float (2**53 + 1 rounded), and a missing value in a nullable
    # integer column not kept as <NA> for the data gate (or the column not int64 when none is missing)
    big = pd.Series([2**53 + 1, 5], dtype=np.int64)
    out = parsing._to_seconds(big, "f")
    assert out.dtype == np.int64 and out.tolist() == [2**53 + 1, 5]
    nullable = parsing._to_seconds(pd.Series([7, None], dtype="Int64"), "f")
    assert str(nullable.dtype) == "Int64" and nullable[0] == 7 and nullable.isna().tolist() == [False, True]


def test_uint64_timestamps_beyond_int64_name_the_row_or_line():
    # catches the out-of-range check for unsigned columns dropped or off by one (the largest int64 is valid),
    # and the error not naming the first bad row / line and the column. Found a bug: the check compared
    # with float(2**63 - 1) == 2**63, so 2**63 passed and wrapped to a negative timestamp
    top = pd.Series([2**63 - 1], dtype=np.uint64)
    assert parsing._to_seconds(top, "f").tolist() == [2**63 - 1]
    bad = pd.Series([1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert _err(lambda: parsing._to_seconds(bad, "f", "ts")) == "f: data row 2, column ts: timestamp out of range"
    message = _err(lambda: parsing._to_seconds(bad, "f", "ts", lines=[4, 9, 12]))
    assert message == "f:9: ts: timestamp out of range"


def test_datetime_columns_become_utc_seconds():
    # catches naive datetimes not read as UTC (or compared with an aware epoch: TypeError), and aware ones
    # not converted to UTC
    naive = pd.Series(pd.to_datetime(["2020-01-01 00:00:00", "2020-01-02 00:00:00"]))
    assert parsing._to_seconds(naive, "f").tolist() == [1577836800, 1577923200]
    aware = pd.Series(pd.to_datetime(["2020-01-01 01:00:00"]).tz_localize("Europe/Paris"))
    assert parsing._to_seconds(aware, "f").tolist() == [1577836800]


def test_float_and_text_numbers_truncate_and_keep_index():
    # catches fractions rounded or kept (a float result), a missing value in numeric text sending the
    # column to date parsing, and the result losing the column's index (misaligned on assignment)
    floats = parsing._to_seconds(pd.Series([1.7, np.nan, -1.5]), "f")
    assert str(floats.dtype) == "Int64" and floats.tolist()[0] == 1 and floats.isna().tolist()[1] and floats[2] == -1
    whole = parsing._to_seconds(pd.Series([1.9, 2.0]), "f")
    assert whole.dtype == np.int64 and whole.tolist() == [1, 2]
    text = parsing._to_seconds(pd.Series(["1", "2"], index=[5, 6], dtype=object), "f")
    assert text.index.tolist() == [5, 6] and text.tolist() == [1, 2] and text.dtype == np.int64
    gaps = parsing._to_seconds(pd.Series(["3", None], dtype=object), "f")
    assert gaps[0] == 3 and gaps.isna().tolist() == [False, True]


def test_float_timestamp_at_the_int64_limit_is_refused():
    # catches 2**63 (not representable as int64) accepted and wrapped around, and the message not showing it
    message = _err(lambda: parsing._to_seconds(pd.Series([1.0, 2.0**63]), "f"))
    assert message.startswith("f: data row 2, column timestamp: timestamp out of range: ")
    assert "9.223372036854776e+18" in message


def test_default_column_name_in_messages():
    # catches the default column name in error messages changed (users look for the `timestamp` column)
    message = _err(lambda: parsing._to_seconds(pd.Series(["x"], dtype=object), "f"))
    assert message == "f: data row 1, column timestamp: neither a number nor a date: 'x'"


def test_dates_with_mixed_offsets_and_formats_name_the_bad_row():
    # catches the fallback parse done without utc (mixed offsets then fail as a whole and row 1 is blamed)
    # or without format='mixed' (a valid date in another format blamed), and the mixed-format message lost
    offsets = pd.Series(["2020-01-01T00:00+01:00", "2020-01-01T00:00+02:00", "yesterday"], dtype=object)
    assert _err(lambda: parsing._to_seconds(offsets, "f")).startswith("f: data row 3, column timestamp:")
    formats = pd.Series(["2020-01-01", "01/02/2020", "yesterday"], dtype=object)
    assert _err(lambda: parsing._to_seconds(formats, "f")) == (
        "f: data row 3, column timestamp: neither a number nor a date: 'yesterday'"
    )
    mixed = pd.Series(["2020-01-01", "01/02/2020"], dtype=object)
    assert _err(lambda: parsing._to_seconds(mixed, "f")) == (
        "f: timestamp column mixes date formats or time zones; give Unix seconds or ISO dates"
    )


# ---- canonical interactions --------------------------------------------------------------------------------


def test_canonical_interactions_parse_ratings_and_timestamps_naming_lines():
    # catches text ratings left as strings (or written to another column), a frame without ratings refused,
    # integer ratings converted, and errors that do not name the file, line and column
    frame = pd.DataFrame({"user_id": [1, 2], "rating": ["4", "2.5"], "timestamp": ["10", "11"]})
    out = loaders._canonical_interactions(frame, "src", lines=[3, 4])
    assert out["rating"].tolist() == [4.0, 2.5] and out["timestamp"].tolist() == [10, 11]
    assert list(out.columns) == ["user_id", "rating", "timestamp"] and frame["rating"].tolist() == ["4", "2.5"]
    ints = loaders._canonical_interactions(pd.DataFrame({"rating": [4, 5], "timestamp": [1, 2]}), "src")
    assert ints["rating"].dtype == np.int64
    bare = loaders._canonical_interactions(pd.DataFrame({"user_id": [1], "timestamp": [5]}), "src")
    assert "rating" not in bare and bare["timestamp"].tolist() == [5]
    bad_rating = pd.DataFrame({"rating": ["4", "x"], "timestamp": [1, 2]})
    assert (
        _err(lambda: loaders._canonical_interactions(bad_rating, "src", [3, 4])) == "src:4: rating: not a number: 'x'"
    )
    bad_time = pd.DataFrame({"rating": [4, 5], "timestamp": ["2020-01-01", "soon"]})
    message = _err(lambda: loaders._canonical_interactions(bad_time, "src", [3, 4]))
    assert message == "src:4: timestamp: neither a number nor a date: 'soon'"


# ---- prepare -----------------------------------------------------------------------------------------------


def _tables(rows, items=None, users=None) -> Tables:
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    if items is None:
        items = pd.DataFrame({"item_id": sorted(set(interactions["item_id"]) | {99}, reverse=True)})
    return Tables(interactions, items, users)


def test_prepare_min_rating_keeps_the_threshold_and_tolerates_no_ratings():
    # catches ratings equal to min_rating dropped, and a file without ratings failing when min_rating is set
    tables = _tables([(1, 1, 3.0, 1), (1, 2, 2.9, 2), (2, 1, 4.0, 3)])
    out = prepare(tables, DataParams(min_rating=3, kcore=0))
    assert out.interactions["rating"].tolist() == [3.0, 4.0]
    tables.interactions = tables.interactions.drop(columns="rating")
    assert len(prepare(tables, DataParams(min_rating=3, kcore=0)).interactions) == 3


@pytest.mark.parametrize(("policy", "kept"), [("first", [1]), ("last", [3]), ("keep", [1, 2, 3])])
def test_prepare_duplicate_policy(policy, kept):
    # catches the policy ignored (the default `first` used for `last`, or duplicates dropped under `keep`)
    tables = _tables([(1, 1, 1.0, 3), (1, 1, 1.0, 1), (1, 1, 1.0, 2)])
    assert prepare(tables, DataParams(duplicates=policy, kcore=0)).interactions["timestamp"].tolist() == kept


def _grid(n_users, n_items, start=0):
    return [(u, start + i, 1.0, u * 100 + i) for u in range(n_users) for i in range(n_items)]


def test_prepare_default_kcore_is_5_for_real_data_and_off_for_synthetic():
    # catches the default 5-core for real data dropped or changed, and synthetic data filtered by default
    rows = _grid(5, 5) + [(9, 10 + i, 1.0, i) for i in range(4)]  # the 5x5 block survives 5-core, user 9 not
    real = prepare(_tables(rows), DataParams(format="table", path="x"))
    assert sorted(set(real.interactions["user_id"])) == [0, 1, 2, 3, 4]
    assert real.items["item_id"].tolist() == [0, 1, 2, 3, 4]  # the catalogue cut to surviving items
    synthetic = prepare(_tables(rows), DataParams(format="synthetic"))
    assert len(synthetic.interactions) == 29 and 99 in set(synthetic.items["item_id"])


def test_prepare_explicit_kcore_2_filters_and_1_keeps_the_catalogue():
    # catches kcore=2 not applied (`> 2`), and kcore=1 cutting the catalogue to used items
    rows = [(1, 1, 1.0, 1), (1, 2, 1.0, 2), (2, 1, 1.0, 3), (2, 2, 1.0, 4), (3, 3, 1.0, 5)]
    two = prepare(_tables(rows), DataParams(kcore=2))
    assert sorted(set(two.interactions["user_id"])) == [1, 2] and two.items["item_id"].tolist() == [1, 2]
    one = prepare(_tables(rows), DataParams(kcore=1))
    assert len(one.interactions) == 5 and one.items["item_id"].tolist() == [1, 2, 3, 99]


def test_prepare_orders_rows_and_resets_indexes():
    # catches interactions not ordered by (user, time, item), indexes kept (an `index` column or gaps), items
    # unsorted, and users not cut to those left (or dropped altogether)
    rows = [(2, 5, 1.0, 9), (1, 7, 1.0, 3), (1, 6, 1.0, 3), (1, 8, 1.0, 1)]
    users = pd.DataFrame({"user_id": [3, 2, 1], "text": ["c", "b", "a"]})
    out = prepare(_tables(rows, users=users), DataParams(kcore=0))
    assert out.interactions[["user_id", "item_id"]].values.tolist() == [[1, 8], [1, 6], [1, 7], [2, 5]]
    assert list(out.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert out.interactions.index.tolist() == [0, 1, 2, 3]
    assert out.items["item_id"].tolist() == [5, 6, 7, 8, 99] and out.items.index.tolist() == list(range(5))
    assert out.users["user_id"].tolist() == [2, 1] and out.users.index.tolist() == [0, 1]
    assert list(out.users.columns) == ["user_id", "text"]


def test_prepare_item_sort_is_stable_for_repeated_ids():
    # catches the catalogue sorted unstably: rows of a repeated item id (reported by the data gate, which
    # names the first one) must keep the file's order
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=300)
    items = pd.DataFrame({"item_id": ids, "title": [f"t{i:03d}" for i in range(300)]})
    out = prepare(_tables([(1, 0, 1.0, 1)], items=items), DataParams(kcore=0))
    for _, group in out.items.groupby("item_id"):
        assert group["title"].tolist() == sorted(group["title"])


# ---- table format ------------------------------------------------------------------------------------------


def test_table_prefers_parquet_and_reads_items_file(tmp_path):
    # catches interactions.parquet not looked for first, items.csv / items.parquet in the directory ignored,
    # items keyed by the mapped item column, title/text/genres not mapped, an empty title not replaced by the
    # item id, and the mapped rating column not loaded
    pd.DataFrame({"u": [1], "i": [10], "t": [5], "r": [4.5]}).to_parquet(tmp_path / "interactions.parquet")
    pd.DataFrame({"u": [2], "i": [20], "t": [6], "r": [1.0]}).to_csv(tmp_path / "interactions.csv", index=False)
    pd.DataFrame({"i": [10, 11], "name": ["Heat", None], "about": ["crime", "x"], "genres": ["A", "B"]}).to_csv(
        tmp_path / "items.csv", index=False
    )
    cmap = {"user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r", "title": "name", "text": "about"}
    tables = load(DataParams(format="table", path=str(tmp_path), column_map=cmap))
    assert tables.interactions.values.tolist() == [[1, 10, 5, 4.5]]
    assert list(tables.interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert tables.items.values.tolist() == [[10, "Heat", "crime", "A"], [11, "11", "x", "B"]]
    pd.DataFrame({"i": [10], "name": ["P"]}).to_parquet(tmp_path / "items.parquet")
    items = load(DataParams(format="table", path=str(tmp_path), column_map=cmap)).items
    assert items.values.tolist() == [[10, "P", "", ""]]  # items.parquet first; missing text/genres are ''


def test_table_items_path_param_and_no_items(tmp_path):
    # catches data.items_path ignored, and the default catalogue (from interactions) wrong
    pd.DataFrame({"user_id": [1, 1], "item_id": [7, 8], "timestamp": [1, 2]}).to_csv(tmp_path / "x.csv", index=False)
    plain = load(DataParams(format="table", path=str(tmp_path / "x.csv")))
    assert plain.items.values.tolist() == [[7, "7", "", ""], [8, "8", "", ""]]
    pd.DataFrame({"item_id": [7], "title": ["Seven"]}).to_csv(tmp_path / "cat.csv", index=False)
    given = load(DataParams(format="table", path=str(tmp_path / "x.csv"), items_path=str(tmp_path / "cat.csv")))
    assert given.items.values.tolist() == [[7, "Seven", "", ""]]
    pd.DataFrame({"other": [7]}).to_csv(tmp_path / "cat.csv", index=False)
    message = _err(
        lambda: load(DataParams(format="table", path=str(tmp_path / "x.csv"), items_path=str(tmp_path / "cat.csv")))
    )
    assert message == f"{tmp_path / 'cat.csv'}: missing column(s) item_id (found: other)"


def test_table_column_map_names_and_errors(tmp_path):
    # catches unknown canonical names in column_map accepted (or title/text/genres refused), and the errors
    # not naming them or the mapped timestamp column. Found a bug: the unknown names were computed after
    # column_map was merged into the mapping, so none was ever reported (a typo was silently ignored)
    pd.DataFrame({"user_id": [1], "item_id": [2], "when": ["soon"]}).to_csv(tmp_path / "x.csv", index=False)
    path = str(tmp_path / "x.csv")
    message = _err(lambda: load(DataParams(format="table", path=path, column_map={"zz": "a", "aa": "b"})))
    assert message == "data.column_map: unknown canonical column(s) aa, zz"
    cmap = {"timestamp": "when", "title": "t", "text": "x", "genres": "g"}
    message = _err(lambda: load(DataParams(format="table", path=path, column_map=cmap)))
    assert message == f"{path}: data row 1, column when: neither a number nor a date: 'soon'"


# ---- MovieLens ---------------------------------------------------------------------------------------------


def _ml100k(root, genre="unknown|0\nAction|1\nComédie|2\n", items=None):
    (root / "u.data").write_text("1\t10\t4\t881250949\n2\t10\t3\t881250950\n")
    (root / "u.genre").write_bytes(genre.encode("latin-1"))
    items = items or "10|Amélie (2001)|d||u|0|1|1\n20|Heat (1995)|d||u|0||0\n"
    (root / "u.item").write_bytes(items.encode("latin-1"))
    return load(DataParams(format="movielens-100k", path=str(root)))


def test_movielens_100k_latin1_genres_and_text(tmp_path):
    # catches the latin-1 files read as UTF-8, genres joined with another separator, a missing flag read as
    # set, and the text not the genres separated by spaces
    tables = _ml100k(tmp_path)
    items = tables.items.set_index("item_id")
    assert items.loc[10, "title"] == "Amélie (2001)" and items.loc[10, "genres"] == "Action|Comédie"
    assert items.loc[10, "text"] == "Action Comédie" and items.loc[20, "genres"] == ""
    assert tables.interactions["timestamp"].dtype == np.int64


def test_movielens_100k_errors_name_file_and_column(tmp_path):
    # catches the u.item / u.genre shape checks off, and messages not naming the file and the genre column
    message = _err(lambda: _ml100k(tmp_path, items="10|A|d||u|0\n"))
    assert message == f"{tmp_path / 'u.item'}: expected 8 columns, found 6"
    message = _err(lambda: _ml100k(tmp_path, items="10|A|d||u|0|x|1\n"))
    assert message == f"{tmp_path / 'u.item'}: data row 1, column genre flag 7: not a number: 'x'"
    (tmp_path / "u.data").write_text("1\t10\t4\tsoon\n")
    message = _err(lambda: load(DataParams(format="movielens-100k", path=str(tmp_path))))
    assert message.startswith(f"{tmp_path / 'u.data'}: data row 1, column timestamp")


def test_movielens_100k_without_genres(tmp_path):
    # catches a catalogue with no genre list failing (no flag columns to stack)
    tables = _ml100k(tmp_path, genre="|0\n", items="10|A|d||u\n20|B|d||u\n")
    assert tables.items["genres"].tolist() == ["", ""] and tables.items["text"].tolist() == ["", ""]


def test_movielens_1m_latin1_and_fields(tmp_path):
    # catches the '::' files read with another engine or encoding, titles/genres not made text, and rating
    # errors not naming ratings.dat
    (tmp_path / "ratings.dat").write_text("1::10::4::978300760\n")
    (tmp_path / "movies.dat").write_bytes("10::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))
    tables = load(DataParams(format="movielens-1m", path=str(tmp_path)))
    assert tables.items.values.tolist() == [[10, "Amélie (2001)", "Comedy Romance", "Comedy|Romance"]]
    (tmp_path / "ratings.dat").write_text("1::10::x::978300760\n")
    message = _err(lambda: load(DataParams(format="movielens-1m", path=str(tmp_path))))
    assert message == f"{tmp_path / 'ratings.dat'}: data row 1, column rating: not a number: 'x'"


def test_movielens_latest_messages_name_the_file(tmp_path):
    # catches missing-column and value errors naming no file (or another one), and ratings dropped
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating\n1,1,4\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy|Drama\n")
    message = _err(lambda: load(DataParams(format="movielens-latest", path=str(tmp_path))))
    assert message == f"{tmp_path / 'ratings.csv'}: missing column(s) timestamp (found: userId, movieId, rating)"
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,soon\n")
    message = _err(lambda: load(DataParams(format="movielens-latest", path=str(tmp_path))))
    assert message.startswith(f"{tmp_path / 'ratings.csv'}: data row 1, column timestamp")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,5\n")
    (tmp_path / "movies.csv").write_text("movieId,title\n1,A\n")
    message = _err(lambda: load(DataParams(format="movielens-latest", path=str(tmp_path))))
    assert message == f"{tmp_path / 'movies.csv'}: missing column(s) genres (found: movieId, title)"
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy|Drama\n")
    tables = load(DataParams(format="movielens-latest", path=str(tmp_path)))
    assert tables.interactions.values.tolist() == [[1, 1, 4, 5]]
    assert tables.items.values.tolist() == [[1, "A", "Comedy Drama", "Comedy|Drama"]]


# ---- Amazon ------------------------------------------------------------------------------------------------


def _review(user, item, t, text="", summary=""):
    return {"reviewerID": user, "asin": item, "overall": 4, "unixReviewTime": t, "reviewText": text, "summary": summary}


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_amazon_finds_jsonl_and_meta_variants(tmp_path):
    # catches reviews.jsonl / meta.jsonl not looked for, and the rating column not loaded as `rating`
    _write(tmp_path / "reviews.jsonl", [_review("A", "B1", 5)])
    _write(tmp_path / "meta.jsonl", [{"asin": "B1", "title": "T"}])
    tables = load(DataParams(format="amazon-reviews", path=str(tmp_path)))
    assert tables.interactions["rating"].tolist() == [4.0] and tables.items["title"].tolist() == ["T"]


def test_amazon_gzipped_meta_and_metadata_path(tmp_path):
    # catches meta.json.gz in the directory ignored, and data.metadata_path ignored (for a reviews file path)
    import gzip

    _write(tmp_path / "reviews.json", [_review("A", "B1", 5)])
    with gzip.open(tmp_path / "meta.json.gz", "wt") as handle:
        handle.write(json.dumps({"asin": "B1", "title": "Zipped"}) + "\n")
    assert load(DataParams(format="amazon-reviews", path=str(tmp_path))).items["title"].tolist() == ["Zipped"]
    _write(tmp_path / "elsewhere.json", [{"asin": "B1", "title": "Given"}])
    params = DataParams(
        format="amazon-reviews", path=str(tmp_path / "reviews.json"), metadata_path=str(tmp_path / "elsewhere.json")
    )
    assert load(params).items["title"].tolist() == ["Given"]


def test_amazon_metadata_fills_and_falls_back(tmp_path):
    # catches numeric asins in metadata not matched to the reviews' string ids, missing metadata values not
    # falling back (title -> id, genres/text -> ''), the review fallback text for items without a
    # description (the first 5 TRAINING reviews, space-joined: U0's review of item 1 is U0's test event), and
    # the meta error not naming its file
    reviews = [_review(f"U{i}", "1", 10 + i, text=f"r{i}") for i in range(7)] + [_review("U0", "B2", 1, "solo")]
    _write(tmp_path / "reviews.json", reviews)
    _write(tmp_path / "meta.json", [{"asin": 1, "title": None, "categories": None, "description": None}])
    params = DataParams(format="amazon-reviews", path=str(tmp_path), kcore=0)
    items = prepare(load(params), params).items.set_index("item_id")
    assert items.loc["1", "title"] == "1" and items.loc["1", "genres"] == ""
    assert items.loc["1", "text"] == "r1 r2 r3 r4 r5" and items.loc["B2", "text"] == "solo"
    assert items.loc["B2", "title"] == "B2" and items.loc["B2", "genres"] == ""
    _write(tmp_path / "meta.json", [{"title": "x"}])
    message = _err(lambda: load(DataParams(format="amazon-reviews", path=str(tmp_path))))
    assert message == f"{tmp_path / 'meta.json'}: missing column(s) asin (found: title)"


def test_amazon_review_text_and_user_text(tmp_path):
    # catches the review text trimmed of other characters than '. ', and the users' text not the space-joined
    # last 10 of their reviews before the two held out
    rows = [_review("A", f"B{i}", i, text=f"t{i}X.", summary="") for i in range(14)]
    _write(tmp_path / "reviews.json", rows)
    params = DataParams(format="amazon-reviews", path=str(tmp_path), kcore=0)
    tables = prepare(load(params), params)
    assert tables.interactions["review"].iloc[0] == "t0X"  # ". " + text + "." trimmed of '. ' only
    assert tables.users["text"].iloc[0] == " ".join(f"t{i}X" for i in range(2, 12))


def test_prepare_items_have_no_index_column():
    # catches the catalogue's old index kept as an `index` column after sorting
    out = prepare(_tables([(1, 2, 1.0, 1)]), DataParams(kcore=0))
    assert list(out.items.columns) == ["item_id"]


def test_amazon_without_metadata(tmp_path):
    # catches items without metadata not titled by their id, or given genres / placeholder text (so the review
    # fallback never fills their text)
    _write(tmp_path / "reviews.json", [_review("A", "B1", 5, text="nice"), _review("A", "B2", 6)])
    params = DataParams(format="amazon-reviews", path=str(tmp_path), kcore=0)
    items = prepare(load(params), params).items
    assert items.values.tolist() == [["B1", "B1", "nice", ""], ["B2", "B2", "", ""]]


def test_amazon_metadata_path_wins_over_the_directory_and_numeric_asins_match(tmp_path):
    # catches meta.json in the directory read instead of the configured data.metadata_path, and numeric asins
    # in metadata not turned into the reviews' string ids (their titles then lost)
    _write(tmp_path / "reviews.json", [_review("A", "1", 5)])
    _write(tmp_path / "meta.json", [{"asin": 1, "title": "Here"}])
    assert load(DataParams(format="amazon-reviews", path=str(tmp_path))).items["title"].tolist() == ["Here"]
    _write(tmp_path / "other.json", [{"asin": "1", "title": "Configured"}])
    params = DataParams(format="amazon-reviews", path=str(tmp_path), metadata_path=str(tmp_path / "other.json"))
    assert load(params).items["title"].tolist() == ["Configured"]
    message = _err(lambda: load(DataParams(format="amazon-reviews", path=str(tmp_path / "other.json") + "x")))
    assert message.endswith(": data path not found")
    (tmp_path / "reviews.json").unlink()
    message = _err(lambda: load(DataParams(format="amazon-reviews", path=str(tmp_path))))
    assert message == f"{tmp_path}: none of reviews.json, reviews.jsonl, reviews.json.gz found"


def test_dates_before_the_epoch_floor_to_the_second():
    # catches datetime conversion dividing instead of floor-dividing: half a second before 1970 is second -1
    dates = pd.Series(pd.to_datetime(["1969-12-31 23:59:59.5"]))
    assert parsing._to_seconds(dates, "f").tolist() == [-1]


def test_first_line_of_an_error():
    # catches the exception's first line replaced by its type name (or the reverse for an empty message), and
    # the 300-character cut
    assert parsing._first_line(ValueError(" a\nb ")) == "a"
    assert parsing._first_line(ValueError("")) == "ValueError"
    assert parsing._first_line(ValueError("x" * 400)) == "x" * 300


def test_flatten_categories_and_ids_and_text():
    # catches string groups split into characters, scalar categories dropped, JSON ids not written as JSON
    # (True -> 'true', an object with double quotes), and lists read as missing text
    assert loaders._flatten_categories([["a", "b"], "cd", ["a"]]) == "a|b|cd"
    assert loaders._flatten_categories("Books") == "Books" and loaders._flatten_categories(None) == ""
    ids = loaders._ids(pd.Series([True, {"a": 1}, "s", None])).tolist()
    assert ids[:3] == ["true", '{"a": 1}', "s"] and pd.isna(ids[3])
    assert parsing._text(pd.Series([[1, 2], None, 3, "t"])).tolist() == ["[1, 2]", "", "3", "t"]


def test_numbers_refuse_booleans_and_keep_the_index():
    # catches a boolean column accepted as 0/1 ratings, and parsed values losing the column's index
    message = _err(lambda: parsing._numbers(pd.Series([True, False]), "f", "rating"))
    assert message == "f: data row 1, column rating: not a number: True"
    assert parsing._numbers(pd.Series(["1.5", None], index=[4, 5], dtype=object), "f", "r").index.tolist() == [4, 5]


@pytest.mark.parametrize(
    ("line", "kind"),
    [("[1]", "a list"), ('"s"', "a string"), ("true", "a boolean"), ("null", "null"), ("3", "a number")],
)
def test_json_line_that_is_not_an_object_says_what_it_is(tmp_path, line, kind):
    # catches the kind of a non-object JSON line misnamed in the error
    (tmp_path / "reviews.json").write_text(line + "\n")
    message = _err(lambda: load(DataParams(format="amazon-reviews", path=str(tmp_path))))
    assert message == f"{tmp_path / 'reviews.json'}:1: expected a JSON object, found {kind}"


def test_json_lines_errors_and_blank_lines(tmp_path, monkeypatch):
    # catches a blank line ending the file early, the byte column of a bad UTF-8 byte off by one, the reason
    # of a malformed line (decoder message or the exception type), a line of exactly the limit refused, the
    # limit shown in MiB, and a corrupt gzip file without its reason
    path = tmp_path / "r.json"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    assert parsing._json_rows(path) == ([{"a": 1}, {"a": 2}], [1, 3])
    path.write_bytes(b'{"a": 1}\n{"\xff": 1}\n')
    assert _err(lambda: parsing._json_rows(path)) == f"{path}:2: not UTF-8 (byte b'\\xff' at column 3)"
    path.write_text('{"a": }\n')
    assert _err(lambda: parsing._json_rows(path)) == f"{path}:1: malformed JSON line (Expecting value)"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert _err(lambda: parsing._json_rows(path)) == f"{path}:1: malformed JSON line (RecursionError)"
    monkeypatch.setattr(parsing, "MAX_JSON_LINE_BYTES", 2**20)
    path.write_bytes(b'{"a": "' + b"x" * (2**20 - 10) + b'"}\n')  # exactly the limit, newline included
    assert len(path.read_bytes()) == 2**20 and parsing._json_rows(path)[1] == [1]
    path.write_bytes(b'{"a": "' + b"x" * (2**20 - 9) + b'"}\n')
    assert _err(lambda: parsing._json_rows(path)) == f"{path}:1: line longer than 1 MiB"
    import gzip

    gz = tmp_path / "r.json.gz"
    gz.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:-20])
    message = _err(lambda: parsing._json_rows(gz))
    assert message.startswith(f"{gz}: truncated or corrupt gzip file after line ") and message.endswith(
        "(Compressed file ended before the end-of-stream marker was reached)"
    )


def test_csv_read_errors_name_file_and_cause(tmp_path):
    # catches the empty-file, encoding (which encoding, which byte, where) and malformed-file messages lost
    path = tmp_path / "ratings.csv"
    path.write_text("")
    assert _err(lambda: parsing._read_csv(path)) == f"{path}: empty file"
    path.write_bytes(b"a,b\n1,\xff\n")
    message = _err(lambda: parsing._read_csv(path))
    assert message.startswith(f"{path}: not UTF-8 text (byte b'\\xff' at offset ") and message.endswith(
        " of a read block)"
    )
    assert _err(lambda: parsing._read_csv(path, encoding="ascii")).startswith(f"{path}: not ascii text (byte b'\\xff'")
    path.write_text('a,b\n"1,2\n')
    assert _err(lambda: parsing._read_csv(path)).startswith(f"{path}: malformed file (Error tokenizing data.")
    assert _err(lambda: parsing._need(tmp_path)) == f"{tmp_path}: not a file"
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet")
    assert _err(lambda: loaders._read_table(bad)) == f"{bad}: malformed Parquet file (ArrowInvalid)"


def test_fields_and_columns_messages(tmp_path):
    # catches the expected field names, or the found columns (cut after 20 with ', ...'), misprinted
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\n")
    assert _err(lambda: parsing._read_fields(path, ["a", "b"], sep="\t")) == (
        f"{path}: expected 2 fields per line (a, b), found 3"
    )
    twenty = pd.DataFrame(columns=[f"c{i}" for i in range(20)])
    message = _err(lambda: parsing._require_columns(twenty, ["x", "y"], "src"))
    assert message == f"src: missing column(s) x, y (found: {', '.join(f'c{i}' for i in range(20))})"
    more = pd.DataFrame(columns=[f"c{i}" for i in range(21)])
    message = _err(lambda: parsing._require_columns(more, ["x"], "src"))
    assert message == f"src: missing column(s) x (found: {', '.join(f'c{i}' for i in range(20))}, ...)"


def test_show_cuts_long_values_at_60():
    # catches long values not cut (a huge cell floods the error) or cut at another length
    assert parsing._show("x" * 58) == repr("x" * 58)
    assert parsing._show("x" * 59) == repr("x" * 59)[:57] + "..."


def test_table_items_path_wins_and_item_key_falls_back(tmp_path):
    # catches items.csv in the directory read instead of data.items_path, and an items file keyed by
    # `item_id` refused when column_map renames the interactions' item column
    pd.DataFrame({"u": [1], "i": [10], "timestamp": [5]}).to_csv(tmp_path / "interactions.csv", index=False)
    pd.DataFrame({"item_id": [10], "title": ["Dir"]}).to_csv(tmp_path / "items.csv", index=False)
    pd.DataFrame({"item_id": [10], "title": ["Given"]}).to_csv(tmp_path / "given.csv", index=False)
    cmap = {"user_id": "u", "item_id": "i"}
    assert load(DataParams(format="table", path=str(tmp_path), column_map=cmap)).items["title"].tolist() == ["Dir"]
    params = DataParams(format="table", path=str(tmp_path), column_map=cmap, items_path=str(tmp_path / "given.csv"))
    assert load(params).items["title"].tolist() == ["Given"]


def test_uint64_error_names_the_first_row_beyond_int64():
    # catches the row search counting the largest int64 itself as out of range
    bad = pd.Series([2**63 - 1, 2**63], dtype=np.uint64)
    assert _err(lambda: parsing._to_seconds(bad, "f")) == "f: data row 2, column timestamp: timestamp out of range"


def test_movielens_1m_numeric_titles_and_empty_genres_are_text(tmp_path):
    # catches titles and genres not made text: a title read as a number, missing genres left NaN
    (tmp_path / "ratings.dat").write_text("1::10::4::978300760\n")
    (tmp_path / "movies.dat").write_text("10::1984::\n")
    items = load(DataParams(format="movielens-1m", path=str(tmp_path))).items
    assert items.values.tolist() == [[10, "1984", "", ""]]
