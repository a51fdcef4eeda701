"""User profiles (the "user portrait"): what a user's history says about their taste.

A profile has, per user and encoder, a recency- and rating-weighted mean of
the embeddings of the items in the user's history (L2-normalised), the
embedding of the user's own text when the users table has any, and the top
keywords and genres of the history. The encode stage writes them for two
event sets, named like the model parts:

    <profiles_dir>/val/   built from train events        (validation users, re-ranker training)
    <profiles_dir>/full/  built from train + val events  (test users, serving)

each holding ``<encoder>.npz`` (``vectors``, ``text_vectors``, ``has_text``,
``counts``; rows = dense user index) and ``users.json`` (original user ids,
keywords, genres, the settings used). The content recommender, the re-ranker
and the explainers reuse them; :func:`history_weights` and
:func:`profile_vector` fold in a user who is not in training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.artifacts import atomic_dir, plain
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps, Interactions
from recforge.text import tokenize
from recforge.vectors import l2_normalize

log = logging.getLogger(__name__)

PARTS = {"val": "train", "full": "train+val"}
WEIGHTING = ("half_life_events", "half_life_days", "rating_weight")  # ProfileSettings.weighting's keys


@dataclass(frozen=True)
class ProfileSettings:
    """How history events are weighted.

    ``half_life_events``: the event this many steps before the user's latest
    counts half (None: no position decay). ``half_life_days``: the same in
    days before the user's latest event (None: off). ``rating_weight``: slope
    of ``max(0.1, 1 + rating_weight * (rating - user's mean rating))``; 0 ignores ratings.
    """

    half_life_events: float | None = 50.0
    half_life_days: float | None = None
    rating_weight: float = 0.5
    keywords: int = 10

    @property
    def weighting(self) -> tuple[float | None, float | None, float]:
        """The settings that change the profile vectors (``keywords`` does not), as WEIGHTING orders them."""
        return (self.half_life_events, self.half_life_days, self.rating_weight)

    def to_dict(self) -> dict[str, Any]:
        return {
            "half_life_events": self.half_life_events,
            "half_life_days": self.half_life_days,
            "rating_weight": self.rating_weight,
            "keywords": self.keywords,
        }


def settings_from_params(params: Any) -> ProfileSettings:
    """ProfileSettings from the ``encode`` section of Params."""
    encode = params.encode
    return ProfileSettings(
        half_life_events=encode.profile_half_life_events,
        half_life_days=encode.profile_half_life_days,
        rating_weight=encode.profile_rating_weight,
        keywords=encode.profile_keywords,
    )


def history_weights(
    timestamps: np.ndarray | None,
    ratings: np.ndarray | None,
    settings: ProfileSettings,
    n: int | None = None,
) -> np.ndarray:
    """Weights of one user's events in time order (the last event is the most recent)."""
    n = n if n is not None else len(timestamps if timestamps is not None else ratings)
    weights = np.ones(n, dtype=np.float64)
    if n == 0:
        return weights
    if settings.half_life_events:
        steps_back = np.arange(n - 1, -1, -1, dtype=np.float64)
        weights *= 0.5 ** (steps_back / settings.half_life_events)
    if settings.half_life_days and timestamps is not None:
        age_days = (np.max(timestamps) - np.asarray(timestamps, dtype=np.float64)) / 86_400.0
        weights *= 0.5 ** (age_days / settings.half_life_days)
    if settings.rating_weight and ratings is not None:
        ratings = np.asarray(ratings, dtype=np.float64)
        weights *= np.maximum(0.1, 1.0 + settings.rating_weight * (ratings - ratings.mean()))
    return weights


def event_weights(events: Interactions, settings: ProfileSettings) -> np.ndarray:
    """:func:`history_weights` for every event of ``events`` (sorted by user, then time)."""
    weights = np.ones(len(events), dtype=np.float64)
    if len(events) == 0:
        return weights
    bounds = events.bounds
    counts = np.diff(bounds)
    position = np.arange(len(events)) - np.repeat(bounds[:-1], counts)
    steps_back = np.repeat(counts, counts) - 1 - position
    if settings.half_life_events:
        weights *= 0.5 ** (steps_back / settings.half_life_events)
    if settings.half_life_days:
        last = np.maximum.reduceat(events.timestamps, bounds[:-1][counts > 0])
        last_per_event = np.repeat(last, counts[counts > 0])
        weights *= 0.5 ** ((last_per_event - events.timestamps) / 86_400.0 / settings.half_life_days)
    if settings.rating_weight and events.ratings is not None:
        sums = np.bincount(events.user_ids, weights=events.ratings, minlength=events.n_users)
        means = sums / np.maximum(counts, 1)
        deviation = events.ratings - means[events.user_ids]
        weights *= np.maximum(0.1, 1.0 + settings.rating_weight * deviation)
    return weights


def weight_matrix(events: Interactions, settings: ProfileSettings) -> sp.csr_matrix:
    """User x item matrix of history weights, each row summing to 1 (empty rows stay empty)."""
    weights = event_weights(events, settings)
    matrix = sp.csr_matrix((weights, (events.user_ids, events.item_ids)), shape=(events.n_users, events.n_items))
    matrix.sum_duplicates()
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    totals[totals == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / totals) @ matrix)


def profile_vectors(events: Interactions, item_vectors: np.ndarray, settings: ProfileSettings) -> np.ndarray:
    """[n_users, dim] L2-normalised weighted means of history item embeddings (zero rows: no history)."""
    if item_vectors.shape[0] != events.n_items:
        raise RecforgeError(f"{item_vectors.shape[0]} item embeddings for {events.n_items} items")
    return l2_normalize(weight_matrix(events, settings) @ item_vectors.astype(np.float64))


def profile_vector(
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    settings: ProfileSettings,
    *,
    timestamps: np.ndarray | None = None,
    ratings: np.ndarray | None = None,
) -> np.ndarray:
    """One user's profile from an item history in time order (fold-in; [dim], zero when empty)."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if len(item_ids) == 0:
        return np.zeros(item_vectors.shape[1], dtype=np.float32)
    weights = history_weights(timestamps, ratings, settings, n=len(item_ids))
    return l2_normalize(weights @ item_vectors[item_ids].astype(np.float64) / weights.sum())


def blend(profile: np.ndarray, text_vector: np.ndarray | None, weight: float) -> np.ndarray:
    """Mix a history profile with the user's own text embedding (``weight`` on the text)."""
    if text_vector is None or weight <= 0 or not np.any(text_vector):
        return profile
    if not np.any(profile):
        return l2_normalize(text_vector)
    return l2_normalize((1.0 - weight) * profile + weight * text_vector)


def item_genres(items: pd.DataFrame) -> list[list[str]]:
    """Per item, its genres ('|' or ',' separated strings, or lists)."""
    if "genres" not in items.columns:
        return [[] for _ in range(len(items))]
    out = []
    for value in items["genres"].tolist():
        if isinstance(value, (list, tuple, np.ndarray)):
            out.append([str(v).strip() for v in value if str(v).strip()])
        elif value is None or (isinstance(value, float) and value != value):
            out.append([])
        else:
            sep = "|" if "|" in str(value) else ","
            out.append([g.strip() for g in str(value).split(sep) if g.strip()])
    return out


def keyword_fields(fields: Sequence[str]) -> list[str]:
    """Fields that carry descriptive words (titles and genres are handled separately)."""
    chosen = [f for f in fields if f not in ("title", "genres")]
    return chosen or list(fields)


def _top(matrix: sp.csr_matrix, vocabulary: np.ndarray, k: int) -> list[list[str]]:
    out = []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        cols, values = matrix.indices[start:end], matrix.data[start:end]
        order = np.lexsort((vocabulary[cols], -values))[:k]
        out.append([str(vocabulary[cols[i]]) for i in order])
    return out


def top_keywords_and_genres(
    weights: sp.csr_matrix, items: pd.DataFrame, fields: Sequence[str], k: int = 10
) -> tuple[list[list[str]], list[list[str]]]:
    """Per user, the ``k`` keywords and genres with the largest history weight."""
    from sklearn.feature_extraction.text import CountVectorizer

    present = [f for f in keyword_fields(fields) if f in items.columns]
    texts = items[present].astype("string").fillna("").agg(" ".join, axis=1).tolist() if present else [""] * len(items)

    def analyzer(text: str) -> list[str]:
        return [t for t in set(tokenize(text, stop_words=True, min_length=2)) if not t.isdigit()]

    def incidence(analyze) -> tuple[sp.csr_matrix, np.ndarray]:
        try:
            vectorizer = CountVectorizer(analyzer=analyze, binary=True)
            matrix = vectorizer.fit_transform(texts if analyze is analyzer else range(len(items)))
            return matrix.astype(np.float64), vectorizer.get_feature_names_out().astype(str)
        except ValueError:  # empty vocabulary
            return sp.csr_matrix((len(items), 0)), np.array([], dtype=str)

    genres = item_genres(items)
    word_items, words = incidence(analyzer)
    genre_items, genre_names = incidence(lambda i: genres[i])
    keywords = _top(sp.csr_matrix(weights @ word_items), words, k)
    top_genres = _top(sp.csr_matrix(weights @ genre_items), genre_names, k)
    return keywords, top_genres


@dataclass
class UserProfiles:
    """Profiles of one event set (part ``val`` or ``full``); rows follow the dense user index."""

    user_ids: list[Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    text_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    has_text: np.ndarray | None = None
    counts: np.ndarray | None = None
    keywords: list[list[str]] = field(default_factory=list)
    genres: list[list[str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def vector(self, encoder: str, user: int, *, text_weight: float = 0.0) -> np.ndarray:
        """The profile of dense user ``user``, optionally blended with their own text."""
        text = self.text_vectors.get(encoder)
        return blend(self.vectors[encoder][user], None if text is None else text[user], text_weight)

    def summary(self, user: int) -> dict[str, Any]:
        """JSON-friendly portrait of one user (for explanations and the service)."""
        return {
            "user_id": self.user_ids[user],
            "events": int(self.counts[user]) if self.counts is not None else None,
            "keywords": self.keywords[user] if self.keywords else [],
            "genres": self.genres[user] if self.genres else [],
            "has_text": bool(self.has_text[user]) if self.has_text is not None else False,
        }

    def save(self, directory: Path) -> None:
        """``<encoder>.npz`` per encoder and ``users.json``, swapped in atomically."""
        with atomic_dir(directory) as staging:
            for name, vectors in self.vectors.items():
                text = self.text_vectors.get(name, np.zeros_like(vectors))
                np.savez(
                    staging / f"{name}.npz",
                    vectors=vectors.astype(np.float32),
                    text_vectors=text.astype(np.float32),
                    has_text=self.has_text if self.has_text is not None else np.zeros(len(vectors), bool),
                    counts=self.counts if self.counts is not None else np.zeros(len(vectors), np.int32),
                )
            (staging / "users.json").write_text(
                json.dumps(
                    {
                        "user_ids": [plain(u) for u in self.user_ids],
                        "encoders": sorted(self.vectors),
                        "keywords": self.keywords,
                        "genres": self.genres,
                        "settings": self.settings,
                    }
                )
            )

    @classmethod
    def load_optional(cls, directory: Path, encoders: Sequence[str] | None = None) -> UserProfiles | None:
        """:meth:`load`, or None when ``directory`` holds no profiles (encode ran with ``encode.profiles: false``,
        or a package without them)."""
        return cls.load(directory, encoders) if (Path(directory) / "users.json").exists() else None

    @classmethod
    def load_available(cls, directory: Path, encoders: Sequence[str]) -> UserProfiles | None:
        """:meth:`load` of those ``encoders`` whose vectors ``directory`` holds; None when it holds none of them
        (or no profiles at all)."""
        available = [name for name in encoders if (Path(directory) / f"{name}.npz").exists()]
        return cls.load_optional(directory, available) if available else None

    @classmethod
    def load(cls, directory: Path, encoders: Sequence[str] | None = None) -> UserProfiles:
        directory = Path(directory)
        meta_path = directory / "users.json"
        if not meta_path.exists():
            raise RecforgeError(f"{directory}: no user profiles; run `recforge stage encode`")
        meta = json.loads(meta_path.read_text())
        profiles = cls(
            user_ids=meta["user_ids"], keywords=meta["keywords"], genres=meta["genres"], settings=meta["settings"]
        )
        for name in encoders if encoders is not None else meta["encoders"]:
            path = directory / f"{name}.npz"
            if not path.exists():
                raise RecforgeError(f"{path}: no profiles for encoder '{name}'; add it to encode.encoders")
            with np.load(path, allow_pickle=False) as data:
                profiles.vectors[name] = data["vectors"]
                profiles.text_vectors[name] = data["text_vectors"]
                profiles.has_text = data["has_text"]
                profiles.counts = data["counts"]
        return profiles


def build_profiles(
    events: Interactions,
    maps: IdMaps,
    items: pd.DataFrame,
    item_vectors: dict[str, np.ndarray],
    settings: ProfileSettings,
    *,
    fields: Sequence[str] = ("title", "text", "genres"),
    user_text_vectors: dict[str, np.ndarray] | None = None,
    has_text: np.ndarray | None = None,
) -> UserProfiles:
    """Profiles of every user in ``maps`` from ``events`` (users without events get zero vectors)."""
    weights = weight_matrix(events, settings)
    keywords, genres = top_keywords_and_genres(weights, items, fields, settings.keywords)
    profiles = UserProfiles(
        user_ids=list(maps.user_ids),
        counts=np.bincount(events.user_ids, minlength=events.n_users).astype(np.int32),
        keywords=keywords,
        genres=genres,
        settings=settings.to_dict(),
        has_text=has_text if has_text is not None else np.zeros(events.n_users, dtype=bool),
    )
    for name, vectors in item_vectors.items():
        profiles.vectors[name] = l2_normalize(weights @ vectors.astype(np.float64))
        if user_text_vectors and name in user_text_vectors:
            profiles.text_vectors[name] = user_text_vectors[name]
    return profiles


def user_texts(
    users: pd.DataFrame | None, maps: IdMaps, fields: Sequence[str] = ("text",)
) -> tuple[list[str], np.ndarray]:
    """Each dense user's own text (from the users table) and whether it is non-empty."""
    texts = [""] * len(maps.user_ids)
    if users is not None and len(users):
        present = [f for f in fields if f in users.columns]
        if present:
            joined = users[present].astype("string").fillna("").agg(" ".join, axis=1).str.strip()
            index = maps.user_index(users["user_id"])
            for row, text in zip(index, joined.tolist()):
                if row >= 0:
                    texts[row] = text
    has_text = np.array([bool(t) for t in texts], dtype=bool)
    return texts, has_text


def part_dir(params: Any, part: str) -> Path:
    """Where the encode stage writes the profiles of ``part`` ('val' from train, 'full' from train + val)."""
    if part not in PARTS:
        raise RecforgeError(f"profile part must be one of {sorted(PARTS)}, not {part!r}")
    return Path(params.paths.profiles_dir) / part


def load_profiles(params: Any, part: str = "full", encoders: Sequence[str] | None = None) -> UserProfiles:
    """Profiles written by the encode stage (``part``: 'val' from train, 'full' from train + val)."""
    return UserProfiles.load(part_dir(params, part), encoders)
