"""Loaders that turn known formats into the canonical tables.

Canonical schema:
    interactions(user_id, item_id, rating?, timestamp[int seconds])
    items(item_id, title, text, genres)     every interaction's item is present
    users(user_id, text)                    optional

Every loader raises ``RecforgeError`` naming the file (and the line, row or
column when known) for a missing, malformed or undecodable input; no other
exception escapes a loader (tests/unit/test_loader_properties.py). A value that
does not parse (a rating ``abc``, a timestamp ``yesterday``) is a loader error;
a value that is missing (an empty cell, an absent JSON key) stays missing and
the data gate (recforge.validation) reports it. Original ids are kept unchanged.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.data import synthetic
from recforge.errors import RecforgeError
from recforge.params import DataParams

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "text", "genres"]

# One JSON line (a review, an item's metadata) is at most this long: a file that is one
# endless line is refused before it is held in memory.
MAX_JSON_LINE_BYTES = 16 * 2**20
_INT64_MAX = float(np.iinfo(np.int64).max)


@dataclass
class Tables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None


def load(params: DataParams) -> Tables:
    """Load ``params.format`` from ``params.path`` (raw, before filtering)."""
    if params.format == "synthetic":
        interactions, items = synthetic.generate(params.synthetic)
        return Tables(interactions, items)
    if not params.path:
        raise RecforgeError(f"data.path is required for data.format={params.format}")
    root = Path(params.path)
    if not root.exists():
        raise RecforgeError(f"{root}: data path not found")
    loader = {
        "movielens-100k": _movielens_100k,
        "movielens-1m": _movielens_1m,
        "movielens-latest": _movielens_latest,
        "amazon-reviews": _amazon,
        "table": _table,
    }[params.format]
    return loader(root, params)


def _need(path: Path) -> Path:
    if not path.exists():
        raise RecforgeError(f"{path}: file not found")
    if not path.is_file():
        raise RecforgeError(f"{path}: not a file")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:300]


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(_need(path), **kwargs)
    except pd.errors.EmptyDataError:
        raise RecforgeError(f"{path}: empty file") from None
    except UnicodeDecodeError as exc:
        raise RecforgeError(
            f"{path}: not {kwargs.get('encoding', 'UTF-8')} text (byte {exc.object[exc.start : exc.start + 1]!r} "
            f"at offset {exc.start} of a read block)"
        ) from None
    except (ValueError, TypeError, OverflowError, OSError, MemoryError, IndexError) as exc:
        # ParserError and the C parser's errors are ValueErrors; they name the line themselves
        raise RecforgeError(f"{path}: malformed file ({_first_line(exc)})") from None


def _read_fields(path: Path, names: list[str], **kwargs) -> pd.DataFrame:
    """A headerless file with exactly ``len(names)`` fields per line (an extra field is an error, not an index)."""
    frame = _read_csv(path, header=None, **kwargs)
    if frame.shape[1] != len(names):
        raise RecforgeError(
            f"{path}: expected {len(names)} fields per line ({', '.join(names)}), found {frame.shape[1]}"
        )
    frame.columns = names
    return frame


def _require_columns(frame: pd.DataFrame, columns: list[str], source: Path | str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:20])) + (", ..." if len(frame.columns) > 20 else "")
        raise RecforgeError(f"{source}: missing column(s) {', '.join(missing)} (found: {found})")


def _where(source: Path | str, column: str, position: int, lines: list[int] | None) -> str:
    """``file:line`` for line-oriented files, else the data row (1-based, after any header)."""
    if lines is not None:
        return f"{source}:{lines[position]}: {column}"
    return f"{source}: data row {position + 1}, column {column}"


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(column: pd.Series, source: Path | str, name: str, lines: list[int] | None = None) -> pd.Series:
    """Float values of a numeric column; missing values stay NaN, anything else that is not a number is an error."""
    if _is_number_dtype(column):
        return column.astype(float)
    values = pd.Series(column.to_numpy(dtype=object), index=column.index)
    bad_type = values.map(_not_scalar)
    parsed = pd.to_numeric(values.where(~bad_type), errors="coerce").astype(float)
    bad = (values.notna() & parsed.isna()) | bad_type
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise RecforgeError(f"{_where(source, name, position, lines)}: not a number: {_show(values.iloc[position])}")
    return parsed


def _is_number_dtype(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _not_scalar(value) -> bool:
    """True for what JSON gives that is no number or date: booleans, lists, objects."""
    return isinstance(value, (bool, np.bool_, list, dict))


def _to_seconds(column: pd.Series, source: Path | str, name: str = "timestamp", lines: list[int] | None = None):
    """Integer Unix seconds from numbers or dates; a missing value stays missing (nullable Int64) for the gate."""
    if pd.api.types.is_integer_dtype(column) and not pd.api.types.is_bool_dtype(column):
        limit = np.iinfo(np.int64).max  # an int: compared as float, 2**63 .. 2**63 + 1023 passed and wrapped
        if column.dtype == np.uint64 and len(column) and column.max() > limit:
            position = int(np.flatnonzero(column.to_numpy() > limit)[0])
            raise RecforgeError(f"{_where(source, name, position, lines)}: timestamp out of range")
        return column.astype(np.int64 if not column.hasnans else "Int64")
    if pd.api.types.is_datetime64_any_dtype(column):
        seconds = _datetime_seconds(pd.to_datetime(column, utc=True))
    else:
        values = column if pd.api.types.is_float_dtype(column) else None
        if values is None:
            raw = pd.Series(column.to_numpy(dtype=object), index=column.index)
            bad_type = raw.map(_not_scalar)
            if bad_type.any():
                position = int(np.flatnonzero(bad_type.to_numpy())[0])
                raise RecforgeError(
                    f"{_where(source, name, position, lines)}: neither a number nor a date: {_show(raw.iloc[position])}"
                )
            numeric = pd.to_numeric(raw, errors="coerce")
            if not (raw.notna() & numeric.isna()).any():
                values = numeric.astype(float)
        if values is not None:
            finite = values.isna() | (np.isfinite(values) & (values.abs() < _INT64_MAX))
            if not finite.all():
                position = int(np.flatnonzero(~finite.to_numpy())[0])
                raise RecforgeError(
                    f"{_where(source, name, position, lines)}: timestamp out of range: {_show(values.iloc[position])}"
                )
            seconds = values
        else:
            seconds = _date_seconds(raw, source, name, lines)
    if pd.api.types.is_float_dtype(seconds):
        seconds = np.trunc(seconds)  # fractions of a second dropped, as astype(int64) does
    if seconds.isna().any():
        return seconds.astype("Int64")
    return seconds.astype(np.int64)


def _datetime_seconds(parsed: pd.Series) -> pd.Series:
    return (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)


def _date_seconds(raw: pd.Series, source: Path | str, name: str, lines: list[int] | None) -> pd.Series:
    try:
        return _datetime_seconds(pd.to_datetime(raw, utc=True)).astype(float)
    except (ValueError, TypeError, OverflowError):
        pass
    try:
        coerced = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError):
        coerced = pd.Series(pd.NaT, index=raw.index)
    bad = raw.notna() & coerced.isna()
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise RecforgeError(
            f"{_where(source, name, position, lines)}: neither a number nor a date: {_show(raw.iloc[position])}"
        )
    raise RecforgeError(f"{source}: {name} column mixes date formats or time zones; give Unix seconds or ISO dates")


def _text(column: pd.Series) -> pd.Series:
    """Text cells: missing -> '', anything else as a string (a number, a JSON list)."""
    return column.map(lambda v: v if isinstance(v, str) else ("" if _missing(v) else str(v))).astype(str)


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array is not missing
        return False


def _movielens_100k(root: Path, params: DataParams) -> Tables:
    ratings = _read_fields(root / "u.data", INTERACTION_COLUMNS, sep="\t")
    ratings = _canonical_interactions(ratings, root / "u.data")
    genre_names = _read_csv(root / "u.genre", sep="|", header=None, encoding="latin-1")
    if genre_names.shape[1] < 1:
        raise RecforgeError(f"{root / 'u.genre'}: expected genre|index lines")
    genre_list = [str(g) for g in genre_names.iloc[:, 0].dropna()]
    raw = _read_csv(root / "u.item", sep="|", header=None, encoding="latin-1")
    if raw.shape[1] < 5 + len(genre_list):
        raise RecforgeError(f"{root / 'u.item'}: expected {5 + len(genre_list)} columns, found {raw.shape[1]}")
    flags = (
        np.column_stack(
            [
                _numbers(raw[5 + j], root / "u.item", f"genre flag {j + 6}").fillna(0) != 0
                for j in range(len(genre_list))
            ]
        )
        if genre_list
        else np.zeros((len(raw), 0), dtype=bool)
    )
    genres = ["|".join(g for g, on in zip(genre_list, row) if on) for row in flags]
    items = pd.DataFrame({"item_id": raw[0], "title": _text(raw[1]), "genres": genres})
    items["text"] = items["genres"].str.replace("|", " ", regex=False)
    return Tables(ratings, items[ITEM_COLUMNS])


def _movielens_1m(root: Path, params: DataParams) -> Tables:
    opts = dict(sep="::", engine="python", encoding="latin-1")
    ratings = _read_fields(root / "ratings.dat", INTERACTION_COLUMNS, **opts)
    ratings = _canonical_interactions(ratings, root / "ratings.dat")
    movies = _read_fields(root / "movies.dat", ["item_id", "title", "genres"], **opts)
    movies["title"] = _text(movies["title"])
    movies["genres"] = _text(movies["genres"])
    movies["text"] = movies["genres"].str.replace("|", " ", regex=False)
    return Tables(ratings, movies[ITEM_COLUMNS])


def _movielens_latest(root: Path, params: DataParams) -> Tables:
    ratings = _read_csv(root / "ratings.csv")
    _require_columns(ratings, ["userId", "movieId", "rating", "timestamp"], root / "ratings.csv")
    ratings = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    ratings = _canonical_interactions(ratings[INTERACTION_COLUMNS], root / "ratings.csv")
    movies = _read_csv(root / "movies.csv")
    _require_columns(movies, ["movieId", "title", "genres"], root / "movies.csv")
    movies = movies.rename(columns={"movieId": "item_id"})
    movies["title"] = _text(movies["title"])
    movies["genres"] = _text(movies["genres"]).replace("(no genres listed)", "")
    tags_text = pd.Series(dtype=str)
    if (root / "tags.csv").exists():
        tags = _read_csv(root / "tags.csv")
        _require_columns(tags, ["movieId", "tag"], root / "tags.csv")
        tags = tags[tags["movieId"].notna()]
        tags_text = tags.groupby("movieId")["tag"].agg(lambda t: " ".join(sorted(set(map(str, t)))))
    movies["text"] = (
        movies["genres"].str.replace("|", " ", regex=False)
        + " "
        + movies["item_id"].map(tags_text).fillna("").astype(str)
    ).str.strip()
    return Tables(ratings, movies[ITEM_COLUMNS])


def _canonical_interactions(frame: pd.DataFrame, source: Path | str, lines: list[int] | None = None) -> pd.DataFrame:
    """Numeric ratings and integer timestamps; ids as they are (the gate checks their type)."""
    frame = frame.copy()
    if "rating" in frame and not _is_number_dtype(frame["rating"]):  # numbers stay as read (ints stay ints)
        frame["rating"] = _numbers(frame["rating"], source, "rating", lines)
    frame["timestamp"] = _to_seconds(frame["timestamp"], source, "timestamp", lines)
    return frame


def _json_rows(path: Path) -> tuple[list[dict], list[int]]:
    """The objects of a JSON-lines file (optionally gzipped) and the line number of each."""
    _need(path)
    rows: list[dict] = []
    line_numbers: list[int] = []
    line_no = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            while True:
                raw = handle.readline(MAX_JSON_LINE_BYTES + 1)
                if not raw:
                    break
                line_no += 1
                if len(raw) > MAX_JSON_LINE_BYTES:
                    raise RecforgeError(f"{path}:{line_no}: line longer than {MAX_JSON_LINE_BYTES // 2**20} MiB")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise RecforgeError(
                        f"{path}:{line_no}: not UTF-8 (byte {raw[exc.start : exc.start + 1]!r} at column {exc.start + 1})"
                    ) from None
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.__class__.__name__
                    raise RecforgeError(f"{path}:{line_no}: malformed JSON line ({reason})") from None
                if not isinstance(value, dict):
                    raise RecforgeError(f"{path}:{line_no}: expected a JSON object, found {_json_kind(value)}")
                rows.append(value)
                line_numbers.append(line_no)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise RecforgeError(
            f"{path}: truncated or corrupt gzip file after line {line_no} ({_first_line(exc)})"
        ) from None
    except OSError as exc:
        raise RecforgeError(f"{path}: cannot read ({_first_line(exc)})") from None
    return rows, line_numbers


def _json_kind(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _json_frame(path: Path) -> tuple[pd.DataFrame, list[int]]:
    rows, lines = _json_rows(path)
    try:
        frame = pd.DataFrame.from_records(rows)
    except (ValueError, TypeError) as exc:
        raise RecforgeError(f"{path}: unusable JSON records ({_first_line(exc)})") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True), lines


def _ids(column: pd.Series) -> pd.Series:
    """JSON ids as strings; a missing id stays missing for the gate."""
    return column.map(lambda v: None if _missing(v) else (v if isinstance(v, str) else json.dumps(v)))


def _amazon(root: Path, params: DataParams) -> Tables:
    reviews_path = root if root.is_file() else _first(root, ["reviews.json", "reviews.jsonl", "reviews.json.gz"])
    reviews, lines = _json_frame(reviews_path)
    _require_columns(reviews, ["reviewerID", "asin", "overall", "unixReviewTime"], reviews_path)
    # summary and reviewText are optional: a file without either still loads (its reviews have no text)
    summary = _text(reviews["summary"]) if "summary" in reviews else pd.Series("", index=reviews.index)
    body = _text(reviews["reviewText"]) if "reviewText" in reviews else pd.Series("", index=reviews.index)
    review_text = summary + ". " + body
    interactions = pd.DataFrame(
        {
            "user_id": _ids(reviews["reviewerID"]).astype(str),
            "item_id": _ids(reviews["asin"]).astype(str),
            "rating": _numbers(reviews["overall"], reviews_path, "overall", lines),
            "timestamp": _to_seconds(reviews["unixReviewTime"], reviews_path, "unixReviewTime", lines),
            "review": review_text.str.strip(". "),
        }
    )
    items = pd.DataFrame({"item_id": interactions["item_id"].dropna().unique()})
    items["title"] = items["item_id"]
    items["genres"] = ""
    items["text"] = ""
    meta_path = Path(params.metadata_path) if params.metadata_path else None
    if meta_path is None and root.is_dir():
        meta_path = next((root / n for n in ["meta.json", "meta.jsonl", "meta.json.gz"] if (root / n).exists()), None)
    if meta_path is not None:
        meta, _ = _json_frame(meta_path)
        _require_columns(meta, ["asin"], meta_path)
        meta["asin"] = _ids(meta["asin"]).astype(str)
        meta = meta[meta["asin"].notna()].drop_duplicates("asin").set_index("asin")
        if "title" in meta:
            title = meta["title"][~meta["title"].map(_missing)]
            items["title"] = items["item_id"].map(_text(title)).fillna(items["item_id"])
        if "categories" in meta:
            items["genres"] = items["item_id"].map(meta["categories"].map(_flatten_categories)).fillna("")
        if "description" in meta:
            items["text"] = items["item_id"].map(_text(meta["description"])).fillna("")
    # reviews describe items too: fall back to them where metadata has no text
    review_by_item = interactions.groupby("item_id")["review"].agg(lambda r: " ".join(r.head(5)))
    empty = items["text"].str.len() == 0
    items.loc[empty, "text"] = items.loc[empty, "item_id"].map(review_by_item).fillna("")
    # users' own text: their reviews except the last two, which leave-last-out holds out
    # as validation and test targets (their text would leak the answer)
    ordered = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    users = (
        ordered.groupby("user_id")["review"].agg(lambda r: " ".join(r.iloc[:-2].tail(10))).rename("text").reset_index()
    )
    return Tables(interactions, items[ITEM_COLUMNS], users)


def _flatten_categories(value) -> str:
    if isinstance(value, list):
        flat = [c for group in value for c in (group if isinstance(group, list) else [group])]
        return "|".join(dict.fromkeys(map(str, flat)))
    return str(value) if not _missing(value) else ""


def _first(root: Path, names: list[str]) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise RecforgeError(f"{root}: none of {', '.join(names)} found")


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(_need(path))
        except RecforgeError:
            raise
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise RecforgeError(f"{path}: malformed Parquet file ({exc.__class__.__name__})") from None
    else:
        frame = _read_csv(path)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _table(root: Path, params: DataParams) -> Tables:
    """Any CSV/Parquet; ``column_map`` maps canonical names to the file's columns."""
    path = root if root.is_file() else _first(root, ["interactions.parquet", "interactions.csv"])
    frame = _read_table(path)
    mapping = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating"}
    unknown = sorted(set(params.column_map) - set(mapping) - {"title", "text", "genres"})  # before the update
    mapping.update(params.column_map)
    if unknown:
        raise RecforgeError(f"data.column_map: unknown canonical column(s) {', '.join(unknown)}")
    required = [mapping[c] for c in ("user_id", "item_id", "timestamp")]
    _require_columns(frame, required, f"{path} (data.column_map)")
    interactions = pd.DataFrame({c: frame[mapping[c]] for c in ("user_id", "item_id", "timestamp")})
    if mapping["rating"] in frame:
        interactions["rating"] = _numbers(frame[mapping["rating"]], path, mapping["rating"])
    interactions["timestamp"] = _to_seconds(interactions["timestamp"], path, mapping["timestamp"])
    items_path = Path(params.items_path) if params.items_path else None
    if items_path is None and root.is_dir():
        items_path = next((root / n for n in ["items.parquet", "items.csv"] if (root / n).exists()), None)
    if items_path is not None:
        raw_items = _read_table(items_path)
        item_key = mapping["item_id"] if mapping["item_id"] in raw_items else "item_id"
        _require_columns(raw_items, [item_key], items_path)
        items = pd.DataFrame({"item_id": raw_items[item_key]})
        for column in ("title", "text", "genres"):
            source = params.column_map.get(column, column)
            items[column] = _text(raw_items[source]) if source in raw_items else ""
        items.loc[items["title"] == "", "title"] = _text(items["item_id"])
    else:
        items = pd.DataFrame({"item_id": interactions["item_id"].dropna().unique()})
        items["title"] = items["item_id"].astype(str)
        items["text"] = ""
        items["genres"] = ""
    return Tables(interactions, items[ITEM_COLUMNS])


