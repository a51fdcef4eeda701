"""Seeded synthetic data whose item text carries the users' latent topics.

Each item belongs mainly to one topic (its genre); its title and description
words come from that topic's vocabulary. Each user prefers a few topics and
drifts towards another mix over time; item choice inside a topic follows a
Zipf-like popularity. So text encoders, CF and sequence models all have
something real to learn, and a user who watched only one topic should be
recommended that topic.

With ``reviews`` on, a share ``bad_experiences`` of the events are bad
experiences: the user tried a popular item of a topic outside their current
taste and disliked it. Every event gets a short ``review`` whose sentiment
follows that (positive for an event of the user's taste, negative for a bad
experience), with noise: 15% of reviews are neutral and 10% have the wrong
polarity. A bad experience's rating is drawn as for the event it replaced,
so the rating does not tell it apart; only the review does. Bad experiences
sit anywhere in a history, the held-out items included (so they are as hard
to predict there as in real data). The review draws use their own random
stream: with ``reviews`` off the tables are exactly those of earlier versions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recforge.params import SyntheticParams

TOPIC_NAMES = [
    "space",
    "romance",
    "horror",
    "comedy",
    "history",
    "sports",
    "cooking",
    "travel",
    "music",
    "science",
    "fantasy",
    "crime",
    "nature",
    "finance",
    "poetry",
    "medicine",
]
_SYLLABLES = ["ka", "lo", "mi", "ra", "su", "te", "vo", "ni", "pe", "zu", "da", "ri", "no", "ba", "xe", "fo"]
START_TIMESTAMP = 1_600_000_000  # 2020-09-13


def topic_name(topic: int) -> str:
    base = TOPIC_NAMES[topic % len(TOPIC_NAMES)]
    return base if topic < len(TOPIC_NAMES) else f"{base}{topic // len(TOPIC_NAMES)}"


def _vocabulary(topic: int, size: int, rng: np.random.Generator) -> list[str]:
    name = topic_name(topic)
    words = {name}
    while len(words) < size:
        syllables = rng.choice(_SYLLABLES, size=rng.integers(2, 4))
        words.add(name[:3] + "".join(syllables))
    return sorted(words)


def generate(params: SyntheticParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (interactions, items) tables in the canonical schema.

    Repeat draws of an item by the same user are dropped, so a second pass
    draws proportionally more events to land near ``num_interactions``.
    """
    interactions, items = _generate(params, params.num_interactions)
    if len(interactions) < 0.98 * params.num_interactions:
        inflated = int(params.num_interactions**2 / max(len(interactions), 1))
        interactions, items = _generate(params, inflated)
    return interactions, items


def _generate(params: SyntheticParams, num_interactions: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(params.seed)
    n_users, n_items, n_topics = params.num_users, params.num_items, params.num_topics

    vocab = [_vocabulary(t, 40, rng) for t in range(n_topics)]
    item_topics = rng.integers(0, n_topics, size=n_items)
    popularity = (1.0 / np.arange(1, n_items + 1) ** (0.8 * params.popularity_skew))[rng.permutation(n_items)]

    titles, texts = [], []
    for item, topic in enumerate(item_topics):
        words = vocab[topic]
        title_words = rng.choice(words[1:], size=2, replace=False)
        titles.append(f"{title_words[0].title()} {title_words[1].title()} {item + 1}")
        own = rng.choice(words, size=12)
        other = rng.choice(vocab[rng.integers(n_topics)], size=3)
        texts.append(" ".join(np.concatenate([own, other])))
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype=np.int64),
            "title": titles,
            "text": texts,
            "genres": [topic_name(t) for t in item_topics],
        }
    )

    # users: start mix, end mix (drift), activity
    start = rng.dirichlet(np.full(n_topics, 0.3), size=n_users)
    end = rng.dirichlet(np.full(n_topics, 0.3), size=n_users)
    activity = rng.lognormal(0.0, 0.8, size=n_users)
    counts = np.maximum(5, np.round(activity / activity.sum() * num_interactions)).astype(np.int64)
    user_of_event = np.repeat(np.arange(n_users), counts)
    position = np.concatenate([np.arange(c) for c in counts]) if n_users < 50_000 else _positions(counts)
    progress = position / np.maximum(counts[user_of_event] - 1, 1)

    mix = (1 - params.drift * progress)[:, None] * start[user_of_event] + (params.drift * progress)[:, None] * end[
        user_of_event
    ]
    topic_of_event = _sample_rows(mix, rng)

    # item inside the topic, proportional to popularity
    order = np.lexsort((np.arange(n_items), item_topics))
    sorted_topics = item_topics[order]
    bounds = np.searchsorted(sorted_topics, np.arange(n_topics + 1))
    cum = np.zeros(n_items)
    for t in range(n_topics):
        block = popularity[order[bounds[t] : bounds[t + 1]]]
        if len(block):
            cum[bounds[t] : bounds[t + 1]] = np.cumsum(block) / block.sum()
    u = rng.random(len(topic_of_event))
    picked = np.empty(len(topic_of_event), dtype=np.int64)
    for t in range(n_topics):
        events = np.nonzero(topic_of_event == t)[0]
        lo, hi = bounds[t], bounds[t + 1]
        if hi == lo:  # topic without items: fall back to any item
            picked[events] = rng.integers(0, n_items, size=len(events))
            continue
        idx = np.searchsorted(cum[lo:hi], u[events], side="left")
        picked[events] = order[lo + np.minimum(idx, hi - lo - 1)]

    user_start = START_TIMESTAMP + rng.integers(0, 365 * 86_400, size=n_users)
    gaps = rng.exponential(86_400.0, size=len(picked)).astype(np.int64) + 1
    timestamps = user_start[user_of_event] + _cumsum_by_group(gaps, counts)

    likes = mix[np.arange(len(picked)), item_topics[picked]]
    ratings = np.clip(np.round(2.0 + 6.0 * likes + rng.normal(0, 0.7, size=len(picked))), 1, 5)

    columns = {
        "user_id": user_of_event.astype(np.int64) + 1,
        "item_id": picked + 1,
        "rating": ratings.astype(np.float32),
        "timestamp": timestamps.astype(np.int64),
    }
    if params.reviews:
        review_rng = np.random.default_rng(None if params.seed is None else [params.seed, 7])
        bad = review_rng.random(len(picked)) < params.bad_experiences
        picked = picked.copy()
        picked[bad] = _bad_items(mix[bad], cum, order, bounds, n_items, review_rng)
        columns["item_id"] = picked + 1
        columns["review"] = _reviews(~bad, review_rng)
    interactions = pd.DataFrame(columns)
    interactions = _top_up(interactions.drop_duplicates(["user_id", "item_id"]), n_items, rng)
    if params.reviews:
        interactions["review"] = interactions["review"].fillna("")  # top-up events have no review
    return interactions, items


