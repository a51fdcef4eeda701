"""Candidate features for the second stage (the re-ranker).

One :class:`PartData` bundles what a feature row may use for one evaluation
part, so that no feature ever sees the part's own target:

- part ``val``: candidates from the lists of models fitted on train, history =
  train events; the validation events are the labels (re-ranker training);
- part ``test``: candidates from the lists of models refitted on train + val,
  history = train + val events; the test events are never read here.

:func:`recforge.candidates.candidate_frame` builds the union of every model's
top-N lists and :func:`build_features` adds one column per feature; rows are
sorted by user so that consecutive blocks are the ranking groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.candidates import safe_name
from recforge.interactions import IdMaps, Interactions
from recforge.ranking import batched, reciprocal_rank_fusion

log = logging.getLogger(__name__)

DAY = 86_400
# the item's events in the last N days up to the user's cut-off: feature name -> N (FeatureContext._timeline)
TIMELINE_WINDOWS = {"item_pop_day": 1, "item_pop_user_window": 30, "item_pop_recent": 90}
LAST_N = 5  # trans_last5 / sim_*_last5 / sim_*_max5 look at the last LAST_N items
SIM_ROWS = 65_536  # candidate rows whose embeddings are gathered at once (FeatureContext._similarities)
WINDOW_BASE = np.int64(1) << np.int64(34)  # item * base + time: one sorted key per history event
DENSE_TRANSITIONS_MAX = (
    8_192  # items: up to this catalogue size the transition counts are a dense float32 table (256 MiB)
)

# feature groups (for ablations): name -> predicate on a column name
TEXT_PREFIXES = ("sim_",)
LLM_PREFIXES = ("llm_",)
SENTIMENT_PREFIXES = ("sent_",)
# features that read the timeline: other users' events up to this user's cut-off (their last event).
# Each reads only events at or before the cut-off, so none carries information from after it
# (under leave-last-out, other users' later events are in the training history)
TIMELINE_FEATURES = (*TIMELINE_WINDOWS, "item_last_gap_days", "item_age_days")


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
    # user profile vectors per encoder, as the encode stage wrote them (recforge.profiles);
    # an encoder missing here gets its profiles computed from ``history`` with ``profile_settings``
    profiles: dict[str, np.ndarray] = field(default_factory=dict)


def _pairs(matrix: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` for every i, densely."""
    if len(rows) == 0:
        return np.zeros(0)
    matrix = sp.csr_matrix(matrix)
    return np.asarray(matrix[rows, cols]).ravel().astype(np.float64)


def transition_matrix(history: Interactions) -> sp.csr_matrix:
    """Item x item counts of consecutive pairs (a -> b) in the users' time-ordered histories."""
    same_user = history.user_ids[1:] == history.user_ids[:-1]
    sources, targets = history.item_ids[:-1][same_user], history.item_ids[1:][same_user]
    matrix = sp.csr_matrix((np.ones(len(sources)), (sources, targets)), shape=(history.n_items, history.n_items))
    matrix.sum_duplicates()
    return matrix


