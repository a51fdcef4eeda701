"""The feedback event store (recforge.feedback) on real SQLite files and a real PostgreSQL server.

PostgreSQL comes from the ``pgserver`` wheel (the ``dev`` extra installs it: a postgres binary inside a
PyPI package), started in a temporary directory for this module. The PostgreSQL tests skip only when that
server cannot start here; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from recforge.data.loaders import load
from recforge.exclusions import Exclusions
from recforge.feedback import (
    MAX_BATCH,
    MAX_ID_CHARS,
    MAX_REVIEW_CHARS,
    FeedbackError,
    FeedbackStore,
    check_event,
    check_events,
)
from recforge.params import DataParams


def event(user="u1", item="i1", kind="view", **extra):
    return {"user_id": user, "item_id": item, "event": kind, **extra}


@pytest.fixture(scope="module")
def postgres_url():
    yield from postgres_server()


def postgres_server():
    """A PostgreSQL server's URL (pgserver) until the generator closes, or a skip saying why it cannot start.

    Its data directory is its own temporary directory, not pytest's: pytest removes old base temporary
    directories, and another pytest run on the same machine could remove a running server's files.
    """
    data = Path(tempfile.mkdtemp(prefix="recforge-pg-"))
    try:
        import pgserver

        server = pgserver.get_server(data, cleanup_mode="stop")
        url = server.get_uri()
    except Exception as exc:  # any reason the server cannot start here
        shutil.rmtree(data, ignore_errors=True)
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no local PostgreSQL server: {type(exc).__name__}: {exc}")
    yield url
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield FeedbackStore("feedback/events.sqlite3", root=tmp_path)
        return
    url = request.getfixturevalue("postgres_url")
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:  # each test starts from an empty database
        connection.execute("DROP TABLE IF EXISTS feedback_events, feedback_exports, schema_version")
    opened = FeedbackStore(url)
    yield opened
    opened.close()


# ---- limits, one line each ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (event(kind="like"), r"^event: must be one of view\|click\|purchase\|rating\|dislike, got 'like'$"),
        (event(kind="rating"), r"^rating: a 'rating' event needs a number"),
        (event(kind="rating", rating=5.5), r"^rating: must be in \[0, 5\], got 5.5$"),
        (event(kind="rating", rating=float("nan")), r"^rating: a 'rating' event needs a number"),
        (event(kind="rating", rating=True), r"^rating: a 'rating' event needs a number"),
        (event(kind="purchase", rating=4), r"^rating: only a 'rating' event carries one"),
        (event(user="x" * (MAX_ID_CHARS + 1)), rf"^user_id: must be 1 to {MAX_ID_CHARS} characters, got 129$"),
        (event(item=""), r"^item_id: must be 1 to 128 characters, got 0$"),
        (event(user=True), r"^user_id: must be a string or an integer, got bool$"),
        (event(item="a\x00b"), r"^item_id: must not contain control characters$"),
        (event(review="x" * (MAX_REVIEW_CHARS + 1)), rf"^review: at most {MAX_REVIEW_CHARS} characters"),
        (event(review="bad\x00"), r"^review: must not contain NUL characters$"),
        (event(timestamp=1.5), r"^timestamp: must be integer epoch seconds, got float$"),
        (event(timestamp=True), r"^timestamp: must be integer epoch seconds, got bool$"),
        (event(timestamp=-1), r"^timestamp: must be in \[0, now"),
        (event(timestamp=int(time.time()) + 3 * 86_400), r"^timestamp: must be in \[0, now"),
        (event(event_id=7), r"^event_id: must be a string, got int$"),
        ({**event(), "extra": 1}, r"^unknown field\(s\) 'extra'$"),
        ({"user_id": "u", "event": "view"}, r"^item_id: required$"),
    ],
)
def test_each_limit_is_a_one_line_error(raw, message):
    # catches a limit that is not enforced (the event would be stored) or a message that does not name the field
    with pytest.raises(FeedbackError, match=message) as error:
        check_event(raw)
    assert "\n" not in str(error.value)


def test_good_events_keep_their_fields_and_get_server_time():
    # catches a missing timestamp left empty (the span would fail the loader) and int ids not normalised to text
    before = int(time.time())
    checked = check_event(event(user=42, item="i9", kind="rating", rating=4, review="great", event_id="e1"))
    assert (checked.user_id, checked.item_id, checked.rating, checked.review, checked.event_id) == (
        "42",
        "i9",
        4.0,
        "great",
        "e1",
    )
    assert before <= checked.timestamp <= time.time()
    assert check_event(event(timestamp=123)).timestamp == 123


def test_batch_limits_name_the_bad_event():
    # catches the batch limit off by one or missing, and an error that does not say which event is bad
    assert len(check_events([event()] * MAX_BATCH)) == MAX_BATCH
    with pytest.raises(FeedbackError, match=rf"^events: a batch holds 1 to {MAX_BATCH} events, got 1001$"):
        check_events([event()] * (MAX_BATCH + 1))
    with pytest.raises(FeedbackError, match=r"^events: a batch holds 1 to 1000 events, got 0$"):
        check_events([])
    with pytest.raises(FeedbackError, match=r"^events\[2\]\.event: must be one of"):
        check_events([event(), event(), event(kind="nope")])


def test_a_bad_batch_stores_nothing(store):
    # catches events stored one by one before the bad one is found (a 400 that still wrote half the batch)
    with pytest.raises(FeedbackError):
        store.add([event(event_id="a"), event(kind="rating", rating=9)])
    assert store.count() == 0


# ---- the store ------------------------------------------------------------------------------------------------


def test_schema_is_created_and_reopening_migrates_nothing(store, tmp_path):
    # catches a second open (another worker) failing on existing tables or bumping the version
    assert store.schema_version() == 1
    store.add([event(event_id="x")])
    again = FeedbackStore(store.url, root=tmp_path)
    assert again.schema_version() == 1 and again.count() == 1


def test_sqlite_store_is_in_wal_mode(tmp_path):
    # catches the default journal (rollback): readers in other workers would block on every write
    store = FeedbackStore("events.sqlite3", root=tmp_path)
    store.add([event()])
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    # catches an old recforge writing into a store whose schema it does not know
    store = FeedbackStore("events.sqlite3", root=tmp_path)
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        connection.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(FeedbackError, match="schema version 99 is newer"):
        FeedbackStore("events.sqlite3", root=tmp_path)
    assert store is not None


def test_an_event_id_sent_twice_is_stored_once(store):
    # catches a resent batch (a client retrying after a lost answer) stored twice, and a duplicate inside
    # one batch; events without an event_id are all kept
    first = store.add([event(event_id="e1"), event(event_id="e2"), event(), event()])
    assert (first.received, first.stored, first.duplicates) == (4, 4, 0)
    again = store.add([event(event_id="e1"), event(event_id="e2"), event(event_id="e3"), event(event_id="e3")])
    assert (again.stored, again.duplicates) == (1, 3)
    assert store.count() == 5
    assert sorted(store.events()["event_id"].dropna()) == ["e1", "e2", "e3"]


def test_add_is_committed_when_it_returns(store, tmp_path):
    # catches an acknowledgement before the commit: another connection (another worker) must see the events
    store.add([event(event_id="seen")])
    other = FeedbackStore(store.url, root=tmp_path)
    assert other.count() == 1


def test_exclusions_are_bought_rated_and_disliked_items(store):
    # catches views or clicks excluded (they are interest, not a reason to hide an item) and another user's items
    store.add(
        [
            event("u1", "bought", "purchase"),
            event("u1", "rated", "rating", rating=2),
            event("u1", "hated", "dislike"),
            event("u1", "looked", "view"),
            event("u1", "clicked", "click"),
            event("u2", "other", "purchase"),
        ]
    )
    assert store.exclusions("u1") == {"bought", "rated", "hated"}
    assert store.exclusions(7) == frozenset()


def test_cached_exclusions_are_at_most_staleness_old(tmp_path):
    # catches a cache that never expires (feedback from another worker never seen) and one that ignores its bound
    store = FeedbackStore("e.sqlite3", root=tmp_path)
    cached = Exclusions(store, staleness_s=0.3)
    assert cached.get("u") == frozenset()
    FeedbackStore("e.sqlite3", root=tmp_path).add([event("u", "i", "purchase")])  # "another worker"
    assert cached.get("u") == frozenset()  # within the bound: the cached answer
    time.sleep(0.35)
    assert cached.get("u") == {"i"}
    uncached = Exclusions(store, staleness_s=0)
    store.add([event("u", "j", "dislike")])
    assert uncached.get("u") == {"i", "j"}


# ---- export: the high-water mark --------------------------------------------------------------------------------


def test_two_exports_neither_repeat_nor_skip(store, tmp_path):
    # catches an export starting at its own mark again (events exported twice), one starting past events added
    # in between (skipped), and a span the table loader cannot read
    store.add([event(f"u{i}", f"i{i}", "purchase", event_id=f"a{i}") for i in range(5)])
    first = store.export(spans_dir=tmp_path / "spans")
    assert (first.mark_from, first.rows) == (0, 5) and first.path.exists()
    store.add([event(f"u{i}", f"j{i}", "rating", rating=4, review="good", event_id=f"b{i}") for i in range(3)])
    second = store.export(spans_dir=tmp_path / "spans")
    assert second.mark_from == first.mark_to and second.rows == 3
    empty = store.export(spans_dir=tmp_path / "spans")
    assert empty.rows == 0 and empty.path is None
    ids = pd.concat([pd.read_parquet(first.path), pd.read_parquet(second.path)])["event_id"]
    assert sorted(ids) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(3)])
    tables = load(DataParams(format="table", path=str(second.path)))
    assert len(tables.interactions) == 3 and set(tables.interactions["rating"]) == {4.0}
    assert tables.interactions["review"].tolist() == ["good"] * 3


def test_span_reviews_reach_the_canonical_interactions(tmp_path):
    # catches a span's review text dropped on the way into training (the table loader keeping only ids, rating
    # and time): sentiment weighting could not read what users wrote through /feedback
    from recforge.params import load_params
    from recforge.spans import add_span
    from recforge.stages.ingest import run_ingest
    from tests.conftest import TINY, tmp_overrides

    params = load_params(
        None,
        tmp_overrides(tmp_path)
        + TINY
        + ["data.synthetic.reviews=true", f"data.spans={tmp_path / 'spans'}", "data.spans_held_out=0"]
        + ["validate.drift.enabled=false"],
    )
    base = load(params.data).interactions
    user, item = int(base["user_id"].iloc[0]), int(base["item_id"].iloc[-1])
    store = FeedbackStore("events.sqlite3", root=tmp_path)
    store.add([event(user, item, "rating", rating=5, review="fantastic, loved every minute of it")])
    add_span(params, store.export(tmp_path / "feedback-1.parquet").path)
    run_ingest(params)
    canonical = pd.read_parquet(Path(params.paths.canonical_dir) / "interactions.parquet")
    assert "fantastic, loved every minute of it" in set(canonical["review"])


def test_span_keeps_reviews_and_implies_ratings(store, tmp_path):
    # catches review text dropped (sentiment weighting could not use it) and events without a rating exported
    # with none (the data gate refuses null ratings)
    store.add([event("u", "i", "purchase", review="love it", timestamp=100), event("u", "j", "dislike")])
    span = pd.read_parquet(store.export(tmp_path / "s.parquet").path)
    assert list(span.columns) == ["user_id", "item_id", "rating", "timestamp", "review", "event_id", "event"]
    assert span["review"].tolist() == ["love it", ""]
    assert span["rating"].tolist() == [5.0, 0.0] and span["timestamp"].iloc[0] == 100
    csv = store.export(tmp_path / "again.csv", since_mark=0, implied_ratings={"purchase": 4.0})
    assert pd.read_csv(csv.path)["rating"].tolist() == [4.0, 0.0]


def test_integer_ids_leave_as_integers_other_ids_as_text(store, tmp_path):
    # catches ids exported as text "42" next to base data whose ids are int64 42 (the gate refuses mixed id types
    # and the retrain would see two different users), and "007" turned into 7 (another id)
    store.add([event(42, 7, "purchase"), event("43", "8", "purchase")])
    span = pd.read_parquet(store.export(tmp_path / "ints.parquet").path)
    assert span["user_id"].dtype == "int64" and span["user_id"].tolist() == [42, 43]
    assert span["item_id"].tolist() == [7, 8]
    store.add([event("44", "007", "purchase")])
    text = pd.read_parquet(store.export(tmp_path / "text.parquet").path)
    assert text["user_id"].tolist() == [44] and text["item_id"].tolist() == ["007"]


def test_export_refuses_to_overwrite_and_bad_suffixes(store, tmp_path):
    # catches a span silently replaced (events of the old file lost) and a file the loaders cannot read
    store.add([event()])
    (tmp_path / "taken.parquet").write_text("x")
    with pytest.raises(FeedbackError, match="exists already"):
        store.export(tmp_path / "taken.parquet")
    with pytest.raises(FeedbackError, match=r"a span is a \.parquet or \.csv file"):
        store.export(tmp_path / "span.txt")
    assert store.last_mark() == 0  # nothing recorded by the failed exports


def test_forgetting_the_newest_events_does_not_let_an_id_be_reused(store, tmp_path):
    # catches ids reused after a delete (SQLite without AUTOINCREMENT): a new event would get an id at or below
    # the mark and never be exported
    store.add([event("a", "i1"), event("b", "i2")])
    store.export(tmp_path / "one.parquet")
    store.forget("b")
    store.add([event("c", "i3", event_id="late")])
    second = store.export(tmp_path / "two.parquet")
    assert second.rows == 1 and pd.read_parquet(second.path)["event_id"].tolist() == ["late"]


def test_forget_removes_a_user_and_says_what_it_cannot_undo(store, tmp_path):
    # catches a forgotten user's events still excluded or still exported later, other users' events removed,
    # and the already exported span not named
    store.add([event("gone", "i1", "purchase"), event("kept", "i2", "purchase")])
    exported = store.export(tmp_path / "first.parquet")
    store.add([event("gone", "i3", "dislike")])
    result = store.forget("gone")
    assert (result.removed, result.items, result.spans) == (2, ["i1", "i3"], [str(exported.path)])
    assert "models already trained" in result.cannot_undo and str(exported.path) in result.cannot_undo
    assert store.exclusions("gone") == frozenset() and store.exclusions("kept") == {"i2"}
    assert store.export(tmp_path / "second.parquet").rows == 0
    assert store.forget("nobody").removed == 0


def test_postgres_mark_waits_for_an_earlier_id_still_in_flight(postgres_url, tmp_path):
    # catches the mark read without the table lock: PostgreSQL draws identities before commit, so an event
    # holding id N can commit after N+1 was exported, below the mark: skipped forever
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS feedback_events, feedback_exports, schema_version")
    store = FeedbackStore(postgres_url)
    slow = psycopg.connect(postgres_url)
    slow.execute(
        "INSERT INTO feedback_events (user_id, item_id, event, timestamp, received_at, event_id) "
        "VALUES ('u', 'slow', 'view', 1, 1, 'slow')"
    )  # holds id 1, not committed
    store.add([event("u", "fast", event_id="fast")])  # id 2, committed
    commit = threading.Timer(0.5, slow.commit)
    commit.start()
    result = store.export(tmp_path / "span.parquet")
    commit.join()
    slow.close()
    assert sorted(pd.read_parquet(result.path)["event_id"]) == ["fast", "slow"]


def test_sqlite_store_from_several_processes(tmp_path):
    # catches "database is locked" under concurrent writers (no busy timeout / no immediate transactions)
    import multiprocessing

    path = tmp_path / "shared.sqlite3"
    FeedbackStore(str(path))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(path), w)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert FeedbackStore(str(path)).count() == 3 * 20 * 5


def _write_many(path: str, worker: int) -> None:
    store = FeedbackStore(path)
    for batch in range(20):
        store.add([event(f"w{worker}", f"i{batch}-{n}", event_id=f"{worker}-{batch}-{n}") for n in range(5)])


def test_bad_urls_are_one_line_errors(tmp_path):
    # catches a password accepted in the URL (it would reach ps and the Bento) and unknown schemes treated as paths
    with pytest.raises(FeedbackError, match="no password in the URL"):
        FeedbackStore("postgresql://me:secret@db.example/feedback")
    with pytest.raises(FeedbackError, match="unsupported scheme 'mysql'"):
        FeedbackStore("mysql://db/feedback")
    assert Path(FeedbackStore("sqlite://x.db", root=tmp_path).url) == tmp_path / "x.db"
