"""recforge.feedback: event limits, the SQLite store, the export mark and forgetting (fast; real SQLite files).

Each test names the wrong behaviour it catches. Every store is a real SQLite file in tmp_path; a second
``sqlite3`` connection plays "another worker". The PostgreSQL paths run in test_feedback_store.py against a
real server (slow to start, so not here); only what needs no server (the URL rules, the missing driver, a
refused connection) is checked below.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recforge import feedback
from recforge.feedback import (
    AddResult,
    Event,
    FeedbackError,
    FeedbackStore,
    check_event,
    check_events,
    span_frame,
    sqlite_path,
    store_from_params,
)

NOW = 1_000_000.0


def event(user="u1", item="i1", kind="view", **extra):
    return {"user_id": user, "item_id": item, "event": kind, **extra}


def message(raw, **kwargs) -> str:
    with pytest.raises(FeedbackError) as info:
        check_event(raw, **kwargs)
    return str(info.value)


@pytest.fixture
def store(tmp_path):
    opened = FeedbackStore("events.sqlite3", root=tmp_path)
    yield opened
    opened.close()


def raw_db(store) -> sqlite3.Connection:
    """Another worker's connection to the same file."""
    return sqlite3.connect(store.path, isolation_level=None)


# ---- one event ------------------------------------------------------------------------------------------------


def test_id_limits_are_inclusive_and_each_message_is_exact():
    # catches the length bounds shifted by one (a 1-character or a 128-character id refused, 129 accepted), a
    # control character (DEL, unit separator) let through, and messages that do not name the field and value
    assert check_event(event(user="a" * 128, item="b")).user_id == "a" * 128
    assert check_event(event(user="a", item=0)).item_id == "0"
    assert message(event(user="a" * 129)) == "user_id: must be 1 to 128 characters, got 129"
    assert message(event(item="")) == "item_id: must be 1 to 128 characters, got 0"
    assert message(event(user="a\x7fb")) == "user_id: must not contain control characters"
    assert message(event(item="a\x1fb")) == "item_id: must not contain control characters"
    assert message(event(user=1.5)) == "user_id: must be a string or an integer, got float"
    assert message(event(item=False)) == "item_id: must be a string or an integer, got bool"


def test_an_event_must_be_a_mapping_with_the_known_fields():
    # catches a non-object accepted, a known field reported as unknown (each name of the allowed set), the
    # unknown list unsorted, longer than 5 names or with names not cut to 40 characters
    assert message(["view"]) == "an event must be an object, got list"
    full = event(kind="rating", rating=1, review="r", timestamp=5, event_id="e")
    assert check_event(full, now=NOW) == Event("u1", "i1", "rating", 5, 1.0, "r", "e")
    long = "z" * 60
    raw = {**event(), "f": 1, "b": 2, "e": 3, "d": 4, "c": 5, long: 6, "a": 7}
    assert message(raw) == "unknown field(s) 'a', 'b', 'c', 'd', 'e'"
    assert message({**event(), long: 1}) == f"unknown field(s) {repr(long)[:40]}"


@pytest.mark.parametrize("name", ["user_id", "item_id", "event"])
def test_each_required_field(name):
    # catches a required field that may be left out or sent as null (the row would break the NOT NULL schema)
    raw = event()
    assert message({k: v for k, v in raw.items() if k != name}) == f"{name}: required"
    assert message({**raw, name: None}) == f"{name}: required"


def test_event_kind_message_cuts_the_value():
    # catches the kinds list or the 40-character cut of the echoed value changed (a 1 MB kind echoed back)
    assert (
        message(event(kind="x" * 50)) == f"event: must be one of view|click|purchase|rating|dislike, got {'x' * 40!r}"
    )
    for kind in feedback.EVENTS:
        assert check_event(event(kind=kind, **({"rating": 2} if kind == "rating" else {}))).event == kind


def test_rating_bounds_are_inclusive_and_stored_as_float():
    # catches the bounds made exclusive, an infinite or string rating accepted, an int rating kept as int, and
    # a rating on another kind of event accepted
    assert check_event(event(kind="rating", rating=0)).rating == 0.0
    top = check_event(event(kind="rating", rating=5))
    assert top.rating == 5.0 and isinstance(top.rating, float)
    assert message(event(kind="rating", rating=-0.5)) == "rating: must be in [0, 5], got -0.5"
    need = "rating: a 'rating' event needs a number in [0, 5]"
    assert message(event(kind="rating", rating=float("inf"))) == need
    assert message(event(kind="rating", rating="4")) == need
    assert message(event(kind="rating", rating=False)) == need
    assert (
        message(event(kind="click", rating=3)) == "rating: only a 'rating' event carries one (this is a 'click' event)"
    )
    assert check_event(event(kind="click")).rating is None