def prepare(tables: Tables, params: DataParams) -> Tables:
    """Apply the rating threshold, duplicate policy and iterative k-core filter."""
    interactions = tables.interactions
    if params.min_rating is not None and "rating" in interactions:
        interactions = interactions[interactions["rating"] >= params.min_rating]
    if params.duplicates != "keep":
        interactions = interactions.sort_values(["user_id", "item_id", "timestamp"], kind="stable")
        interactions = interactions.drop_duplicates(["user_id", "item_id"], keep=params.duplicates)
    kcore = params.kcore if params.kcore is not None else (0 if params.format == "synthetic" else 5)
    if kcore > 1:
        interactions = kcore_filter(interactions, kcore)
    interactions = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    used = set(interactions["item_id"])
    items = tables.items
    if kcore > 1:  # k-core keeps only items that survived; otherwise keep the full catalogue
        items = items[items["item_id"].isin(used)]
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    users = tables.users
    if users is not None:
        users = users[users["user_id"].isin(set(interactions["user_id"]))].reset_index(drop=True)
    return Tables(interactions, items, users)


def kcore_filter(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions until none is left."""
    while True:
        user_counts = interactions["user_id"].map(interactions["user_id"].value_counts())
        item_counts = interactions["item_id"].map(interactions["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return interactions
        interactions = interactions[keep]
