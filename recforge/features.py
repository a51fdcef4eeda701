"""Candidate features for the second stage (the re-ranker) and explanation evidence.

One :class:`PartData` bundles what a feature row may use for one evaluation
part, so that no feature ever sees the part's own target:

- part ``val``: candidates from the lists of models fitted on train, history =
  train events; the validation events are the labels (re-ranker training);
- part ``test``: candidates from the lists of models refitted on train + val,
  history = train + val events; the test events are never read here.

:func:`candidate_frame` builds the union of every model's top-N lists and
:func:`build_features` adds one column per feature; rows are sorted by user so
that consecutive blocks are the ranking groups.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.interactions import IdMaps, Interactions

log = logging.getLogger(__name__)

DAY = 86_400
RECENT_DAYS = 30
GLOBAL_RECENT_DAYS = 90

# feature groups (for ablations): name -> predicate on a column name
TEXT_PREFIXES = ("sim_",)
LLM_PREFIXES = ("llm_",)


def safe_name(name: str) -> str:
    """A feature-name-safe version of a model or encoder name (LightGBM rejects JSON punctuation)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name))


@dataclass
class PartData:
    """Everything features for one part may read.

    ``history``: the events the part's candidate models were fitted on (train
    for ``val``, train + val for ``test``). ``lists``: model name -> that
    model's lists for the part (original ids). ``embeddings``: encoder name ->
    L2-normalised item embeddings [n_items, dim]. ``sentiment``: per history
    event, a review sentiment in [-1, 1] (None when there is no review text).
    """

    part: str
    history: Interactions
    maps: IdMaps
    items: pd.DataFrame
    lists: dict[str, pd.DataFrame]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    sentiment: np.ndarray | None = None
    text_fields: Sequence[str] = ("text",)
    profile_settings: Any = None


def candidate_frame(lists: Mapping[str, pd.DataFrame], maps: IdMaps, per_model: int) -> pd.DataFrame:
    """Union of every model's top-``per_model`` items per user, one row per (user, item).

    Columns: ``user``/``item`` (dense), ``user_id``/``item_id`` (original),
    ``<model>_score``, ``<model>_rank`` (NaN where the model did not propose
    the item) and ``<model>_gap`` (score minus the model's best score for the
    user). Rows are sorted by user, then item.
    """
    merged: pd.DataFrame | None = None
    for name, frame in lists.items():
        key = safe_name(name)
        top = frame[frame["rank"] <= per_model]
        block = pd.DataFrame(
            {
                "user": maps.user_index(top["user_id"]),
                "item": maps.item_index(top["item_id"]),
                f"{key}_score": top["score"].to_numpy(np.float64),
                f"{key}_rank": top["rank"].to_numpy(np.float64),
            }
        )
        block = block[(block["user"] >= 0) & (block["item"] >= 0)]
        block = block.drop_duplicates(["user", "item"])
        best = block.groupby("user")[f"{key}_score"].transform("max")
        block[f"{key}_gap"] = block[f"{key}_score"] - best
        merged = block if merged is None else merged.merge(block, on=["user", "item"], how="outer")
    if merged is None:
        raise ValueError("no candidate lists")
    merged = merged.sort_values(["user", "item"], kind="stable").reset_index(drop=True)
    merged["user"] = merged["user"].astype(np.int64)
    merged["item"] = merged["item"].astype(np.int64)
    merged.insert(2, "user_id", maps.user_ids.to_numpy()[merged["user"].to_numpy()])
    merged.insert(3, "item_id", maps.item_ids.to_numpy()[merged["item"].to_numpy()])
    return merged


def model_columns(frame: pd.DataFrame, model: str) -> list[str]:
    key = safe_name(model)
    return [c for c in (f"{key}_score", f"{key}_rank", f"{key}_gap") if c in frame.columns]


def _last_items(history: Interactions, n: int) -> sp.csr_matrix:
    """User x item matrix with weight 1/m on each of the user's last m <= n history items."""
    bounds = np.searchsorted(history.user_ids, np.arange(history.n_users + 1))
    position_from_end = np.repeat(bounds[1:], np.diff(bounds)) - np.arange(len(history))
    keep = position_from_end <= n
    users, items = history.user_ids[keep], history.item_ids[keep]
    counts = np.bincount(users, minlength=history.n_users).astype(np.float64)
    values = 1.0 / counts[users]
    matrix = sp.csr_matrix((values, (users, items)), shape=(history.n_users, history.n_items))
    matrix.sum_duplicates()
    return matrix