def test_review_limits():
    # catches a review of exactly the limit refused, a non-string review accepted, and messages changed
    limit = feedback.MAX_REVIEW_CHARS
    assert check_event(event(review="r" * limit)).review == "r" * limit
    assert message(event(review="r" * (limit + 1))) == f"review: at most {limit} characters, got {limit + 1}"
    assert message(event(review=5)) == "review: must be a string, got int"
    assert message(event(review="a\x00")) == "review: must not contain NUL characters"
    assert check_event(event(review="line\nbreak")).review == "line\nbreak"  # only NUL is refused in a review


def test_timestamp_uses_the_given_clock_and_its_bounds_are_inclusive():
    # catches `now` ignored (the wall clock used instead), the future bound shifted or made exclusive, the epoch
    # itself refused, and the default timestamp not an int
    future = feedback.MAX_FUTURE_S
    stamped = check_event(event(), now=NOW + 0.9)
    assert stamped.timestamp == 1_000_000 and isinstance(stamped.timestamp, int)
    assert check_event(event(timestamp=0), now=NOW).timestamp == 0
    assert check_event(event(timestamp=int(NOW) + future), now=NOW).timestamp == int(NOW) + future
    assert message(event(timestamp=int(NOW) + future + 1), now=NOW) == (
        f"timestamp: must be in [0, now + {future} s], got {int(NOW) + future + 1}"
    )
    assert message(event(timestamp=-1), now=NOW) == f"timestamp: must be in [0, now + {future} s], got -1"
    assert message(event(timestamp="5"), now=NOW) == "timestamp: must be integer epoch seconds, got str"
    before = time.time()
    assert before - 1 <= check_event(event()).timestamp <= time.time()  # no clock given: the server's


def test_event_id_is_checked_like_an_id():
    # catches an event_id of the wrong type or length accepted (the unique column would hold anything) and its
    # error naming another field
    assert message(event(event_id="")) == "event_id: must be 1 to 128 characters, got 0"
    assert message(event(event_id="a\x00")) == "event_id: must not contain control characters"
    assert message(event(event_id=["a"])) == "event_id: must be a string, got list"
    assert check_event(event()).event_id is None


# ---- a batch --------------------------------------------------------------------------------------------------


def test_batch_shape_and_clock():
    # catches a mapping, a string or bytes taken as a batch (a string iterates as one-letter "events"), the size
    # bounds, an Event re-checked (it is passed through as is) and the batch clock not handed to each event
    for raws in ({"user_id": "u"}, "events", b"x"):
        with pytest.raises(FeedbackError) as info:
            check_events(raws)
        assert str(info.value) == "events: must be a list of events"
    ready = Event("u", "i", "view", 7)
    checked = check_events(iter([ready, event()]), now=NOW)
    assert checked[0] is ready and checked[1].timestamp == int(NOW)
    assert len(check_events([event()])) == 1
    with pytest.raises(FeedbackError) as info:
        check_events([event(), event(timestamp=int(NOW) + 10**6)], now=NOW)
    assert str(info.value).startswith("events[1].timestamp: must be in [0, now + ")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_batch_reads_the_clock_once(monkeypatch):
    # catches each event of a batch stamped by its own clock read (a batch straddling a second would carry two
    # timestamps, and the future bound would move within the batch)
    ticks = iter(range(100, 200))
    monkeypatch.setattr(feedback.time, "time", lambda: float(next(ticks)))
    assert [e.timestamp for e in check_events([event(), event(), event()])] == [100, 100, 100]


def test_add_result_counts_duplicates():
    # catches duplicates computed the other way round (a negative count in the HTTP answer)
    assert AddResult(received=5, stored=3).duplicates == 2


# ---- URLs -----------------------------------------------------------------------------------------------------


def test_sqlite_path_rules(tmp_path):
    # catches a relative path not put under root (the service would write into its cwd), an absolute one put
    # under root, a Path url refused, the scheme compared case-sensitively, and a path holding "://" cut short
    assert sqlite_path("a/b.db", tmp_path) == tmp_path / "a" / "b.db"
    assert sqlite_path("a/b.db") == Path("a/b.db")
    assert sqlite_path(tmp_path / "c.db", "/elsewhere") == tmp_path / "c.db"
    assert sqlite_path(Path("rel.db"), tmp_path) == tmp_path / "rel.db"
    assert sqlite_path("SQLite://x.db", tmp_path) == tmp_path / "x.db"
    assert sqlite_path("sqlite://d://x.db", tmp_path) == tmp_path / "d:" / "x.db"
    assert sqlite_path("postgresql://db.example/feedback") is None
    assert sqlite_path("Postgres://me@db.example/feedback") is None


