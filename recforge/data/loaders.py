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

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.data import synthetic
from recforge.data.parsing import (
    _is_number_dtype,
    _json_frame,
    _missing,
    _need,
    _numbers,
    _read_csv,
    _read_fields,
    _require_columns,
    _text,
    _to_seconds,
)
from recforge.errors import RecforgeError
from recforge.params import DataParams, SplitParams

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "text", "genres"]


REVIEWS_PER_ITEM = 5  # an item without descriptive text gets its first (earliest) training reviews
REVIEWS_PER_USER = 10  # a user's own text: their latest training reviews


@dataclass
class Tables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    # reviews describe items and users: prepare() fills the items' missing text and the users' text from the
    # reviews of TRAINING events only (the split's), so no held-out review reaches a feature
    text_from_reviews: bool = False
    # words users wrote about items (MovieLens tags: user_id, item_id, text): prepare() appends them to the
    # item text, except those of a (user, item) pair the split holds out (a user's tag on their test item)
    notes: pd.DataFrame | None = None


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
    notes = None
    if (root / "tags.csv").exists():  # the tags join the text in prepare(), without the held-out pairs' tags
        tags = _read_csv(root / "tags.csv")
        _require_columns(tags, ["movieId", "tag"], root / "tags.csv")
        tags = tags[tags["movieId"].notna()]
        user = tags["userId"] if "userId" in tags else pd.Series(pd.NA, index=tags.index, dtype=object)
        notes = pd.DataFrame({"user_id": user, "item_id": tags["movieId"], "text": tags["tag"].map(str)})
    movies["text"] = movies["genres"].str.replace("|", " ", regex=False).str.strip()
    return Tables(ratings, movies[ITEM_COLUMNS], notes=notes)


def _canonical_interactions(frame: pd.DataFrame, source: Path | str, lines: list[int] | None = None) -> pd.DataFrame:
    """Numeric ratings and integer timestamps; ids as they are (the gate checks their type)."""
    frame = frame.copy()
    if "rating" in frame and not _is_number_dtype(frame["rating"]):  # numbers stay as read (ints stay ints)
        frame["rating"] = _numbers(frame["rating"], source, "rating", lines)
    frame["timestamp"] = _to_seconds(frame["timestamp"], source, "timestamp", lines)
    return frame


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
    # the items' missing text and the users' own text come from training reviews: prepare() (after the split)
    return Tables(interactions, items[ITEM_COLUMNS], text_from_reviews=True)


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
    if "review" in frame:  # review text (a feedback span's, recforge.feedback): sentiment weighting reads it
        interactions["review"] = _text(frame["review"])
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


def prepare(tables: Tables, params: DataParams, split: SplitParams | None = None) -> Tables:
    """Apply the rating threshold, duplicate policy and iterative k-core filter; then, with user-written
    text, split the result with ``split`` (default: leave-last-out) as the split stage will: ``notes``
    (tags) join the item text except those of held-out pairs (:func:`notes_text`), and review text fills
    the item and user texts from training events only (:func:`review_texts`)."""
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
    reviews = tables.text_from_reviews and "review" in interactions
    if (reviews or tables.notes is not None) and len(interactions):  # empty: the gate says so
        from recforge.split import split as split_events

        train, val, test = split_events(interactions, split or SplitParams())
        if tables.notes is not None:
            items = notes_text(items, tables.notes, pd.concat([val, test]))
        if reviews:
            items, users = review_texts(train, interactions, items)
    return Tables(interactions, items, users)


def _id(value):
    """An id as a hashable key that matches across files: 5.0 (a float column with gaps) is 5."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def notes_text(items: pd.DataFrame, notes: pd.DataFrame, held_out: pd.DataFrame) -> pd.DataFrame:
    """The items' text with their notes (tags) appended, distinct and sorted, leaving out the notes of the
    ``held_out`` (user, item) pairs: a user's tag on their validation or test item names the answer."""
    held = {(_id(u), _id(i)) for u, i in zip(held_out["user_id"], held_out["item_id"])}
    keep = [(_id(u), _id(i)) not in held for u, i in zip(notes["user_id"], notes["item_id"])]
    kept = notes[np.asarray(keep, dtype=bool)]
    words = kept.groupby(kept["item_id"].map(_id))["text"].agg(lambda t: " ".join(sorted(set(t))))
    items = items.copy()
    appended = items["item_id"].map(_id).map(words).fillna("").astype(str)
    items["text"] = (items["text"].fillna("").astype(str) + " " + appended).str.strip()
    return items


def review_texts(
    train: pd.DataFrame, interactions: pd.DataFrame, items: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items whose text is empty get their earliest ``REVIEWS_PER_ITEM`` training reviews; every user gets
    the text of their latest ``REVIEWS_PER_USER`` training reviews ("" without one).

    ``train``: what ``recforge.split.split(interactions, ...)`` keeps for training (the split stage splits
    the same canonical table the same way), so the reviews of validation and test events, the targets,
    are in no text an encoder, a profile or a feature reads.
    """
    train = train[train["review"].fillna("").astype(str).str.len() > 0]
    by_item = train.sort_values(["item_id", "timestamp", "user_id"], kind="stable").groupby("item_id")["review"]
    first = by_item.agg(lambda r: " ".join(r.head(REVIEWS_PER_ITEM).astype(str)))
    items = items.copy()
    empty = items["text"].fillna("").str.len() == 0
    items.loc[empty, "text"] = items.loc[empty, "item_id"].map(first).fillna("")
    by_user = train.groupby("user_id", sort=False)["review"]  # train keeps the split's (user, time) order
    latest = by_user.agg(lambda r: " ".join(r.tail(REVIEWS_PER_USER).astype(str)))
    user_ids = pd.unique(interactions["user_id"])
    users = pd.DataFrame({"user_id": user_ids, "text": pd.Series(user_ids).map(latest).fillna("").to_numpy()})
    return items, users


def kcore_filter(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions until none is left."""
    while True:
        user_counts = interactions["user_id"].map(interactions["user_id"].value_counts())
        item_counts = interactions["item_id"].map(interactions["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return interactions
        interactions = interactions[keep]
