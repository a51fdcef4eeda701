"""recforge.exclusions: what a served request leaves out, and folds in, from the feedback store (fast, on a real
SQLite store; the clock of the staleness bound is a settable fake; each test names the bug it catches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge import exclusions
from recforge.exclusions import EXCLUSION_CACHE_USERS, Exclusions, asked_for, dense_feedback, leave_out
from recforge.feedback import FeedbackStore
from recforge.interactions import IdMaps


class Clock:
    """``time.monotonic`` for the module under test, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(exclusions, "time", fake)
    return fake


@pytest.fixture
def store(tmp_path) -> FeedbackStore:
    return FeedbackStore("events.sqlite3", root=tmp_path)


def add(store: FeedbackStore, user: str | int, item: str | int, kind: str, **extra) -> None:
    store.add([{"user_id": user, "item_id": item, "event": kind, **extra}])


# ---- the cache of each user's sets --------------------------------------------------------------------------


def test_defaults(store):
    # catches the defaults changed: one second of staleness, 100,000 users, no interests read
    cache = Exclusions(store)
    assert (cache.staleness_s, cache.size, cache.interests) == (1.0, EXCLUSION_CACHE_USERS, False)
    assert EXCLUSION_CACHE_USERS == 100_000
    assert isinstance(cache.staleness_s, float) and isinstance(Exclusions(store, 2, 3.0).size, int)
    assert Exclusions(store, interests=True).interests is True


def test_a_cached_set_is_reused_strictly_less_than_staleness_seconds(store, clock):
    # catches the cache never used (every request reads the store), never expiring, expiring one tick late
    # (`<=` for `<`: an entry exactly staleness_s old is stale) and the age computed from the wrong end
    cache = Exclusions(store, staleness_s=2.0)
    assert cache.get("u") == frozenset()
    add(store, "u", "bought", "purchase")
    clock.now += 1.999
    assert cache.get("u") == frozenset()  # within the bound: the cached (older) answer
    clock.now += 0.001  # exactly 2.0 s after the read
    assert cache.get("u") == {"bought"}
    add(store, "u", "hated", "dislike")
    clock.now += 1.0  # the entry is stamped with the time of its read, not of its first read
    assert cache.get("u") == {"bought"}


def test_default_staleness_is_one_second(store, clock):
    # catches the default bound changed (a worker would see another worker's feedback later than documented)
    cache = Exclusions(store)
    cache.get(5)
    add(store, 5, "x", "purchase")
    clock.now += 0.99
    assert cache.get(5) == frozenset()
    clock.now += 0.01
    assert cache.get(5) == {"x"}


def test_staleness_zero_reads_the_store_every_time_and_caches_nothing(store, clock):
    # catches staleness 0 answering from (or filling) the cache: a worker's own feedback would be missed
    cache = Exclusions(store, staleness_s=0)
    assert cache.get("u") == frozenset()
    add(store, "u", "bought", "purchase")
    assert cache.get("u") == {"bought"}
    assert len(cache._entries) == 0


def test_user_ids_are_keyed_as_text(store, clock):
    # catches the cache keyed by the raw id: the int 7 and the string "7" are the same user of the store
    cache = Exclusions(store, staleness_s=5)
    add(store, 7, "a", "purchase")
    assert cache.get(7) == {"a"}
    add(store, "7", "b", "purchase")
    assert cache.get("7") == {"a"}  # the same cached entry
    assert list(cache._entries) == ["7"]


def test_user_returns_exclusions_and_interests_oldest_first(store, clock):
    # catches the interests never read with `interests`, read without it, their order reversed, and get()
    # returning the interests instead of the excluded items
    add(store, "u", "seen", "view")
    add(store, "u", "liked", "rating", rating=4.0)
    add(store, "u", "bought", "purchase")
    add(store, "u", "hated", "dislike")
    with_interests = Exclusions(store, staleness_s=5, interests=True)
    assert with_interests.user("u") == (frozenset({"liked", "bought", "hated"}), ("seen", "liked", "bought"))
    assert with_interests.user("u") == (frozenset({"liked", "bought", "hated"}), ("seen", "liked", "bought"))
    assert with_interests.get("u") == {"liked", "bought", "hated"}
    without = Exclusions(store, staleness_s=5)
    assert without.user("u") == (frozenset({"liked", "bought", "hated"}), ())
    assert without.user("u")[1] == ()  # the cached entry keeps the empty interests too


def test_the_least_recently_used_user_leaves_first(store, clock):
    # catches the most recent user evicted instead, a hit not refreshing recency, and the bound off by one
    for user in ("a", "b", "c"):
        add(store, user, "old", "purchase")
    cache = Exclusions(store, staleness_s=10, size=2)
    cache.get("a")
    cache.get("b")
    assert list(cache._entries) == ["a", "b"]  # exactly `size` kept
    cache.get("a")  # a hit: "a" is now the most recent
    cache.get("c")
    assert list(cache._entries) == ["a", "c"]
    for user in ("a", "b", "c"):
        add(store, user, "new", "purchase")
    assert cache.get("a") == {"old"}  # still cached
    assert cache.get("b") == {"old", "new"}  # was evicted: read again
    assert list(cache._entries) == ["a", "b"]  # "c" left, the re-read "b" is the newest