@pytest.mark.parametrize("url", ["", "   ", "a\x00b", 5, None])
def test_sqlite_path_refuses_what_is_no_path(url):
    # catches an empty, blank, NUL-carrying or non-string url taken as a file name
    with pytest.raises(FeedbackError) as info:
        sqlite_path(url)
    assert str(info.value) == f"feedback.url: a SQLite file path or postgresql://..., got {url!r}"


def test_url_errors_are_exact():
    # catches the password rule or the scheme check dropped, and messages that do not say what to do instead
    with pytest.raises(FeedbackError) as info:
        sqlite_path("postgres://me:pw@db/feedback")
    assert str(info.value) == (
        "feedback.url: no password in the URL (it would reach the process list and the Bento); "
        "use PGPASSWORD or ~/.pgpass"
    )
    with pytest.raises(FeedbackError) as info:
        sqlite_path("MySQL://db/feedback")
    assert str(info.value) == "feedback.url: unsupported scheme 'mysql' (a file path or postgresql://)"


def test_postgres_url_without_the_driver(monkeypatch):
    # catches a missing psycopg surfacing as an ImportError traceback instead of the one-line install hint
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(FeedbackError) as info:
        FeedbackStore("postgresql://db.example/feedback")
    assert str(info.value) == (
        "feedback.url is postgresql://... but psycopg is not installed: pip install 'recforge[serve]'"
    )


class _Unopened(FeedbackStore):
    """A store that does not migrate on open, to look at a PostgreSQL store without a server."""

    def _migrate(self) -> None:
        pass


def test_postgres_store_without_a_server():
    # catches the dialect, the URL kept, the placeholders not rewritten for psycopg, the repr leaking the URL
    # (it may carry a user name), a refused connection surfacing as a traceback instead of one line (its
    # first line: the driver's hint follows on the next), and the URL not handed to the driver (it would try
    # the local socket)
    pg = _Unopened("postgresql://me@127.0.0.1:1/feedback")
    assert (pg.dialect, pg.url, pg.path) == ("postgresql", "postgresql://me@127.0.0.1:1/feedback", None)
    assert repr(pg) == "FeedbackStore(postgresql: 127.0.0.1)"
    assert repr(_Unopened("postgresql:///feedback")) == "FeedbackStore(postgresql: local socket)"
    assert pg._sql("SELECT a FROM t WHERE b = ? AND c = ?") == "SELECT a FROM t WHERE b = %s AND c = %s"
    with pytest.raises(FeedbackError) as info:
        pg.count()
    assert str(info.value) == (
        'feedback store: cannot connect (connection failed: connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused)"
    )


# ---- opening, schema and connections ----------------------------------------------------------------------------


def test_open_creates_parent_directories_and_names_itself(tmp_path):
    # catches the store's folder not created (first start fails) or created only one level deep, a second
    # open failing on the existing folder, and a repr without the file
    store = FeedbackStore("deep/er/events.sqlite3", root=tmp_path)
    assert store.path == tmp_path / "deep" / "er" / "events.sqlite3" and store.path.exists()
    assert (store.dialect, store.url) == ("sqlite", str(store.path))
    assert repr(store) == f"FeedbackStore(sqlite: {store.path})"
    FeedbackStore("deep/er/events.sqlite3", root=tmp_path).close()
    store.close()


