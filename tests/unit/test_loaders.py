"""Every loader on small files the test writes itself."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from recforge.data import parsing
from recforge.data.loaders import kcore_filter, load, prepare
from recforge.data.synthetic import generate
from recforge.errors import RecforgeError
from recforge.params import DataParams, SyntheticParams
from tests.unit.crafted_inputs import GATE_FAILURES, LOADER_ERRORS, clean_reviews, write_cases


def test_movielens_100k(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t4\t881250949\n2\t10\t3\t881250950\n1\t20\t5\t881250951\n")
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (tmp_path / "u.item").write_text(
        "10|Heat (1995)|01-Jan-1995||http://x|0|1|0\n20|Clueless (1995)|01-Jan-1995||http://y|0|0|1\n"
    )
    tables = load(DataParams(format="movielens-100k", path=str(tmp_path)))
    assert len(tables.interactions) == 3
    assert tables.items.set_index("item_id").loc[20, "genres"] == "Comedy"
    assert tables.items.set_index("item_id").loc[10, "title"] == "Heat (1995)"


def test_movielens_1m(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::4::978300760\n2::20::5::978300761\n")
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action|Crime\n20::Up (2009)::Animation\n")
    tables = load(DataParams(format="movielens-1m", path=str(tmp_path)))
    assert tables.interactions["rating"].tolist() == [4, 5]
    assert tables.items.set_index("item_id").loc[10, "text"] == "Action Crime"


def test_movielens_latest_tags_become_text(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982704\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n2,"Heat, The (1995)",(no genres listed)\n'
    )
    # user 1's tag on movie 2, their test event, would name the answer: prepare() leaves it out (catches the
    # tags of held-out pairs joined to the item text); user 2's tag on movie 2 is no target and stays
    tags = "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,funny,2\n1,2,heatwave,3\n2,2,classic,4\n2,1,pixar,5\n"
    (tmp_path / "tags.csv").write_text(tags)
    params = DataParams(format="movielens-latest", path=str(tmp_path), kcore=0)
    tables = prepare(load(params), params)
    items = tables.items.set_index("item_id")
    assert items.loc[1, "text"] == "Animation Comedy funny pixar"  # distinct, sorted
    assert items.loc[2, "text"] == "classic"
    assert items.loc[2, "title"] == "Heat, The (1995)" and items.loc[2, "genres"] == ""


def test_amazon_reviews_with_metadata(tmp_path):
    reviews = [
        {
            "reviewerID": "A1",
            "asin": "B1",
            "overall": 5.0,
            "unixReviewTime": 1400000000,
            "reviewText": "Great book",
            "summary": "Loved it",
        },
        {
            "reviewerID": "A2",
            "asin": "B1",
            "overall": 2.0,
            "unixReviewTime": 1400000001,
            "reviewText": "Dull",
            "summary": "Meh",
        },
    ]
    meta = [
        {
            "asin": "B1",
            "title": "AI Book",
            "description": "About machine learning",
            "categories": [["Books", "Computers"]],
        }
    ]
    (tmp_path / "reviews.json").write_text("\n".join(json.dumps(r) for r in reviews))
    (tmp_path / "meta.json").write_text("\n".join(json.dumps(m) for m in meta))
    tables = load(DataParams(format="amazon-reviews", path=str(tmp_path)))
    assert tables.interactions["review"].iloc[0] == "Loved it. Great book"
    item = tables.items.iloc[0]
    assert (item["title"], item["genres"], item["text"]) == ("AI Book", "Books|Computers", "About machine learning")
    # user texts (and missing item texts) come from training reviews, after the split: prepare()
    assert tables.text_from_reviews and tables.users is None


def test_amazon_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "reviews.json").write_text('{"reviewerID": "A1"}\n{broken\n')
    with pytest.raises(RecforgeError, match=r"reviews\.json:2"):
        load(DataParams(format="amazon-reviews", path=str(tmp_path)))


def test_table_with_column_map_and_dates(tmp_path):
    pd.DataFrame({"who": ["u1", "u2"], "what": ["i1", "i2"], "when": ["2020-01-01", "2020-01-02"]}).to_csv(
        tmp_path / "interactions.csv", index=False
    )
    params = DataParams(
        format="table", path=str(tmp_path), column_map={"user_id": "who", "item_id": "what", "timestamp": "when"}
    )
    tables = load(params)
    assert tables.interactions["timestamp"].tolist() == [1577836800, 1577923200]
    assert tables.items["title"].tolist() == ["i1", "i2"]


def test_table_wrong_column_map_is_one_line_error(tmp_path):
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(RecforgeError, match=r"x\.csv.*missing column"):
        load(DataParams(format="table", path=str(tmp_path / "x.csv")))


def test_missing_path_and_missing_file(tmp_path):
    with pytest.raises(RecforgeError, match="data path not found"):
        load(DataParams(format="movielens-1m", path=str(tmp_path / "nope")))
    with pytest.raises(RecforgeError, match=r"ratings\.dat: file not found"):
        load(DataParams(format="movielens-1m", path=str(tmp_path)))
    with pytest.raises(RecforgeError, match="data.path is required"):
        load(DataParams(format="movielens-1m"))


def test_kcore_is_iterative():
    # item 3 has 1 interaction; dropping it leaves user 2 below k, which drops item 2 below k ...
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [1, 2, 2, 3, 1, 2], "timestamp": range(6)})
    kept = kcore_filter(frame, 2)
    assert set(kept.user_id) == {1, 3} and set(kept.item_id) == {1, 2}


def test_prepare_min_rating_and_duplicates():
    tables = load(DataParams(synthetic=SyntheticParams(num_users=30, num_items=20, num_interactions=600)))
    dup = pd.concat([tables.interactions, tables.interactions.head(5).assign(timestamp=lambda f: f.timestamp + 1)])
    tables.interactions = dup
    prepared = prepare(tables, DataParams(duplicates="last", min_rating=3))
    assert not prepared.interactions.duplicated(["user_id", "item_id"]).any()
    assert prepared.interactions["rating"].min() >= 3


def test_synthetic_is_seeded_and_fast():
    params = SyntheticParams(num_users=200, num_items=100, num_interactions=5000, seed=1)
    first, items = generate(params)
    second, _ = generate(params)
    pd.testing.assert_frame_equal(first, second)
    assert set(first["item_id"]) <= set(items["item_id"])
    assert first.groupby("user_id").size().min() >= 5
    started = time.perf_counter()
    # seeded: with seed None the generator draws fresh entropy, and one such draw gave 968,436 rows
    big, _ = generate(SyntheticParams(num_users=20_000, num_items=5_000, num_interactions=1_000_000, seed=1))
    assert len(big) >= 970_000 and time.perf_counter() - started < 30


def test_synthetic_users_prefer_their_topics():
    interactions, items = generate(SyntheticParams(num_users=200, num_items=200, num_interactions=8000, drift=0.0))
    genres = interactions.merge(items, on="item_id").groupby("user_id")["genres"]
    top_share = genres.agg(lambda g: g.value_counts(normalize=True).iloc[0]).mean()
    assert top_share > 0.3  # 8 topics: users without preferences would give ~0.15


def _review_rows(user: str, items: list[str], start: int) -> list[dict]:
    return [
        {
            "reviewerID": user,
            "asin": item,
            "overall": 4.0,
            "unixReviewTime": start + 10 * k,
            "reviewText": f"w{user}{item}".lower(),  # one word per review: where it ends up is visible
            "summary": "",
        }
        for k, item in enumerate(items)
    ]


@pytest.mark.parametrize("method", ["leave-last-out", "temporal"])
def test_amazon_texts_hold_no_held_out_review(tmp_path, method):
    # catches: the item text falling back to ALL of an item's reviews (the test user's own review of the test
    # item would describe it), user texts cut before the k-core filter (A1's last raw event, on B9, is dropped
    # by the 2-core, so "all but the last two raw reviews" would keep A1's validation review), and user texts
    # that assume leave-last-out under another split
    from recforge.data.loaders import prepare
    from recforge.params import SplitParams
    from recforge.split import split

    rows = []
    items = ["B0", "B1", "B2", "B3"]
    for n, user in enumerate(["A1", "A2", "A3"]):  # rotated and staggered: the two splits hold out other events
        rows += _review_rows(user, items[n:] + items[:n], 1_400_000_000 + 5 * n)
    rows += _review_rows("A1", ["B9"], 1_400_001_000)  # one review of B9: the 2-core drops it
    (tmp_path / "reviews.json").write_text("\n".join(json.dumps(r) for r in rows))
    params = DataParams(format="amazon-reviews", path=str(tmp_path), kcore=2)
    split_params = SplitParams(method=method, test_fraction=0.25, val_fraction=0.25, seed=0)
    tables = prepare(load(params), params, split_params)
    train, val, test = split(tables.interactions, split_params)
    assert len(val) and len(test) and "B9" not in set(tables.interactions["item_id"])
    texts = " ".join(tables.items["text"]) + " " + " ".join(tables.users["text"])
    assert not set(texts.split()) & set(pd.concat([val, test])["review"])  # no target's review
    assert set(texts.split()) <= set(train["review"])  # nor one the split leaves out of training
    # and every training review is used: by its item (each item has at most 5) and by its user
    for review in train["review"]:
        assert review in " ".join(tables.items["text"]) and review in " ".join(tables.users["text"])
    assert set(tables.users["user_id"]) == {"A1", "A2", "A3"}


# ---- bad input: one RecforgeError naming the file (issue 11; cases in tests/unit/crafted_inputs.py) ----


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("crafted"))


@pytest.mark.parametrize("case", sorted(LOADER_ERRORS))
def test_crafted_input_is_one_line_error_naming_the_file(crafted, case):
    data_format, path = crafted[case]
    with pytest.raises(RecforgeError, match=LOADER_ERRORS[case]) as error:
        load(DataParams(format=data_format, path=str(path)))
    assert "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("case", sorted(GATE_FAILURES))
def test_missing_or_out_of_range_values_load_for_the_gate(crafted, case):
    """Missing values stay missing (nullable) and out-of-range ones stay as they are: the gate reports them."""
    data_format, path = crafted[case]
    interactions = load(DataParams(format=data_format, path=str(path))).interactions
    assert str(interactions["timestamp"].dtype) in ("int64", "Int64")


def test_amazon_without_summary_or_review_text_loads(crafted, tmp_path):
    data_format, path = crafted["amazon_no_summary"]
    tables = load(DataParams(format=data_format, path=str(path)))
    assert tables.interactions["review"].iloc[0] == "text 0 0"
    bare = [{k: v for k, v in r.items() if k not in ("summary", "reviewText")} for r in clean_reviews()]
    (tmp_path / "reviews.json").write_text("\n".join(json.dumps(r) for r in bare))
    tables = load(DataParams(format="amazon-reviews", path=str(tmp_path)))
    assert len(tables.interactions) == len(bare) and (tables.interactions["review"] == "").all()


def test_amazon_ids_of_any_json_type_become_strings_and_missing_stays_missing(tmp_path):
    rows = [{**r, "reviewerID": 7} if i == 0 else r for i, r in enumerate(clean_reviews())]
    rows[1] = {k: v for k, v in rows[1].items() if k != "reviewerID"}
    (tmp_path / "reviews.json").write_text("\n".join(json.dumps(r) for r in rows))
    users = load(DataParams(format="amazon-reviews", path=str(tmp_path))).interactions["user_id"]
    assert users.iloc[0] == "7" and pd.isna(users.iloc[1])


@pytest.mark.parametrize(
    "value, message",
    [
        ('"yesterday"', r"reviews\.json:3: unixReviewTime: neither a number nor a date: 'yesterday'"),
        ("1e300", r"reviews\.json:3: unixReviewTime: timestamp out of range"),
        ("[1]", r"reviews\.json:3: unixReviewTime: neither a number nor a date: \[1\]"),
        ("true", r"reviews\.json:3: unixReviewTime: neither a number nor a date: True"),
    ],
)
def test_amazon_bad_timestamp_names_the_line(tmp_path, value, message):
    rows = clean_reviews()[:4]
    lines = [json.dumps({**r, "unixReviewTime": "@"} if i == 2 else r) for i, r in enumerate(rows)]
    lines[2] = lines[2].replace('"@"', value)
    (tmp_path / "reviews.json").write_text("\n".join(lines))
    with pytest.raises(RecforgeError, match=message):
        load(DataParams(format="amazon-reviews", path=str(tmp_path)))


def test_amazon_rating_that_is_no_number_names_the_line(tmp_path):
    lines = [json.dumps({**r, "overall": "five"} if i == 1 else r) for i, r in enumerate(clean_reviews()[:4])]
    (tmp_path / "reviews.json").write_text("\n".join(lines))
    with pytest.raises(RecforgeError, match=r"reviews\.json:2: overall: not a number: 'five'"):
        load(DataParams(format="amazon-reviews", path=str(tmp_path)))


def test_json_line_longer_than_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(parsing, "MAX_JSON_LINE_BYTES", 1000)
    (tmp_path / "reviews.json").write_text(json.dumps({**clean_reviews()[0], "reviewText": "x" * 2000}) + "\n")
    with pytest.raises(RecforgeError, match=r"reviews\.json:1: line longer than"):
        load(DataParams(format="amazon-reviews", path=str(tmp_path)))


def test_headerless_file_with_an_extra_field_is_an_error_not_an_index(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::4::978300760::9\n2::20::5::978300761::9\n")
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action\n20::Up (2009)::Animation\n")
    with pytest.raises(RecforgeError, match=r"ratings\.dat: expected 4 fields per line .* found 5"):
        load(DataParams(format="movielens-1m", path=str(tmp_path)))


def test_table_dates_that_do_not_parse_name_the_row(tmp_path):
    frame = pd.DataFrame(
        {"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": ["2020-01-01", "2020-01-02", "soon"]}
    )
    frame.to_csv(tmp_path / "interactions.csv", index=False)
    with pytest.raises(
        RecforgeError, match=r"interactions\.csv: data row 3, column timestamp: neither a number nor a date: 'soon'"
    ):
        load(DataParams(format="table", path=str(tmp_path)))


def test_movielens_latest_genres_that_are_not_text(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,2001,\n")
    items = load(DataParams(format="movielens-latest", path=str(tmp_path))).items
    assert items.loc[0, "title"] == "2001" and items.loc[0, "genres"] == "" and items.loc[0, "text"] == ""