def test_an_expired_entry_read_again_becomes_the_newest(store, clock):
    # catches a re-read entry kept at its old position (then evicted before users read less recently)
    cache = Exclusions(store, staleness_s=1, size=2)
    cache.get("a")
    clock.now += 0.5
    cache.get("b")
    clock.now += 0.6  # "a" expired, "b" not
    cache.get("a")
    assert list(cache._entries) == ["b", "a"]
    cache.get("c")
    assert list(cache._entries) == ["a", "c"]


def test_forget_drops_the_named_users_only(store, clock):
    # catches forget dropping nothing (this worker's own writes unseen until staleness passes), the wrong users,
    # or ids not normalised to text as the cache keys them
    cache = Exclusions(store, staleness_s=60)
    cache.get(1)
    cache.get("2")
    cache.get("3")
    add(store, 1, "x", "purchase")
    add(store, 2, "y", "purchase")
    cache.forget([1, 2, "missing"])
    assert list(cache._entries) == ["3"]
    assert cache.get("1") == {"x"} and cache.get(2) == {"y"}


# ---- dense items, list lengths and the leave-out ----------------------------------------------------------


def maps() -> IdMaps:
    return IdMaps(
        user_ids=pd.Index([10, 20], name="user_id"),
        item_ids=pd.Index(["i0", "i1", "i2", "i3"], name="item_id"),
    )


def test_dense_feedback_without_a_store_is_none():
    # catches a missing store (no feedback_url) failing instead of excluding nothing
    assert dense_feedback(None, maps(), 0) == (None, None)


def test_dense_feedback_maps_the_user_and_items_to_dense_indices(store, clock):
    # catches the dense user read as the raw id (user 1 is id 20), items new since training kept (-1 would index
    # the last item) or item 0 dropped (`> 0` for `>= 0`), and the interests' time order lost
    add(store, 20, "i0", "purchase")
    add(store, 20, "new-item", "dislike")
    add(store, 20, "i2", "view")
    add(store, 20, "i0", "click")
    add(store, 10, "i3", "purchase")
    excluded, liked = dense_feedback(Exclusions(store, staleness_s=0, interests=True), maps(), 1)
    assert excluded.dtype == np.int64 and liked.dtype == np.int64
    assert excluded.tolist() == [0]
    assert liked.tolist() == [0, 2, 0]  # purchase, view, click: oldest first
    assert dense_feedback(Exclusions(store, staleness_s=0, interests=True), maps(), 0)[0].tolist() == [3]


def test_dense_feedback_is_none_when_no_known_item_is_left(store, clock):
    # catches an empty array returned instead of None (callers treat None as "nothing to leave out")
    add(store, 10, "new-item", "purchase")
    assert dense_feedback(Exclusions(store, staleness_s=0, interests=True), maps(), 0) == (None, None)
    assert dense_feedback(Exclusions(store, staleness_s=0), maps(), 1) == (None, None)


def test_dense_feedback_reads_the_numpy_id_as_a_plain_value(store, clock):
    # catches the id passed as a numpy scalar's repr or the wrong user: the store keys users by their text
    add(store, 10, "i1", "rating", rating=1.0)
    excluded, liked = dense_feedback(Exclusions(store, staleness_s=5), maps(), 0)
    assert excluded.tolist() == [1] and liked is None


def test_asked_for():
    # catches the excluded count not added (a list shorter than k after the leave-out) or not capped at every item
    assert asked_for(5, None, 100) == 5
    assert asked_for(5, np.array([1, 2, 3]), 100) == 8
    assert asked_for(5, np.array([1, 2, 3]), 6) == 6
    assert asked_for(5, np.array([1, 2, 3]), 3) == 5  # never fewer than k
    assert asked_for(5, np.array([], dtype=np.int64), 100) == 5


def test_leave_out():
    # catches the excluded items kept (or the others dropped), the list not cut back to k, and a 2-d model answer
    # not flattened
    items, scores = np.array([[4, 1, 3, 0, 2]]), np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    kept, kept_scores = leave_out(items, scores, np.array([1, 0]), 2)
    assert kept.tolist() == [4, 3] and kept_scores.tolist() == [0.9, 0.7]
    kept, kept_scores = leave_out(items, scores, np.array([7]), 10)
    assert kept.tolist() == [4, 1, 3, 0, 2] and kept_scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    same = leave_out(items, scores, None, 1)
    assert same[0] is items and same[1] is scores  # None: the list as it is, not cut