def test_schema_as_created(store):
    # catches an edit of an applied migration statement (a store made by this version and one made by the next
    # must hold the same schema), the version row written under another component name, and every worker's open
    # rewriting the version row of an up-to-date store (a write contending with the event writers)
    with raw_db(store) as db:
        ddl = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
        assert set(ddl) == {
            "schema_version",
            "feedback_events",
            "feedback_events_user",
            "feedback_exports",
            "sqlite_sequence",
        }
        assert ddl["feedback_events_user"] == "CREATE INDEX feedback_events_user ON feedback_events (user_id, event)"
        assert ddl["schema_version"] == (
            "CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        assert db.execute("SELECT component, version FROM schema_version").fetchall() == [("feedback", 1)]
    assert store.schema_version() == 1 and isinstance(store.schema_version(), int)
    again = FeedbackStore(store.path)  # another worker opening the migrated store writes nothing
    assert again._connection().total_changes == 0 and again.schema_version() == 1
    again.close()


def test_migrations_are_built_from_the_table_statements():
    # catches the statements of a migration drifting from what _tables builds (MIGRATIONS is built once at
    # import: a change there would reach new stores only), e.g. the user index lost or renamed
    sqlite = feedback._tables("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")
    assert feedback.MIGRATIONS["sqlite"] == {1: sqlite}
    assert feedback.MIGRATIONS["postgresql"] == {
        1: feedback._tables("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "DOUBLE PRECISION")
    }
    assert sqlite[1] == "CREATE INDEX feedback_events_user ON feedback_events (user_id, event)"
    assert len(sqlite) == 3 and "id INTEGER PRIMARY KEY AUTOINCREMENT" in sqlite[0] and "rating REAL" in sqlite[0]


def test_a_version_zero_row_is_migrated_and_updated(tmp_path):
    # catches an existing version row below the current one inserted again (primary key error) instead of
    # updated, and the tables not created for it
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES ('feedback', 0)")
    store = FeedbackStore(path)
    assert store.schema_version() == 1 and store.count() == 0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT component, version FROM schema_version").fetchall() == [("feedback", 1)]
    store.close()


def test_newer_schema_message(tmp_path):
    # catches the refusal of a newer schema losing the versions it compares
    FeedbackStore("e.sqlite3", root=tmp_path).close()
    with sqlite3.connect(tmp_path / "e.sqlite3") as db:
        db.execute("UPDATE schema_version SET version = 2")
    with pytest.raises(FeedbackError) as info:
        FeedbackStore("e.sqlite3", root=tmp_path)
    assert str(info.value) == "feedback store: schema version 2 is newer than this recforge's (1)"


def test_connection_settings(store):
    # catches a committed event only in the OS cache (synchronous below FULL), a short busy wait (workers fail
    # with "database is locked" under load), Python's implicit transactions left on (our BEGIN would nest), and a
    # connection bound to the thread that opened it
    connection = store._connection()
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.isolation_level is None
    assert store._connection() is connection  # one per thread, reused
    seen = []
    thread = threading.Thread(target=lambda: seen.append(connection.execute("SELECT 1").fetchone()[0]))
    thread.start()
    thread.join()
    assert seen == [1]
    other = []
    thread = threading.Thread(target=lambda: other.append(store._connection()))
    thread.start()
    thread.join()
    assert other[0] is not connection


class _Flaky:
    """A connection whose first ``fail`` switches to WAL fail as when another worker is switching at once."""

    def __init__(self, connection, fail):
        self.connection, self.fail, self.tries = connection, fail, 0

    def execute(self, statement, *args):
        if statement == "PRAGMA journal_mode = WAL":
            self.tries += 1
            if self.tries <= self.fail:
                raise sqlite3.OperationalError("database is locked")
        return self.connection.execute(statement, *args)

    def cursor(self):
        return self.connection.cursor()

    def close(self):
        self.connection.close()


def _flaky_store(fail):
    class Store(FeedbackStore):
        def _connection(self):
            if getattr(self, "_flaky", None) is None:
                self._flaky = _Flaky(super()._connection(), fail)
            return self._flaky

    return Store


def test_wal_switch_is_retried_fifty_times(tmp_path, monkeypatch):
    # catches a worker giving up at the first "database is locked" while another switches the file to WAL,
    # retrying without a pause, fewer or more than 50 tries, and the last error swallowed
    sleeps = []
    monkeypatch.setattr(feedback.time, "sleep", sleeps.append)
    store = _flaky_store(49)("a.sqlite3", root=tmp_path)
    assert store._flaky.tries == 50 and sleeps == [0.1] * 49 and store.schema_version() == 1
    sleeps.clear()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        _flaky_store(50)("b.sqlite3", root=tmp_path)
    assert sleeps == [0.1] * 49


def test_reads_do_not_wait_for_a_writer(store):
    # catches a read opened as a write transaction (BEGIN IMMEDIATE): every reader would queue behind each writer
    # (WAL's point is that they do not) and fail after the busy timeout; and an uncommitted event read
    store.add([event("u", "seen", "purchase")])
    store.export(store.path.parent / "one.parquet")
    store._connection().execute("PRAGMA busy_timeout = 50")
    writer = raw_db(store)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        "INSERT INTO feedback_events (user_id, item_id, event, timestamp, received_at) VALUES ('u', 'x', 'dislike', 1, 1)"
    )
    assert store.count() == 1 and store.schema_version() == 1 and store.last_mark() == 1
    assert store.events()["item_id"].tolist() == ["seen"]
    assert store.exclusions("u") == {"seen"}
    writer.execute("ROLLBACK")
    writer.close()


def test_a_failed_transaction_rolls_back_and_drops_the_connection(store):
    # catches a failed transaction's writes kept, the transaction left open (the next BEGIN fails), and a broken
    # connection reused; a one-line RecforgeError (the store's own refusal) keeps the healthy connection
    first = store._connection()
    with pytest.raises(sqlite3.OperationalError), store._transaction() as cursor:
        cursor.execute(
            "INSERT INTO feedback_events (user_id, item_id, event, timestamp, received_at) VALUES ('u', 'i', 'view', 1, 1)"
        )
        cursor.execute("SELECT no_such_column FROM feedback_events")
    assert store._local.connection is None
    assert store.count() == 0
    second = store._connection()
    assert second is not first
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")  # closed
    with pytest.raises(FeedbackError), store._transaction() as cursor:
        cursor.execute(
            "INSERT INTO feedback_events (user_id, item_id, event, timestamp, received_at) VALUES ('u', 'i', 'view', 1, 1)"
        )
        raise FeedbackError("refused")
    assert store._connection() is second and store.count() == 0
    store.add([event()])
    assert store.count() == 1


def test_a_failed_read_drops_the_connection(store):
    # catches a connection left in place after a read failed (e.g. the file replaced under it)
    first = store._connection()
    with raw_db(store) as db:
        db.execute("DROP TABLE feedback_events")
    with pytest.raises(sqlite3.OperationalError):
        store.exclusions("u")
    assert store._local.connection is None
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")


class _Unclosable:
    def close(self):
        raise sqlite3.OperationalError("socket already gone")


def test_dropping_a_connection_never_raises(store):
    # catches close() failing in a thread that never opened a connection (thread-local attribute missing) and a
    # connection that fails to close making close() (or the error path that drops it) raise
    failed = []

    def close_here():
        try:
            store.close()
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=close_here)
    thread.start()
    thread.join()
    assert failed == []
    store._local.connection = _Unclosable()
    store.close()
    assert store._local.connection is None and store.count() == 0