def _pairs(matrix: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` for every i, densely."""
    matrix = sp.csr_matrix(matrix)
    return np.asarray(matrix[rows, cols]).ravel().astype(np.float64)


def _row_dot(left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """``left[rows[i]] . right[cols[i]]`` for every i, in chunks."""
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        end = start + chunk
        out[start:end] = np.einsum("ij,ij->i", left[rows[start:end]], right[cols[start:end]])
    return out


def transition_matrix(history: Interactions) -> sp.csr_matrix:
    """Item x item counts of consecutive pairs (a -> b) in the users' time-ordered histories."""
    same_user = history.user_ids[1:] == history.user_ids[:-1]
    sources, targets = history.item_ids[:-1][same_user], history.item_ids[1:][same_user]
    matrix = sp.csr_matrix(
        (np.ones(len(sources)), (sources, targets)), shape=(history.n_items, history.n_items)
    )
    matrix.sum_duplicates()
    return matrix


def _window_counts(history: Interactions, items: np.ndarray, ends: np.ndarray, days: float) -> np.ndarray:
    """Per row, the number of history events of ``items[i]`` in ``(ends[i] - days, ends[i]]``."""
    base = np.int64(1) << np.int64(34)
    times = history.timestamps.astype(np.int64) - int(history.timestamps.min(initial=0)) + 1
    keys = np.sort(history.item_ids.astype(np.int64) * base + times)
    ends = ends.astype(np.int64) - int(history.timestamps.min(initial=0)) + 1
    hi = np.searchsorted(keys, items * base + ends, side="right")
    lo = np.searchsorted(keys, items * base + np.maximum(ends - int(days * DAY), 0), side="right")
    return (hi - lo).astype(np.float64)


def incidence(values: Sequence[Sequence[str]]) -> sp.csr_matrix:
    """Binary item x term matrix from per-item term lists."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for row, terms in enumerate(values):
        for term in set(terms):
            cols.append(vocabulary.setdefault(term, len(vocabulary)))
            rows.append(row)
    return sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(values), max(len(vocabulary), 1))
    )


def item_keywords(items: pd.DataFrame, fields: Sequence[str]) -> list[list[str]]:
    """Per item, the distinct content words of its descriptive fields (not title or genres)."""
    from recforge.profiles import keyword_fields
    from recforge.text import tokenize

    present = [f for f in keyword_fields(fields) if f in items.columns and f not in ("title", "genres")]
    if not present:
        return [[] for _ in range(len(items))]
    texts = items[present].astype("string").fillna("").agg(" ".join, axis=1).tolist()
    return [[t for t in set(tokenize(text, stop_words=True, min_length=3)) if not t.isdigit()] for text in texts]


def _overlap(history: Interactions, item_terms: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mean share of the user's history carrying each of the candidate's terms (0 when it has none)."""
    seen = history.csr
    lengths = np.asarray(seen.sum(axis=1)).ravel()
    lengths[lengths == 0] = 1.0
    user_terms = sp.csr_matrix(sp.diags(1.0 / lengths) @ seen @ item_terms)
    totals = np.asarray(item_terms.sum(axis=1)).ravel()
    dots = np.asarray(user_terms[users].multiply(item_terms[items]).sum(axis=1)).ravel()
    return np.where(totals[items] > 0, dots / np.maximum(totals[items], 1.0), np.nan)


def build_features(
    frame: pd.DataFrame,
    data: PartData,
    *,
    llm_scorer: Callable[[pd.DataFrame, PartData], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Add every feature column to a :func:`candidate_frame` (in place and returned).

    Columns added: ``n_models`` (how many models proposed the item), ``rrf``
    (sum of 1/(10 + rank)), ``user_history``, ``user_span_days``,
    ``item_pop`` / ``item_pop_recent`` (global last 90 days) /
    ``item_pop_user_window`` (30 days before the user's last event),
    ``item_age_days`` (user's last event minus the item's first event),
    ``item_rating`` (mean), ``trans_last1`` / ``trans_last5`` (how often the
    candidate followed the user's last 1 / last 5 items in anyone's history),
    per encoder ``sim_<enc>_profile`` / ``sim_<enc>_last1`` /
    ``sim_<enc>_last5`` / ``sim_<enc>_max5``, ``genre_overlap``,
    ``keyword_overlap``, with review text ``sent_item`` / ``sent_user``, and
    with an LLM scorer ``llm_logprob``.
    """
    history = data.history
    users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
    rank_cols = [c for c in frame.columns if c.endswith("_rank")]
    ranks = frame[rank_cols].to_numpy(np.float64)
    frame["n_models"] = np.isfinite(ranks).sum(axis=1).astype(np.float64)
    frame["rrf"] = np.nansum(1.0 / (10.0 + ranks), axis=1)

    counts = np.bincount(history.user_ids, minlength=history.n_users).astype(np.float64)
    bounds = np.searchsorted(history.user_ids, np.arange(history.n_users + 1))
    has = np.diff(bounds) > 0
    last_ts = np.zeros(history.n_users, dtype=np.int64)
    first_ts = np.zeros(history.n_users, dtype=np.int64)
    last_ts[has] = history.timestamps[bounds[1:][has] - 1]
    first_ts[has] = history.timestamps[bounds[:-1][has]]
    frame["user_history"] = counts[users]
    frame["user_span_days"] = (last_ts - first_ts)[users] / DAY

    item_counts = history.item_counts
    frame["item_pop"] = np.log1p(item_counts[items])
    horizon = history.last_timestamp()
    recent = history.timestamps > horizon - GLOBAL_RECENT_DAYS * DAY
    frame["item_pop_recent"] = np.log1p(np.bincount(history.item_ids[recent], minlength=history.n_items)[items])
    frame["item_pop_user_window"] = np.log1p(_window_counts(history, items, last_ts[users], RECENT_DAYS))
    first_seen = np.full(history.n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, history.item_ids, history.timestamps.astype(np.int64))
    age = (last_ts[users] - first_seen[items]) / DAY
    frame["item_age_days"] = np.where(item_counts[items] > 0, age, np.nan)
    if history.ratings is not None:
        sums = np.bincount(history.item_ids, weights=history.ratings, minlength=history.n_items)
        frame["item_rating"] = np.where(item_counts[items] > 0, sums[items] / np.maximum(item_counts[items], 1), np.nan)

    transitions = transition_matrix(history)
    last1, last5 = _last_items(history, 1), _last_items(history, 5)
    frame["trans_last1"] = _pairs(last1 @ transitions, users, items)
    frame["trans_last5"] = _pairs(last5 @ transitions, users, items)

    for name, vectors in data.embeddings.items():
        key = safe_name(name)
        vectors = np.asarray(vectors, dtype=np.float32)
        profiles = _profiles(history, vectors, data.profile_settings)
        frame[f"sim_{key}_profile"] = _row_dot(profiles, vectors, users, items)
        frame[f"sim_{key}_last1"] = _row_dot(np.asarray(last1 @ vectors, dtype=np.float32), vectors, users, items)
        frame[f"sim_{key}_last5"] = _row_dot(np.asarray(last5 @ vectors, dtype=np.float32), vectors, users, items)
        frame[f"sim_{key}_max5"] = _max_last(history, vectors, users, items, 5)

    from recforge.profiles import item_genres

    genres = incidence(item_genres(data.items))
    if genres.nnz:
        frame["genre_overlap"] = _overlap(history, genres, users, items)
    keywords = incidence(item_keywords(data.items, data.text_fields))
    if keywords.nnz:
        frame["keyword_overlap"] = _overlap(history, keywords, users, items)

    if data.sentiment is not None:
        sentiment = np.nan_to_num(np.asarray(data.sentiment, dtype=np.float64))
        item_sum = np.bincount(history.item_ids, weights=sentiment, minlength=history.n_items)
        user_sum = np.bincount(history.user_ids, weights=sentiment, minlength=history.n_users)
        frame["sent_item"] = np.where(item_counts[items] > 0, item_sum[items] / np.maximum(item_counts[items], 1), np.nan)
        frame["sent_user"] = np.where(counts[users] > 0, user_sum[users] / np.maximum(counts[users], 1), np.nan)

    if llm_scorer is not None:
        frame["llm_logprob"] = llm_scorer(frame, data)
    return frame


def _profiles(history: Interactions, vectors: np.ndarray, settings: Any) -> np.ndarray:
    """User profiles (recency/rating-weighted mean of history embeddings, see recforge.profiles)."""
    from recforge.profiles import ProfileSettings, profile_vectors

    return profile_vectors(history, vectors, settings or ProfileSettings())


def _max_last(history: Interactions, vectors: np.ndarray, users: np.ndarray, items: np.ndarray, n: int) -> np.ndarray:
    """Per row, the highest similarity between the candidate and one of the user's last ``n`` items."""
    bounds = np.searchsorted(history.user_ids, np.arange(history.n_users + 1))
    last = np.full((history.n_users, n), -1, dtype=np.int64)
    for offset in range(n):
        position = bounds[1:] - 1 - offset
        valid = position >= bounds[:-1]
        last[valid, offset] = history.item_ids[position[valid]]
    best = np.full(len(users), np.nan)
    for offset in range(n):
        history_items = last[users, offset]
        valid = history_items >= 0
        sims = np.einsum("ij,ij->i", vectors[history_items[valid]], vectors[items[valid]]).astype(np.float64)
        best[valid] = np.fmax(best[valid], sims)
    return best


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every feature column of a built frame (everything but ids and the label)."""
    return [c for c in frame.columns if c not in ("user", "item", "user_id", "item_id", "label")]


def labels_for(frame: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """1 where (user_id, item_id) is a held-out event of ``truth``, else 0."""
    keys = pd.MultiIndex.from_frame(truth[["user_id", "item_id"]])
    rows = pd.MultiIndex.from_frame(frame[["user_id", "item_id"]])
    return rows.isin(keys).astype(np.int32)


def group_sizes(frame: pd.DataFrame) -> np.ndarray:
    """Rows per consecutive user block (the frame is sorted by user)."""
    users = frame["user"].to_numpy()
    boundaries = np.flatnonzero(np.diff(users)) + 1
    return np.diff(np.concatenate([[0], boundaries, [len(users)]])).astype(np.int64)


def explanation_evidence(
    history: Interactions,
    items: pd.DataFrame,
    user: int,
    item: int,
    *,
    vectors: np.ndarray | None = None,
    text_fields: Sequence[str] = ("text",),
    k: int = 3,
) -> dict[str, Any]:
    """Grounding for an explanation of dense ``item`` for dense ``user``.

    The ``k`` history items most similar to the item (cosine over ``vectors``
    when given, else shared genres + keywords), and the genres and keywords
    the item shares with them. JSON-friendly; titles come from ``items``.
    """
    from recforge.profiles import item_genres

    sequence = history.sequences[user] if user >= 0 else np.array([], dtype=np.int64)
    sequence = np.unique(sequence)
    sequence = sequence[sequence != item]
    titles = items["title"].astype(str).tolist() if "title" in items.columns else [str(i) for i in items["item_id"]]
    all_genres = item_genres(items)
    keywords = item_keywords(items, text_fields)
    item_terms = set(all_genres[item]) | set(keywords[item])
    if len(sequence) == 0:
        similarities = np.array([])
    elif vectors is not None:
        similarities = vectors[sequence] @ vectors[item]
    else:
        similarities = np.array(
            [len(item_terms & (set(all_genres[h]) | set(keywords[h]))) / max(len(item_terms), 1) for h in sequence]
        )
    order = np.lexsort((sequence, -similarities))[:k] if len(sequence) else np.array([], dtype=np.int64)
    chosen = sequence[order]
    shared_genres = sorted({g for h in chosen for g in all_genres[h]} & set(all_genres[item]))
    genre_words = {g.lower() for g in shared_genres}
    shared_keywords = sorted(({w for h in chosen for w in keywords[h]} & set(keywords[item])) - genre_words)[:8]
    return {
        "item_id": _plain(items["item_id"].iloc[item]),
        "item_title": titles[item],
        "item_genres": all_genres[item],
        "history": [
            {
                "item_id": _plain(items["item_id"].iloc[h]),
                "title": titles[h],
                "similarity": round(float(similarities[i]), 4),
                "genres": all_genres[h],
            }
            for h, i in zip(chosen, order, strict=True)
        ],
        "shared_genres": shared_genres,
        "shared_keywords": shared_keywords,
        "history_length": int(len(history.sequences[user])) if user >= 0 else 0,
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