def incidence(values: Sequence[Sequence[str]]) -> sp.csr_matrix:
    """Binary item x term matrix from per-item term lists."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for row, terms in enumerate(values):
        for term in set(terms):
            cols.append(vocabulary.setdefault(term, len(vocabulary)))
            rows.append(row)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(values), max(len(vocabulary), 1)))


def item_keywords(items: pd.DataFrame, fields: Sequence[str]) -> list[list[str]]:
    """Per item, the distinct content words of its descriptive fields (not title or genres)."""
    from recforge.profiles import keyword_fields
    from recforge.text import tokenize

    present = [f for f in keyword_fields(fields) if f in items.columns and f not in ("title", "genres")]
    if not present:
        return [[] for _ in range(len(items))]
    texts = items[present].astype("string").fillna("").agg(" ".join, axis=1).tolist()
    return [[t for t in set(tokenize(text, stop_words=True, min_length=3)) if not t.isdigit()] for text in texts]


def build_features(
    frame: pd.DataFrame,
    data: PartData,
    *,
    llm_scorer: Callable[[pd.DataFrame, PartData], np.ndarray] | None = None,
) -> pd.DataFrame:
    """A :func:`candidate_frame` with every feature column added (a new frame).

    Shorthand for ``FeatureContext(data).add(frame)``; to featurise many
    blocks of users against one history, build the context once.
    """
    return FeatureContext(data).add(frame, llm_scorer=llm_scorer)


class FeatureContext:
    """What the features of one part read, computed once from its history; rows are then featurised per block.

    Everything here is per user or per item (O(users + items + events)); no
    user x item product is ever materialised, so featurising a block of
    candidate rows costs memory proportional to the block. Feature columns
    (see :meth:`add`) are float32.
    """

    def __init__(self, data: PartData) -> None:
        from recforge.profiles import item_genres

        self.data = data
        history = data.history
        bounds = history.bounds
        self.counts = np.diff(bounds).astype(np.float64)
        has = self.counts > 0
        self.last_ts = np.zeros(history.n_users, dtype=np.int64)
        self.first_ts = np.zeros(history.n_users, dtype=np.int64)
        self.last_ts[has] = history.timestamps[bounds[1:][has] - 1]
        self.first_ts[has] = history.timestamps[bounds[:-1][has]]
        # the user's last LAST_N items, most recent first (-1: shorter history)
        self.last = np.full((history.n_users, LAST_N), -1, dtype=np.int64)
        for offset in range(LAST_N):
            position = bounds[1:] - 1 - offset
            valid = position >= bounds[:-1]
            self.last[valid, offset] = history.item_ids[position[valid]]

        self.item_counts = history.item_counts
        self.now = history.last_timestamp()  # the history's last event (a session ends here)
        self.first_seen = np.full(history.n_items, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(self.first_seen, history.item_ids, history.timestamps.astype(np.int64))
        self.rating_sums = (
            np.bincount(history.item_ids, weights=history.ratings, minlength=history.n_items)
            if history.ratings is not None
            else None
        )
        self.time0 = int(history.timestamps.min(initial=0)) - 1
        self.window_keys = np.sort(
            history.item_ids.astype(np.int64) * WINDOW_BASE + (history.timestamps.astype(np.int64) - self.time0)
        )
        transitions = transition_matrix(history)
        # a dense table when it is small: one gather per row instead of a sparse search (25x faster at 10M events)
        self.transitions = (
            transitions.toarray().astype(np.float32) if history.n_items <= DENSE_TRANSITIONS_MAX else transitions
        )

        self.embeddings = {}
        for name, vectors in data.embeddings.items():
            vectors = np.asarray(vectors, dtype=np.float32)
            profiles = data.profiles.get(name)
            if profiles is None:
                profiles = _profiles(history, vectors, data.profile_settings)
            self.embeddings[safe_name(name)] = (vectors, np.asarray(profiles, dtype=np.float32))

        self.seen = history.csr
        lengths = np.asarray(self.seen.sum(axis=1)).ravel()
        self.inverse_lengths = 1.0 / np.maximum(lengths, 1.0)
        self.terms = {}
        genres = incidence(item_genres(data.items))
        if genres.nnz:
            self.terms["genre_overlap"] = genres
        keywords = incidence(item_keywords(data.items, data.text_fields))
        if keywords.nnz:
            self.terms["keyword_overlap"] = keywords

        self.sentiment = None
        if data.sentiment is not None:
            sentiment = np.nan_to_num(np.asarray(data.sentiment, dtype=np.float64))
            self.sentiment = (
                np.bincount(history.item_ids, weights=sentiment, minlength=history.n_items),
                np.bincount(history.user_ids, weights=sentiment, minlength=history.n_users),
            )

    def for_history(
        self,
        items: np.ndarray,
        *,
        timestamps: np.ndarray | None = None,
        ratings: np.ndarray | None = None,
    ) -> FeatureContext:
        """A context for one user outside the history (dense user 0), e.g. an anonymous session.

        Item-side tables (popularity, first appearance, ratings, transitions,
        embeddings, term incidences) are shared with this context; the user-side
        ones are computed from ``items`` (dense, time order) alone, as
        ``__init__`` computes them per user. Without ``timestamps`` the events
        are placed one second apart, ending at the history's last timestamp
        ("now" for the package). O(len(items)), so the service can re-rank a
        session per request.
        """
        import copy

        from recforge.profiles import ProfileSettings, profile_vector

        items = np.asarray(items, dtype=np.int64)
        n = len(items)
        if timestamps is None:
            timestamps = self.now - (n - 1 - np.arange(n, dtype=np.int64))
        timestamps = np.asarray(timestamps, dtype=np.int64)
        ctx = copy.copy(self)
        ctx.counts = np.array([float(n)])
        ctx.last_ts = np.array([timestamps[-1] if n else 0], dtype=np.int64)
        ctx.first_ts = np.array([timestamps[0] if n else 0], dtype=np.int64)
        ctx.last = np.full((1, LAST_N), -1, dtype=np.int64)
        recent = items[::-1][:LAST_N]
        ctx.last[0, : len(recent)] = recent
        distinct = np.unique(items)
        n_items = self.data.history.n_items
        ctx.seen = sp.csr_matrix(
            (np.ones(len(distinct)), (np.zeros(len(distinct), dtype=np.int64), distinct)), shape=(1, n_items)
        )
        ctx.inverse_lengths = np.array([1.0 / max(len(distinct), 1)])
        settings = self.data.profile_settings or ProfileSettings()
        ctx.embeddings = {
            key: (
                vectors,
                np.asarray(
                    profile_vector(items, vectors, settings, timestamps=timestamps, ratings=ratings), dtype=np.float32
                )[None, :],
            )
            for key, (vectors, _) in self.embeddings.items()
        }
        if self.sentiment is not None:  # no review text for a session: the user's mean sentiment is unknown
            ctx.sentiment = (self.sentiment[0], np.zeros(1))
        return ctx

    def add(
        self,
        frame: pd.DataFrame,
        *,
        llm_scorer: Callable[[pd.DataFrame, PartData], np.ndarray] | None = None,
    ) -> pd.DataFrame:
        """A :func:`candidate_frame` block with every feature column added (a new frame).

        Columns added: ``n_models`` (how many models proposed the item), ``rrf``
        (sum of 1/(10 + rank)), ``user_history``, ``user_span_days``,
        ``item_pop``, the timeline features of :meth:`_timeline` (``item_pop_day``
        / ``item_pop_user_window`` / ``item_pop_recent``, ``item_last_gap_days``,
        ``item_age_days``: only events up to the user's last one),
        ``item_rating`` (mean), ``trans_last1`` / ``trans_last5`` (how often the
        candidate followed the user's last 1 / last 5 items in anyone's history,
        the last 5 weighted 1/5 each), per encoder ``sim_<enc>_profile`` /
        ``sim_<enc>_last1`` / ``sim_<enc>_last5`` / ``sim_<enc>_max5``,
        ``genre_overlap``, ``keyword_overlap``, with review text ``sent_item`` /
        ``sent_user``, and with an LLM scorer ``llm_logprob``.
        """
        rank_cols = [c for c in frame.columns if c.endswith("_rank")]
        columns = self.columns(
            frame["user"].to_numpy(), frame["item"].to_numpy(), frame[rank_cols].to_numpy(np.float64)
        )
        frame = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)  # one block, not one insert each
        if llm_scorer is not None:
            frame["llm_logprob"] = np.asarray(llm_scorer(frame, self.data), dtype=np.float32)
        return frame

    def columns(self, users: np.ndarray, items: np.ndarray, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """The feature columns of :meth:`add` (float32, in its order) for dense ``users`` / ``items`` rows and
        their ``ranks`` ([rows, models], NaN where a model did not propose the item), without a frame: the
        online re-ranker's path."""
        columns: dict[str, np.ndarray] = {}
        columns["n_models"] = np.isfinite(ranks).sum(axis=1)
        columns["rrf"] = reciprocal_rank_fusion(ranks)
        self._counts(columns, users, items)
        last = self.last[users]
        present = last >= 0
        weights = 1.0 / np.maximum(present.sum(axis=1), 1)
        self._sequence(columns, items, last, present, weights)
        self._similarities(columns, users, items, last, present, weights)
        self._overlaps(columns, users, items)
        if self.sentiment is not None:
            item_sum, user_sum = self.sentiment
            counts, item_counts = self.counts[users], self.item_counts[items]
            columns["sent_item"] = np.where(item_counts > 0, item_sum[items] / np.maximum(item_counts, 1), np.nan)
            columns["sent_user"] = np.where(counts > 0, user_sum[users] / np.maximum(counts, 1), np.nan)
        return {name: np.asarray(values, dtype=np.float32) for name, values in columns.items()}

    def _counts(self, columns: dict[str, np.ndarray], users: np.ndarray, items: np.ndarray) -> None:
        """History length and span, item popularity (overall, recent, in the user's window), age, rating."""
        counts, item_counts, last_ts = self.counts[users], self.item_counts[items], self.last_ts[users]
        known = item_counts > 0
        columns["user_history"] = counts
        columns["user_span_days"] = (last_ts - self.first_ts[users]) / DAY
        columns["item_pop"] = np.log1p(item_counts)
        self._timeline(columns, items, last_ts)
        if self.rating_sums is not None:
            columns["item_rating"] = np.where(known, self.rating_sums[items] / np.maximum(item_counts, 1), np.nan)

    def _sequence(self, columns, items: np.ndarray, last: np.ndarray, present: np.ndarray, weights) -> None:
        """How often the candidate followed the user's last 1 / last 5 items in anyone's history."""
        columns["trans_last1"] = np.where(present[:, 0], self._transitions(np.maximum(last[:, 0], 0), items), 0.0)
        trans5 = np.zeros(len(items))
        for offset in range(LAST_N):
            valid = present[:, offset]
            trans5[valid] += self._transitions(last[valid, offset], items[valid])
        columns["trans_last5"] = trans5 * weights

    def _similarities(self, columns, users, items, last: np.ndarray, present: np.ndarray, weights) -> None:
        """Per encoder: the candidate's cosine to the user's profile and to the last 1 / 5 items.

        The gathered vectors (rows x dim each) are built SIM_ROWS rows at a time: a block of 3.7M candidate rows
        with 384-dimensional embeddings held three such copies whole, 17 GiB at a million events."""
        n = len(items)
        for key, (vectors, profiles) in self.embeddings.items():
            profile_sims = np.empty(n, dtype=np.float32)
            sims = np.full((n, LAST_N), np.nan, dtype=np.float32)
            for part in batched(n, SIM_ROWS):
                candidate = vectors[items[part]]
                profile_sims[part] = np.einsum("ij,ij->i", profiles[users[part]], candidate)
                chunk, chunk_last, chunk_present = sims[part], last[part], present[part]
                for offset in range(LAST_N):
                    valid = chunk_present[:, offset]
                    chunk[valid, offset] = np.einsum("ij,ij->i", vectors[chunk_last[valid, offset]], candidate[valid])
                del candidate
            columns[f"sim_{key}_profile"] = profile_sims
            columns[f"sim_{key}_last1"] = np.nan_to_num(sims[:, 0])
            columns[f"sim_{key}_last5"] = np.nansum(sims, axis=1) * weights
            with np.errstate(invalid="ignore"):
                columns[f"sim_{key}_max5"] = np.where(
                    present[:, 0], np.nanmax(np.where(present, sims, -np.inf), axis=1), np.nan
                )
            del sims

    def _overlaps(self, columns, users: np.ndarray, items: np.ndarray) -> None:
        """Genre and keyword overlap between the candidate and the user's history."""
        if len(users) and self.terms:
            lo, hi = int(users.min()), int(users.max()) + 1
            block = sp.diags(self.inverse_lengths[lo:hi]) @ self.seen[lo:hi]
            for name, item_terms in self.terms.items():
                columns[name] = _overlap(sp.csr_matrix(block @ item_terms), item_terms, users - lo, items)
        elif self.terms:
            columns.update({name: np.zeros(0) for name in self.terms})

    def _transitions(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """How often ``targets[i]`` directly followed ``sources[i]`` in anyone's history."""
        if isinstance(self.transitions, np.ndarray):
            return self.transitions[sources, targets].astype(np.float64)
        return _pairs(self.transitions, sources, targets)

    def _timeline(self, columns: dict[str, np.ndarray], items: np.ndarray, last_ts: np.ndarray) -> None:
        """The item's timeline as it stood at the user's cut-off (their last event): no later event is read.

        ``item_pop_day`` / ``item_pop_user_window`` / ``item_pop_recent``: events
        in the 1 / 30 / 90 days up to the cut-off (log1p); ``item_last_gap_days``:
        days from the item's latest event at or before the cut-off to it;
        ``item_age_days``: days from its first event (NaN when it has none yet).
        """
        ends = last_ts.astype(np.int64) - self.time0
        base = items.astype(np.int64) * WINDOW_BASE
        order = np.argsort(base + ends, kind="stable")  # one order for every window: their queries sort alike
        hi = _sorted_search(self.window_keys, base + ends, order)
        for name, days in TIMELINE_WINDOWS.items():
            lo = _sorted_search(self.window_keys, base + np.maximum(ends - int(days * DAY), 0), order)
            columns[name] = np.log1p((hi - lo).astype(np.float64))
        previous = self.window_keys[np.maximum(hi - 1, 0)]
        has = (hi > 0) & (previous // WINDOW_BASE == items)
        columns["item_last_gap_days"] = np.where(has, (ends - previous % WINDOW_BASE) / DAY, np.nan)
        first_seen = self.first_seen[items]
        columns["item_age_days"] = np.where(first_seen <= last_ts, (last_ts - first_seen) / DAY, np.nan)


def _sorted_search(keys: np.ndarray, queries: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``np.searchsorted(keys, queries, side="right")``, asking in ``order`` (an argsort of these or of
    nearly the same queries; 8x faster on a 10M-key array that does not fit in cache: consecutive searches
    touch nearby keys). The result does not depend on ``order``."""
    out = np.empty(len(queries), dtype=np.int64)
    out[order] = np.searchsorted(keys, queries[order], side="right")
    return out


def _overlap(user_terms: sp.csr_matrix, item_terms: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per row, the mean over the item's terms of ``user_terms[rows[i], term]`` (NaN: the item has no terms).

    ``user_terms[u, t]`` is the share of u's history carrying term t; the
    (row, term) pairs are looked up directly, so the cost is the candidates'
    term count, never rows x the user's vocabulary.
    """
    n_terms = np.diff(item_terms.indptr)[items]
    total = int(n_terms.sum())
    row_of_pair = np.repeat(np.arange(len(items)), n_terms)
    within = np.arange(total) - np.repeat(np.cumsum(n_terms) - n_terms, n_terms)
    terms = item_terms.indices[np.repeat(item_terms.indptr[items], n_terms) + within]
    dots = np.bincount(row_of_pair, weights=_pairs(user_terms, rows[row_of_pair], terms), minlength=len(items))
    return np.where(n_terms > 0, dots / np.maximum(n_terms, 1), np.nan)


def _profiles(history: Interactions, vectors: np.ndarray, settings: Any) -> np.ndarray:
    """User profiles (recency/rating-weighted mean of history embeddings, see recforge.profiles)."""
    from recforge.profiles import ProfileSettings, profile_vectors

    return profile_vectors(history, vectors, settings or ProfileSettings())
