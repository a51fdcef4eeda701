"""Crafted bad input files for the data gate and the loaders (issue 11, item 6; docs/security.md).

``write_cases(root)`` writes each next to clean data that would pass, and returns
name -> (data.format, data.path). Used by tests/unit/test_loaders.py,
tests/unit/test_validation.py and tests/e2e/test_bad_data.py.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd


def clean_table() -> pd.DataFrame:
    """30 users x 10 events over 20 items: passes the gate and a 5-core filter."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 31), 10)
    items = np.concatenate([rng.choice(np.arange(1, 21), size=10, replace=False) for _ in range(30)])
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": rng.choice([1.0, 3.5, 5.0], size=len(users)),
            "timestamp": 1_500_000_000 + np.arange(len(users)),
        }
    )


def clean_reviews() -> list[dict]:
    """12 reviewers x 6 reviews of 8 products, Amazon reviews JSON lines."""
    return [
        {
            "reviewerID": f"A{u}",
            "asin": f"B{(u + i) % 8}",
            "overall": float(1 + (u * i) % 5),
            "unixReviewTime": 1_400_000_000 + 100 * u + i,
            "reviewText": f"text {u} {i}",
            "summary": f"s{i}",
        }
        for u in range(12)
        for i in range(6)
    ]


def _table_with(root: Path, name: str, rows: range, column: str, value: str) -> Path:
    """The clean table as CSV with ``column`` of data rows ``rows`` (0-based) replaced by the raw text ``value``."""
    lines = clean_table().to_csv(index=False).splitlines()
    header = lines[0].split(",")
    for row in rows:
        cells = lines[row + 1].split(",")
        cells[header.index(column)] = value
        lines[row + 1] = ",".join(cells)
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    return directory / "interactions.csv"


def _json_lines(root: Path, name: str, rows: list, filename: str = "reviews.json") -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    blob = b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows)
    (directory / filename).write_bytes(blob)
    return directory


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def write_cases(root: Path) -> dict[str, tuple[str, Path]]:
    root = Path(root)
    cases: dict[str, tuple[str, Path]] = {
        "nan_rating": ("table", _table_with(root, "nan_rating", range(3, 4), "rating", "")),
        "inf_rating": ("table", _table_with(root, "inf_rating", range(3, 4), "rating", "inf")),
        "future_timestamp": ("table", _table_with(root, "future_timestamp", range(3, 4), "timestamp", "4000000000")),
        "nan_timestamp": ("table", _table_with(root, "nan_timestamp", range(3, 4), "timestamp", "")),
        "rating_abc": ("table", _table_with(root, "rating_abc", range(3, 4), "rating", "abc")),
        # every event of user 1, so the 5-core filter keeps them
        "user_id_1e30": ("table", _table_with(root, "user_id_1e30", range(10), "user_id", str(10**30))),
    }
    reviews = clean_reviews()
    cases["amazon_no_summary"] = (
        "amazon-reviews",
        _json_lines(root, "amazon_no_summary", [_without(r, "summary") for r in reviews]),
    )
    cases["amazon_row_without_unixReviewTime"] = (
        "amazon-reviews",
        _json_lines(
            root, "amazon_no_time_row", [_without(r, "unixReviewTime") if i == 5 else r for i, r in enumerate(reviews)]
        ),
    )
    cases["amazon_no_unixReviewTime"] = (
        "amazon-reviews",
        _json_lines(root, "amazon_no_time", [_without(r, "unixReviewTime") for r in reviews]),
    )
    latin1 = json.dumps({**reviews[5], "reviewText": "caf\u00e9"}, ensure_ascii=False).encode("latin-1") + b"\n"
    cases["amazon_latin1_bytes"] = (
        "amazon-reviews",
        _json_lines(root, "amazon_latin1", [*reviews[:5], latin1, *reviews[6:]]),
    )
    directory = root / "amazon_truncated_gzip"
    directory.mkdir(parents=True, exist_ok=True)
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in reviews).encode())
    (directory / "reviews.json.gz").write_bytes(blob[: len(blob) // 2])
    cases["amazon_truncated_gzip"] = ("amazon-reviews", directory)
    cases["amazon_list_line"] = (
        "amazon-reviews",
        _json_lines(root, "amazon_list_line", [*reviews[:5], [1, 2, 3], *reviews[5:]]),
    )
    directory = root / "tags_csv_without_movieId"
    directory.mkdir(parents=True, exist_ok=True)
    clean_table().rename(columns={"user_id": "userId", "item_id": "movieId"}).to_csv(
        directory / "ratings.csv", index=False
    )
    movies = pd.DataFrame({"movieId": range(1, 21), "title": [f"Movie {i}" for i in range(1, 21)], "genres": "Drama"})
    movies.to_csv(directory / "movies.csv", index=False)
    (directory / "tags.csv").write_text("userId,tag,timestamp\n1,funny,1\n")
    cases["tags_csv_without_movieId"] = ("movielens-latest", directory)
    return cases


# what each case gives now: a loader error (file and line or column) or a gate failure (expectation)
LOADER_ERRORS = {
    "rating_abc": r"interactions\.csv: data row 4, column rating: not a number: 'abc'",
    "amazon_no_unixReviewTime": r"reviews\.json: missing column\(s\) unixReviewTime",
    "amazon_latin1_bytes": r"reviews\.json:6: not UTF-8 \(byte b'\\xe9' at column \d+\)",
    "amazon_truncated_gzip": r"reviews\.json\.gz: truncated or corrupt gzip file after line \d+",
    "amazon_list_line": r"reviews\.json:6: expected a JSON object, found a list",
    "tags_csv_without_movieId": r"tags\.csv: missing column\(s\) movieId",
}
GATE_FAILURES = {
    "nan_rating": r"expect_column_values_to_not_be_null\(column=rating\) — 1 unexpected, e\.g\. None at row 4 \(report: ",
    "inf_rating": r"expect_column_values_to_be_between\(column=rating.* e\.g\. inf",
    "future_timestamp": r"expect_column_values_to_be_between\(column=timestamp.* e\.g\. 4000000000",
    "nan_timestamp": r"expect_column_values_to_not_be_null\(column=timestamp\) — 1 unexpected, e\.g\. None at row 4 \(report: ",
    "amazon_row_without_unixReviewTime": r"expect_column_values_to_not_be_null\(column=timestamp\) .* at row 6 \(report: ",
    "user_id_1e30": r"interactions \(id types\): expect_column_values_to_be_in_set\(column=user_id.*int out of int64 range",
}