def test_close_closes_this_threads_connection(store):
    # catches close() leaving the connection open (file handles pile up in a worker) or not forgetting it
    first = store._connection()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")
    assert store.count() == 0 and store._connection() is not first
    store.close()
    store.close()  # closing twice is harmless


# ---- events ---------------------------------------------------------------------------------------------------


def test_add_stores_every_field_with_the_receive_time(store):
    # catches a field stored in another column, the receive time not the server's, and counts taken from the
    # wrong side of the insert
    before = time.time()
    result = store.add([event("u", "i", "rating", rating=4, review="ok", timestamp=77, event_id="e")])
    after = time.time()
    assert (result.received, result.stored) == (1, 1)
    row = store.events().iloc[0]
    assert (row["id"], row["event_id"], row["user_id"], row["item_id"], row["event"]) == (1, "e", "u", "i", "rating")
    assert (row["rating"], row["review"], row["timestamp"]) == (4.0, "ok", 77)
    assert before <= row["received_at"] <= after
    assert list(store.events().columns) == [
        "id",
        "event_id",
        "user_id",
        "item_id",
        "event",
        "rating",
        "review",
        "timestamp",
        "received_at",
    ]
    again = store.add([event(event_id="e"), event(event_id="f")])
    assert (again.received, again.stored, again.duplicates) == (2, 1, 1)


def test_add_refuses_a_bad_batch_with_its_position(store):
    # catches add() skipping the checks (anything would be stored)
    with pytest.raises(FeedbackError) as info:
        store.add([event(), event(kind="like")])
    assert str(info.value).startswith("events[1].event: must be one of")
    assert store.count() == 0


def test_events_window_is_after_exclusive_upto_inclusive(store):
    # catches the window bounds shifted (an event exported twice or never), and the open upper end capped low
    store.add([event(item=f"i{n}") for n in range(5)])
    assert store.events(after=1, upto=3)["id"].tolist() == [2, 3]
    assert store.events(after=3)["id"].tolist() == [4, 5]
    with raw_db(store) as db:
        db.execute("UPDATE sqlite_sequence SET seq = 4000000000 WHERE name = 'feedback_events'")
    store.add([event(item="late")])
    assert store.events(after=5)["id"].tolist() == [4_000_000_001]
    assert store.events(after=4_000_000_001).empty