_POSITIVE = (
    ["great", "wonderful", "excellent", "amazing", "lovely", "brilliant", "enjoyable", "fantastic"],
    ["I loved it", "really enjoyed it", "would recommend it", "a perfect pick", "happy I tried it"],
)
_NEGATIVE = (
    ["boring", "awful", "terrible", "dull", "disappointing", "poor", "annoying", "bad"],
    ["I hated it", "a waste of time", "would not recommend it", "sad I tried it", "never again"],
)
# no topic names in reviews: VADER reads some ("romance", "horror") as sentiment
_NOUNS = ["title", "pick", "choice", "one"]
_NEUTRAL = [
    "Finished it over the weekend.",
    "Picked it up last month.",
    "Borrowed it last year.",
    "Read it on the train.",
]
NEUTRAL_SHARE, FLIP_SHARE = 0.15, 0.10


def _bad_items(
    mix: np.ndarray, cum: np.ndarray, order: np.ndarray, bounds: np.ndarray, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """A popular item of a topic the user has (almost) no taste for, per row of ``mix``."""
    n_topics = mix.shape[1]
    if len(mix) == 0:
        return np.empty(0, dtype=np.int64)
    outside = (mix < 0.5 / n_topics).astype(np.float64)
    outside[outside.sum(axis=1) == 0] = 1.0  # a user who likes every topic: any topic
    topics = _sample_rows(outside, rng)
    u = rng.random(len(topics))
    items = rng.integers(0, n_items, size=len(topics))  # topics without items keep these
    for t in range(n_topics):
        events = np.nonzero(topics == t)[0]
        lo, hi = bounds[t], bounds[t + 1]
        if hi > lo and len(events):
            idx = np.searchsorted(cum[lo:hi], u[events], side="left")
            items[events] = order[lo + np.minimum(idx, hi - lo - 1)]
    return items


def _reviews(good: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One short review per event: positive where ``good``, negative elsewhere, with neutral and flipped noise."""
    n = len(good)
    draw = rng.random(n)
    neutral = draw < NEUTRAL_SHARE
    positive = good ^ (draw >= 1.0 - FLIP_SHARE)
    adjective, phrase, noun = rng.integers(0, 1 << 16, size=(3, n))
    reviews = []
    for i in range(n):
        if neutral[i]:
            reviews.append(_NEUTRAL[noun[i] % len(_NEUTRAL)])
            continue
        adjectives, phrases = _POSITIVE if positive[i] else _NEGATIVE
        word = adjectives[adjective[i] % len(adjectives)]
        reviews.append(f"{word.capitalize()} {_NOUNS[noun[i] % len(_NOUNS)]}, {phrases[phrase[i] % len(phrases)]}.")
    return reviews


def _top_up(interactions: pd.DataFrame, n_items: int, rng: np.random.Generator, minimum: int = 5) -> pd.DataFrame:
    """Give users left with fewer than ``minimum`` distinct items by repeat draws some unseen ones."""
    counts = interactions.groupby("user_id").size()
    short = counts[counts < minimum]
    if short.empty:
        return interactions.reset_index(drop=True)
    extra = []
    for user, count in short.items():
        history = interactions[interactions["user_id"] == user]
        unseen = np.setdiff1d(np.arange(1, n_items + 1), history["item_id"].to_numpy())
        picks = rng.choice(unseen, size=min(minimum - count, len(unseen)), replace=False)
        last = int(history["timestamp"].max())
        extra.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "item_id": picks.astype(np.int64),
                    "rating": np.float32(3.0),
                    "timestamp": last + 3_600 * np.arange(1, len(picks) + 1, dtype=np.int64),
                }
            )
        )
    merged = pd.concat([interactions, *extra], ignore_index=True)
    return merged.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _positions(counts: np.ndarray) -> np.ndarray:
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(counts.sum()) - starts


def _cumsum_by_group(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    group_end = np.cumsum(counts)
    offsets = np.concatenate([[0], total[group_end[:-1] - 1]])
    return total - np.repeat(offsets, counts)


def _sample_rows(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a probability matrix."""
    cum = np.cumsum(probabilities, axis=1)
    draws = rng.random(len(probabilities)) * cum[:, -1]
    return np.minimum((cum < draws[:, None]).sum(axis=1), probabilities.shape[1] - 1)
