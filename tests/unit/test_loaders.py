"""Every loader on small files the test writes itself."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from recforge.data.loaders import kcore_filter, load, prepare
from recforge.data.synthetic import generate
from recforge.errors import RecforgeError
from recforge.params import DataParams, SyntheticParams


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
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,funny,2\n")
    tables = load(DataParams(format="movielens-latest", path=str(tmp_path)))
    items = tables.items.set_index("item_id")
    assert items.loc[1, "text"] == "Animation Comedy funny pixar"
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
    assert set(tables.users["user_id"]) == {"A1", "A2"}


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
    big, _ = generate(SyntheticParams(num_users=20_000, num_items=5_000, num_interactions=1_000_000))
    assert len(big) >= 970_000 and time.perf_counter() - started < 30


def test_synthetic_users_prefer_their_topics():
    interactions, items = generate(SyntheticParams(num_users=200, num_items=200, num_interactions=8000, drift=0.0))
    genres = interactions.merge(items, on="item_id").groupby("user_id")["genres"]
    top_share = genres.agg(lambda g: g.value_counts(normalize=True).iloc[0]).mean()
    assert top_share > 0.3  # 8 topics: users without preferences would give ~0.15


def test_amazon_user_text_leaves_out_held_out_reviews(tmp_path):
    reviews = [
        {
            "reviewerID": "A1",
            "asin": f"B{i}",
            "overall": 4.0,
            "unixReviewTime": 1400000000 + i,
            "reviewText": f"text{i}",
            "summary": "",
        }
        for i in range(3)
    ]
    (tmp_path / "reviews.json").write_text("\n".join(json.dumps(r) for r in reviews))
    users = load(DataParams(format="amazon-reviews", path=str(tmp_path))).users
    text = users.set_index("user_id").loc["A1", "text"]
    assert "text0" in text and "text1" not in text and "text2" not in text