def test_exclusions_and_interests(store, monkeypatch):
    # catches interests reading excluding-only kinds or a dislike, a rating below LIKED_RATING counted as interest
    # (or one at it not), the order not oldest first, the limit not the most recent ones, exclusions of another
    # user, and MAX_EXCLUSIONS not the most recent ones
    store.add(
        [
            event("u", "v", "view"),
            event("u", "c", "click"),
            event("u", "p", "purchase"),
            event("u", "liked", "rating", rating=3),
            event("u", "meh", "rating", rating=2.9),
            event("u", "d", "dislike"),
            event("other", "o", "view"),
            event(7, "seven", "purchase"),
        ]
    )
    assert store.interests("u") == ("v", "c", "p", "liked")
    assert store.interests("u", limit=2) == ("p", "liked")
    assert store.interests(7) == ("seven",)
    assert store.exclusions("u") == {"p", "liked", "meh", "d"}
    assert store.exclusions(7) == {"seven"}
    monkeypatch.setattr(feedback, "MAX_EXCLUSIONS", 2)
    assert store.exclusions("u") == {"meh", "d"}


# ---- export ---------------------------------------------------------------------------------------------------


def test_export_names_files_by_id_and_records_the_mark(store, tmp_path):
    # catches the default file name off by one or unpadded (name order must be id order), the mark not recorded
    # with what was written, and the record made with another time than now
    store.add([event(item=f"i{n}", event_id=f"e{n}") for n in range(3)])
    before = time.time()
    first = store.export(spans_dir=tmp_path / "spans")
    assert first.path == tmp_path / "spans" / "feedback-000000000001-000000000003.parquet"
    assert (first.mark_from, first.mark_to, first.rows) == (0, 3, 3)
    store.add([event(item="i3"), event(item="i4")])
    second = store.export(spans_dir=tmp_path / "spans")
    assert second.path.name == "feedback-000000000004-000000000005.parquet"
    with raw_db(store) as db:
        rows = db.execute("SELECT mark_from, mark_to, rows_written, path, created_at FROM feedback_exports").fetchall()
    assert [r[:4] for r in rows] == [(0, 3, 3, str(first.path)), (3, 5, 2, str(second.path))]
    assert all(before <= r[4] <= time.time() for r in rows)
    assert store.last_mark() == 5


def test_export_default_folder_is_feedback_spans_under_the_cwd(tmp_path, monkeypatch):
    # catches the default spans folder changed (the ingest's data.spans and the docs point at feedback/spans)
    monkeypatch.chdir(tmp_path)
    store = FeedbackStore("e.sqlite3")
    store.add([event()])
    assert store.export().path == Path("feedback/spans/feedback-000000000001-000000000001.parquet")
    assert (tmp_path / "feedback" / "spans" / "feedback-000000000001-000000000001.parquet").exists()
    store.close()


class _LateStore(FeedbackStore):
    """An event commits just after the export read its safe mark."""

    late = False

    def _safe_mark(self) -> int:
        mark = super()._safe_mark()
        if self.late:
            self.late = False
            FeedbackStore(self.path).add([event("late", "l", event_id="late")])
        return mark


def test_export_reads_only_up_to_the_safe_mark(tmp_path):
    # catches the export reading past the mark it took (on PostgreSQL an id above the mark may still be followed
    # by a lower one in flight: only ids at or below the mark are settled); the late event goes out next time
    store = _LateStore("e.sqlite3", root=tmp_path)
    store.add([event(event_id="early")])
    store.late = True
    first = store.export(tmp_path / "one.parquet")
    assert (first.mark_to, first.rows) == (1, 1)
    assert pd.read_parquet(first.path)["event_id"].tolist() == ["early"]
    second = store.export(tmp_path / "two.parquet")
    assert (second.mark_from, second.mark_to) == (1, 2)
    assert pd.read_parquet(second.path)["event_id"].tolist() == ["late"]
    store.close()


def test_export_with_nothing_new(store, tmp_path):
    # catches an empty export that writes a file or records a mark, and its range reported wrong: from the mark
    # it started at to the higher of that mark and the store's newest id
    empty = store.export(tmp_path / "none.parquet")
    assert (empty.path, empty.mark_from, empty.mark_to, empty.rows) == (None, 0, 0, 0)
    assert not (tmp_path / "none.parquet").exists()
    store.add([event(), event()])
    store.export(tmp_path / "a.parquet")
    again = store.export(tmp_path / "b.parquet")
    assert (again.path, again.mark_from, again.mark_to) == (None, 2, 2)
    ahead = store.export(tmp_path / "c.parquet", since_mark=9)
    assert (ahead.mark_from, ahead.mark_to, ahead.rows) == (9, 9, 0)
    assert store.last_mark() == 2 and not (tmp_path / "b.parquet").exists()


def test_export_since_an_older_mark_rewrites_without_recording(store, tmp_path):
    # catches a re-export of old events (since_mark) recording its mark again (UNIQUE mark_to: the export fails)
    # or lowering the mark; and a negative mark accepted
    store.add([event(item="a"), event(item="b")])
    store.export(tmp_path / "first.csv")
    redo = store.export(tmp_path / "redo.csv", since_mark=1)
    assert (redo.mark_from, redo.mark_to, redo.rows) == (1, 2, 1)
    assert pd.read_csv(redo.path)["item_id"].tolist() == ["b"]
    assert store.last_mark() == 2
    with raw_db(store) as db:
        assert db.execute("SELECT count(*) FROM feedback_exports").fetchone()[0] == 1
    with pytest.raises(FeedbackError) as info:
        store.export(tmp_path / "x.csv", since_mark=-1)
    assert str(info.value) == "--since: a mark is >= 0, got -1"


def test_export_path_errors_are_exact(store, tmp_path):
    # catches the NUL, suffix and overwrite refusals losing what they name (the CLI prints them as they are)
    store.add([event()])
    with pytest.raises(FeedbackError) as info:
        store.export(str(tmp_path / "a\x00b.parquet"))
    assert str(info.value) == "--out: a file name without NUL characters"
    with pytest.raises(FeedbackError) as info:
        store.export(tmp_path / "span.json")
    assert str(info.value) == f"{tmp_path / 'span.json'}: a span is a .parquet or .csv file"
    (tmp_path / "taken.csv").write_text("x")
    with pytest.raises(FeedbackError) as info:
        store.export(tmp_path / "taken.csv")
    assert (
        str(info.value)
        == f"{tmp_path / 'taken.csv'}: exists already; choose another --out (a span is never overwritten)"
    )
    assert (tmp_path / "taken.csv").read_text() == "x" and store.last_mark() == 0


def test_parquet_and_csv_spans_hold_the_same_rows(store, tmp_path):
    # catches a .parquet written as CSV (or the reverse): the table loader reads by suffix; and the frame's index
    # stored as an extra column (readers other than pandas, e.g. pyarrow or DuckDB, would see it)
    store.add([event("u", "i", "purchase", timestamp=3)])
    parquet = pd.read_parquet(store.export(tmp_path / "s.parquet").path)
    csv = pd.read_csv(store.export(tmp_path / "s.csv", since_mark=0).path, keep_default_na=False)
    assert list(parquet.columns) == list(csv.columns) == feedback.SPAN_COLUMNS
    assert pq.read_schema(tmp_path / "s.parquet").names == feedback.SPAN_COLUMNS  # no index column stored
    assert parquet.iloc[0][["user_id", "item_id", "rating", "timestamp"]].tolist() == ["u", "i", 5.0, 3]
    assert csv.iloc[0][["user_id", "item_id", "rating", "timestamp"]].tolist() == ["u", "i", 5.0, 3]


class _RacedStore(FeedbackStore):
    """Another exporter records its mark between this export's start and its own record."""

    rival: FeedbackStore | None = None

    def _safe_mark(self) -> int:
        mark = super()._safe_mark()
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival.export(self.path.parent / "rival.parquet")
        return mark


def test_export_refuses_to_record_after_a_concurrent_export(tmp_path):
    # catches two exporters both recording a mark for the same events (every event exported twice)
    store = _RacedStore("e.sqlite3", root=tmp_path)
    store.add([event(), event()])
    store.rival = FeedbackStore("e.sqlite3", root=tmp_path)
    out = tmp_path / "mine.parquet"
    with pytest.raises(FeedbackError) as info:
        store.export(out)
    assert str(info.value) == f"another export recorded mark 2 meanwhile; {out} repeats its events"
    assert store.last_mark() == 2
    store.close()


# ---- forgetting ---------------------------------------------------------------------------------------------


def _forget_setup(store, tmp_path):
    """User 'x' holds ids 1, 3 and 6; exports cover (0,1], (1,2], (2,3], (3,5], (5,6] and (6,7]."""
    users = ["x", "y", "x", "y", "y", "x", "y"]
    paths = []
    for n, (user, stop) in enumerate(zip(users, [1, 2, 3, 3, 5, 6, 7], strict=True)):
        store.add([event(user, f"item{n}", "purchase")])
        if n + 1 == stop:
            paths.append(str(store.export(tmp_path / f"span{stop}.parquet").path))
    return paths


def test_forget_names_exactly_the_spans_that_hold_the_user(store, tmp_path):
    # catches a span holding the user's first or last event missed (its mark_to equal to that id), spans that
    # only overlap the user's id range without holding an event named, and other users' events removed
    paths = _forget_setup(store, tmp_path)
    assert [Path(p).name for p in paths] == [f"span{n}.parquet" for n in (1, 2, 3, 5, 6, 7)]
    result = store.forget("x")
    assert result.user_id == "x" and result.removed == 3
    assert result.items == ["item0", "item2", "item5"]
    assert result.spans == [paths[0], paths[2], paths[4]]
    assert result.cannot_undo == (
        "cannot undo: models already trained on this user's events keep what they learned until the next "
        f"training without them; 3 span file(s) already exported hold them: delete or rewrite "
        f"{paths[0]}, {paths[2]}, {paths[4]}"
    )
    assert store.count() == 4 and store.exclusions("x") == frozenset()


def test_forget_of_unexported_or_unknown_users(store, tmp_path):
    # catches the note naming spans when none holds the user, an unknown user's forget failing, items repeated,
    # and a bad user id reaching the SQL
    store.add([event(5, "b", "purchase"), event(5, "a", "view"), event(5, "b", "dislike")])
    result = store.forget(5)
    assert (result.user_id, result.removed, result.items, result.spans) == ("5", 3, ["a", "b"], [])
    assert result.cannot_undo == (
        "cannot undo: models already trained on this user's events keep what they learned until the next "
        "training without them"
    )
    nobody = store.forget("nobody")
    assert (nobody.removed, nobody.items, nobody.spans) == (0, [], [])
    with pytest.raises(FeedbackError) as info:
        store.forget("")
    assert str(info.value) == "user_id: must be 1 to 128 characters, got 0"


# ---- spans ------------------------------------------------------------------------------------------------------


def _stored(**columns):
    base = {
        "id": [1, 2, 3],
        "event_id": ["a", None, "c"],
        "user_id": ["1", "2", "3"],
        "item_id": ["10", "x", "007"],
        "event": ["view", "rating", "dislike"],
        "rating": [None, 2.0, None],
        "review": [None, "fine", None],
        "timestamp": [5, 6, 7],
        "received_at": [1.0, 1.0, 1.0],
    }
    return pd.DataFrame({**base, **columns})


def test_span_frame_columns_and_values():
    # catches integer-looking ids not turned into int64 when all are canonical, a column with one non-canonical
    # id turned into numbers (which "007" is not), implied ratings replacing a given rating or not overridable
    # one event at a time, a missing review exported as "None"/NaN, and a missing event_id turned into text
    span = span_frame(_stored(), {"view": 1.0})
    assert list(span.columns) == feedback.SPAN_COLUMNS
    assert span["user_id"].dtype == "int64" and span["user_id"].tolist() == [1, 2, 3]
    assert span["item_id"].tolist() == ["10", "x", "007"]
    assert span["rating"].tolist() == [1.0, 2.0, 0.0]
    assert span["timestamp"].dtype == "int64"
    assert span["review"].tolist() == ["", "fine", ""]
    assert span["event_id"].dtype == object and span["event_id"].isna().tolist() == [False, True, False]
    assert span["event_id"].dropna().tolist() == ["a", "c"]
    assert span["event"].tolist() == ["view", "rating", "dislike"]
    default = span_frame(_stored(event=["view", "click", "purchase"], rating=[None, None, None]))
    assert default["rating"].tolist() == [3.0, 3.5, 5.0]


def test_span_frame_keeps_rows_aligned_on_any_index():
    # catches integer ids rebuilt on a fresh 0..n index: a filtered events frame would pair ids with other rows'
    # ratings (or NaN), and the ids would no longer be int64
    events = _stored(item_id=["10", "11", "12"]).set_axis([7, 8, 9])
    span = span_frame(events)
    assert span.index.tolist() == [7, 8, 9]
    assert span["item_id"].tolist() == [10, 11, 12] and span["user_id"].tolist() == [1, 2, 3]
    assert span["item_id"].dtype == "int64" and span["rating"].tolist() == [3.0, 2.0, 0.0]


def test_store_from_params_is_relative_to_the_cwd_or_root(tmp_path, monkeypatch):
    # catches a relative feedback.url resolved elsewhere than the working directory (or the given root)
    params = SimpleNamespace(feedback=SimpleNamespace(url="fb/events.sqlite3"))
    monkeypatch.chdir(tmp_path)
    here = store_from_params(params)
    assert here.path == tmp_path / "fb" / "events.sqlite3" and here.path.is_absolute()
    there = store_from_params(params, root=tmp_path / "r")
    assert there.path == tmp_path / "r" / "fb" / "events.sqlite3"
    here.close()
    there.close()
