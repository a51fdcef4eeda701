"""The feedback event store: what users did with what they were shown, kept until the next training.

One concept: events (``view``, ``click``, ``purchase``, ``rating``, ``dislike``) checked against
their limits (:func:`check_events`), stored durably (:class:`FeedbackStore`: SQLite in WAL mode by
default, PostgreSQL for ``postgresql://`` URLs), read back as the items a user must not be shown
again (:meth:`FeedbackStore.exclusions`, cached per user for at most ``staleness_s`` by
:class:`recforge.exclusions.Exclusions`), exported once each as a span file the ``table`` loader reads
(:meth:`FeedbackStore.export`) and forgotten on request (:meth:`FeedbackStore.forget`).

Guarantees (docs/feedback.md):

- ``add`` returns only after its transaction committed (SQLite ``synchronous=FULL``), so an
  acknowledged event survives a killed process; an ``event_id`` is stored at most once (a unique
  constraint, ``ON CONFLICT DO NOTHING``), so a client may resend a batch it got no answer for;
- every row has a monotonic id (SQLite ``AUTOINCREMENT``: never reused after a delete; PostgreSQL
  identity, read under a table lock so no id below the mark can still commit), and each export
  records the mark it reached: the next export starts after it, so no event is exported twice or
  skipped;
- the store creates and migrates its own schema (``schema_version``), safely when several server
  workers open it at once.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from recforge.errors import RecforgeError
from recforge.schemas import MAX_FEEDBACK_BATCH as MAX_BATCH
from recforge.schemas import MAX_FUTURE_S, MAX_ID_CHARS, MAX_REVIEW_CHARS, RATING_MAX, RATING_MIN

EVENTS = ("view", "click", "purchase", "rating", "dislike")
EXCLUDING = ("purchase", "rating", "dislike")  # events that take an item out of the user's next lists
# the per-field limits live with the service's other limits: MAX_ID_CHARS (user_id, item_id, event_id),
# MAX_REVIEW_CHARS, MAX_BATCH (events per add() and per POST /feedback), RATING_MIN..RATING_MAX
MAX_EXCLUSIONS = 10_000  # most recent excluding events read per user
MAX_INTERESTS = 1_000  # most recent interest events a fold-in reads per user (the service's history limit)
LIKED_RATING = 3.0  # a rating event at least this high is interest (fold-in); any rating excludes the item
# the span's rating of events that carry none (a ``rating`` event keeps its own): params feedback.implied_ratings
IMPLIED_RATINGS = {"view": 3.0, "click": 3.5, "purchase": 5.0, "dislike": 0.0}
SPAN_COLUMNS = ["user_id", "item_id", "rating", "timestamp", "review", "event_id", "event"]
SCHEMA_VERSION = 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUL = "\x00"


class FeedbackError(RecforgeError):
    """An event, a batch or a store setting that breaks a limit (HTTP 400, CLI exit 2); one line."""


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    event: str
    timestamp: int
    rating: float | None = None
    review: str | None = None
    event_id: str | None = None


# ---- checking events -----------------------------------------------------------------------------------------


def _id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FeedbackError(f"{name}: must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not 1 <= len(text) <= MAX_ID_CHARS:
        raise FeedbackError(f"{name}: must be 1 to {MAX_ID_CHARS} characters, got {len(text)}")
    if _CONTROL.search(text):
        raise FeedbackError(f"{name}: must not contain control characters")
    return text


def check_event(raw: Mapping[str, Any], *, now: float | None = None) -> Event:
    """One event from a mapping, every field within its limit, or a one-line :class:`FeedbackError`."""
    if not isinstance(raw, Mapping):
        raise FeedbackError(f"an event must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"user_id", "item_id", "event", "rating", "review", "timestamp", "event_id"})
    if unknown:
        raise FeedbackError(f"unknown field(s) {', '.join(repr(u)[:40] for u in unknown[:5])}")
    for name in ("user_id", "item_id", "event"):
        if raw.get(name) is None:
            raise FeedbackError(f"{name}: required")
    user_id, item_id = _id(raw["user_id"], "user_id"), _id(raw["item_id"], "item_id")
    kind = raw["event"]
    if kind not in EVENTS:
        raise FeedbackError(f"event: must be one of {'|'.join(EVENTS)}, got {str(kind)[:40]!r}")
    rating = raw.get("rating")
    if kind == "rating":
        if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
            raise FeedbackError(f"rating: a 'rating' event needs a number in [{RATING_MIN:g}, {RATING_MAX:g}]")
        if not RATING_MIN <= rating <= RATING_MAX:
            raise FeedbackError(f"rating: must be in [{RATING_MIN:g}, {RATING_MAX:g}], got {rating:g}")
        rating = float(rating)
    elif rating is not None:
        raise FeedbackError(f"rating: only a 'rating' event carries one (this is a {kind!r} event)")
    review = raw.get("review")
    if review is not None:
        if not isinstance(review, str):
            raise FeedbackError(f"review: must be a string, got {type(review).__name__}")
        if len(review) > MAX_REVIEW_CHARS:
            raise FeedbackError(f"review: at most {MAX_REVIEW_CHARS} characters, got {len(review)}")
        if _NUL in review:
            raise FeedbackError("review: must not contain NUL characters")
    now = time.time() if now is None else now
    stamp = raw.get("timestamp")
    if stamp is None:
        stamp = int(now)
    elif isinstance(stamp, bool) or not isinstance(stamp, int):
        raise FeedbackError(f"timestamp: must be integer epoch seconds, got {type(stamp).__name__}")
    elif not 0 <= stamp <= now + MAX_FUTURE_S:
        raise FeedbackError(f"timestamp: must be in [0, now + {MAX_FUTURE_S} s], got {stamp}")
    event_id = raw.get("event_id")
    if event_id is not None:
        if not isinstance(event_id, str):
            raise FeedbackError(f"event_id: must be a string, got {type(event_id).__name__}")
        event_id = _id(event_id, "event_id")
    return Event(user_id, item_id, kind, int(stamp), rating, review, event_id)


def check_events(raws: Iterable[Mapping[str, Any]], *, now: float | None = None) -> list[Event]:
    """A batch of 1 to :data:`MAX_BATCH` events; an error names the first bad event's position."""
    if isinstance(raws, Mapping | str | bytes):
        raise FeedbackError("events: must be a list of events")
    raws = list(raws)
    if not 1 <= len(raws) <= MAX_BATCH:
        raise FeedbackError(f"events: a batch holds 1 to {MAX_BATCH} events, got {len(raws)}")
    now = time.time() if now is None else now
    checked = []
    for position, raw in enumerate(raws):
        try:
            checked.append(raw if isinstance(raw, Event) else check_event(raw, now=now))
        except FeedbackError as exc:
            raise FeedbackError(f"events[{position}].{exc}") from None
    return checked


# ---- the store -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddResult:
    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        """Events whose ``event_id`` was stored before (or earlier in the same batch): not stored again."""
        return self.received - self.stored


@dataclass(frozen=True)
class ExportResult:
    path: Path | None  # None: nothing new to export (no file written, no mark recorded)
    mark_from: int  # rows with mark_from < id <= mark_to were exported
    mark_to: int
    rows: int


@dataclass(frozen=True)
class ForgetResult:
    user_id: str
    removed: int
    items: list[str]
    spans: list[str]  # span files already exported that hold some of the removed events
    cannot_undo: str = field(default="")


def _tables(id_column: str, real: str) -> list[str]:
    return [
        f"""CREATE TABLE feedback_events (
            id {id_column},
            event_id TEXT UNIQUE,
            user_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            event TEXT NOT NULL,
            rating {real},
            review TEXT,
            timestamp BIGINT NOT NULL,
            received_at {real} NOT NULL)""",
        "CREATE INDEX feedback_events_user ON feedback_events (user_id, event)",
        f"""CREATE TABLE feedback_exports (
            id {id_column},
            mark_from BIGINT NOT NULL,
            mark_to BIGINT NOT NULL UNIQUE,
            rows_written BIGINT NOT NULL,
            path TEXT NOT NULL,
            created_at {real} NOT NULL)""",
    ]


# version -> statements, per dialect; a new version appends here (never edit an applied one)
MIGRATIONS = {
    "sqlite": {1: _tables("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")},
    "postgresql": {1: _tables("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "DOUBLE PRECISION")},
}
_COLUMNS = "event_id, user_id, item_id, event, rating, review, timestamp, received_at"
# the items a user showed interest in (fold-in: feedback.foldin), oldest first after reversing
_INTERESTS_SQL = (
    "SELECT item_id FROM feedback_events WHERE user_id = ? AND (event IN ('view', 'click', 'purchase') "
    "OR (event = 'rating' AND rating >= ?)) ORDER BY id DESC LIMIT ?"
)
_EXCLUSIONS_SQL = (
    "SELECT item_id FROM feedback_events WHERE user_id = ? AND event IN ('purchase', 'rating', 'dislike') "
    "ORDER BY id DESC LIMIT ?"
)


def _row(event: Event, received_at: float) -> tuple:
    return (
        event.event_id,
        event.user_id,
        event.item_id,
        event.event,
        event.rating,
        event.review,
        event.timestamp,
        received_at,
    )


def sqlite_path(url: str | Path, root: str | Path | None = None) -> Path | None:
    """The SQLite file a ``feedback.url`` names (relative to ``root``), or None for a PostgreSQL URL."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip() or _NUL in url:
        raise FeedbackError(f"feedback.url: a SQLite file path or postgresql://..., got {url!r}")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme in ("postgresql", "postgres"):
            if urlsplit(url).password:
                raise FeedbackError(
                    "feedback.url: no password in the URL (it would reach the process list and the Bento); "
                    "use PGPASSWORD or ~/.pgpass"
                )
            return None
        if scheme != "sqlite":
            raise FeedbackError(f"feedback.url: unsupported scheme {scheme!r} (a file path or postgresql://)")
        url = url.split("://", 1)[1]
    path = Path(url)
    return path if path.is_absolute() or root is None else Path(root) / path


class FeedbackStore:
    """Durable feedback events in SQLite (one host, any number of processes) or PostgreSQL (several hosts).

    One connection per thread (the service's threadpool and event loop each get their own).
    """

    def __init__(self, url: str | Path, *, root: str | Path | None = None) -> None:
        self.path = sqlite_path(url, root)
        self.dialect = "sqlite" if self.path is not None else "postgresql"
        self.url = url if self.path is None else str(self.path)
        self._local = threading.local()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise FeedbackError(
                    "feedback.url is postgresql://... but psycopg is not installed: pip install 'recforge[serve]'"
                ) from None
        self._migrate()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.dialect}: {self.path or urlsplit(self.url).hostname or 'local socket'})"

    # ---- connections and transactions ---------------------------------------------------------------------

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.dialect == "sqlite":
                connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA busy_timeout = 30000")
                connection.execute("PRAGMA synchronous = FULL")  # committed = on disk, not only in the OS
            else:
                import psycopg

                try:
                    connection = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                except psycopg.OperationalError as exc:
                    raise FeedbackError(f"feedback store: cannot connect ({str(exc).splitlines()[0]})") from None
            self._local.connection = connection
        return connection

    def _sql(self, statement: str) -> str:
        return statement if self.dialect == "sqlite" else statement.replace("?", "%s")

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        """A cursor inside one transaction (SQLite: BEGIN IMMEDIATE for writes); committed on success."""
        connection = self._connection()
        try:
            if self.dialect == "sqlite":
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield connection.cursor()
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            else:
                with connection.transaction(), connection.cursor() as cursor:
                    yield cursor
        except Exception as exc:
            if not isinstance(exc, RecforgeError):
                self._drop_connection()  # a broken connection is not reused; the next call opens a new one
            raise

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def close(self) -> None:
        """Closes this thread's connection."""
        self._drop_connection()

    def _migrate(self) -> None:
        if self.dialect == "sqlite":
            for attempt in range(50):  # several workers switching to WAL at once: one wins, the others wait
                try:
                    self._connection().execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
        migrations = MIGRATIONS[self.dialect]
        with self._transaction() as cursor:
            if self.dialect == "postgresql":
                cursor.execute("SELECT pg_advisory_xact_lock(4242023)")  # one migrating worker at a time
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            cursor.execute(self._sql("SELECT version FROM schema_version WHERE component = ?"), ("feedback",))
            found = cursor.fetchone()
            version = int(found[0]) if found else 0
            if version > SCHEMA_VERSION:
                raise FeedbackError(
                    f"feedback store: schema version {version} is newer than this recforge's ({SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in migrations[target]:
                    cursor.execute(statement)
            if version < SCHEMA_VERSION:
                if found:
                    cursor.execute(
                        self._sql("UPDATE schema_version SET version = ? WHERE component = ?"),
                        (SCHEMA_VERSION, "feedback"),
                    )
                else:
                    cursor.execute(
                        self._sql("INSERT INTO schema_version (component, version) VALUES (?, ?)"),
                        ("feedback", SCHEMA_VERSION),
                    )

    def schema_version(self) -> int:
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql("SELECT version FROM schema_version WHERE component = ?"), ("feedback",))
            return int(cursor.fetchone()[0])

    # ---- events --------------------------------------------------------------------------------------------

    def add(self, events: Iterable[Event | Mapping[str, Any]]) -> AddResult:
        """Store a checked batch in one transaction; returns after the commit (acknowledged = committed)."""
        batch = check_events(events)
        received_at = time.time()
        rows = [_row(event, received_at) for event in batch]
        with self._transaction() as cursor:
            if self.dialect == "sqlite":
                before = cursor.connection.total_changes
                cursor.executemany(
                    "INSERT INTO feedback_events (event_id, user_id, item_id, event, rating, review, timestamp, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    rows,
                )
                stored = cursor.connection.total_changes - before
            else:  # one statement for the whole batch; rowcount counts the rows really inserted
                columns = list(zip(*rows, strict=True))
                cursor.execute(
                    "INSERT INTO feedback_events (event_id, user_id, item_id, event, rating, review, timestamp, received_at) SELECT * FROM unnest("
                    "%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::bigint[], "
                    "%s::float8[]) ON CONFLICT (event_id) DO NOTHING",
                    [list(column) for column in columns],
                )
                stored = cursor.rowcount
        return AddResult(received=len(batch), stored=int(stored))

    def exclusions(self, user_id: str | int) -> frozenset[str]:
        """Items ``user_id`` bought, rated or disliked (the store's events: everything since the last training
        that the store still holds; forgotten users have none). The most recent :data:`MAX_EXCLUSIONS`."""
        return frozenset(self._read(_EXCLUSIONS_SQL, (str(user_id), MAX_EXCLUSIONS)))

    def interests(self, user_id: str | int, limit: int = MAX_INTERESTS) -> tuple[str, ...]:
        """Items ``user_id`` viewed, clicked, bought or rated at least :data:`LIKED_RATING`, oldest first (the
        most recent ``limit``; an item may repeat): what a fold-in adds to the user's trained history."""
        return tuple(reversed(self._read(_INTERESTS_SQL, (str(user_id), LIKED_RATING, int(limit)))))

    def _read(self, statement: str, values: tuple) -> list[str]:
        """One read outside a transaction, on this thread's connection (a broken one is dropped)."""
        connection = self._connection()
        try:
            return [row[0] for row in connection.execute(self._sql(statement), values).fetchall()]
        except Exception:
            self._drop_connection()
            raise

    def count(self) -> int:
        with self._transaction(write=False) as cursor:
            cursor.execute("SELECT count(*) FROM feedback_events")
            return int(cursor.fetchone()[0])

    def events(self, *, after: int = 0, upto: int | None = None) -> pd.DataFrame:
        """Stored events with ``after < id <= upto`` in id order (``id`` included)."""
        query = "SELECT id, event_id, user_id, item_id, event, rating, review, timestamp, received_at FROM feedback_events WHERE id > ? AND id <= ? ORDER BY id"
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql(query), (int(after), int(upto) if upto is not None else 2**63 - 1))
            rows = cursor.fetchall()
        return pd.DataFrame(rows, columns=["id", *_COLUMNS.split(", ")])

    # ---- export --------------------------------------------------------------------------------------------

    def last_mark(self) -> int:
        """The high-water mark of the last recorded export (0 before the first)."""
        with self._transaction(write=False) as cursor:
            cursor.execute("SELECT max(mark_to) FROM feedback_exports")
            found = cursor.fetchone()[0]
        return int(found or 0)

    def _safe_mark(self) -> int:
        """The highest id below which no event can still appear: every id <= it has committed or never will."""
        with self._transaction() as cursor:
            if self.dialect == "postgresql":
                # identities are drawn before commit: id 10 may commit after 11. The lock waits for every
                # writer in flight (they hold ROW EXCLUSIVE until they end) and holds new ones back meanwhile.
                cursor.execute("LOCK TABLE feedback_events IN EXCLUSIVE MODE")
            # SQLite: one writer at a time draws ids in commit order (AUTOINCREMENT never reuses one)
            cursor.execute("SELECT max(id) FROM feedback_events")
            found = cursor.fetchone()[0]
        return int(found or 0)

    def export(
        self,
        out_path: str | Path | None = None,
        *,
        since_mark: int | None = None,
        spans_dir: str | Path = "feedback/spans",
        implied_ratings: Mapping[str, float] | None = None,
    ) -> ExportResult:
        """Write the events after ``since_mark`` (default: the last export's mark) as a span file and record
        the new mark. ``out_path`` (``.parquet`` or ``.csv``; never overwritten) defaults to
        ``<spans_dir>/feedback-<first id>-<last id>.parquet`` (12 digits each: name order is id order). The file is written (atomically) before the mark
        is recorded: a crash in between exports the same events again next time (their ``event_id`` tells),
        never skips them."""
        last = self.last_mark()
        since = last if since_mark is None else int(since_mark)
        if since < 0:
            raise FeedbackError(f"--since: a mark is >= 0, got {since}")
        mark = self._safe_mark()
        frame = self.events(after=since, upto=mark)
        if frame.empty:
            return ExportResult(path=None, mark_from=since, mark_to=max(since, mark), rows=0)
        mark = int(frame["id"].max())
        path = (
            Path(out_path)
            if out_path is not None
            else Path(spans_dir) / f"feedback-{since + 1:012d}-{mark:012d}.parquet"
        )
        if _NUL in str(path):
            raise FeedbackError("--out: a file name without NUL characters")
        if path.suffix not in (".parquet", ".csv"):
            raise FeedbackError(f"{path}: a span is a .parquet or .csv file")
        if path.exists():
            raise FeedbackError(f"{path}: exists already; choose another --out (a span is never overwritten)")
        span = span_frame(frame, implied_ratings)
        from recforge.artifacts import atomic_path

        with atomic_path(path) as tmp:
            if path.suffix == ".parquet":
                span.to_parquet(tmp, index=False)
            else:
                span.to_csv(tmp, index=False)
        with self._transaction() as cursor:
            cursor.execute("SELECT max(mark_to) FROM feedback_exports")
            latest = int(cursor.fetchone()[0] or 0)
            if since_mark is None and latest != last:
                raise FeedbackError(f"another export recorded mark {latest} meanwhile; {path} repeats its events")
            if mark > latest:
                cursor.execute(
                    self._sql(
                        "INSERT INTO feedback_exports (mark_from, mark_to, rows_written, path, created_at) "
                        "VALUES (?, ?, ?, ?, ?)"
                    ),
                    (since, mark, len(span), str(path), time.time()),
                )
        return ExportResult(path=path, mark_from=since, mark_to=mark, rows=len(span))

    # ---- forgetting ----------------------------------------------------------------------------------------

    def forget(self, user_id: str | int) -> ForgetResult:
        """Delete every stored event of ``user_id`` (so no later export holds them) and say what is left."""
        user = _id(user_id, "user_id")
        with self._transaction() as cursor:
            cursor.execute(self._sql("SELECT id, item_id FROM feedback_events WHERE user_id = ? ORDER BY id"), (user,))
            rows = cursor.fetchall()
            spans: list[str] = []
            if rows:
                ids = sorted(int(r[0]) for r in rows)
                cursor.execute(
                    self._sql(
                        "SELECT path, mark_from, mark_to FROM feedback_exports WHERE mark_to >= ? AND mark_from < ? ORDER BY id"
                    ),
                    (ids[0], ids[-1]),
                )
                for path, low, high in cursor.fetchall():
                    first = bisect.bisect_right(ids, int(low))  # the first removed id above the export's start
                    if first < len(ids) and ids[first] <= int(high):
                        spans.append(str(path))
                cursor.execute(self._sql("DELETE FROM feedback_events WHERE user_id = ?"), (user,))
        items = sorted({str(r[1]) for r in rows})
        note = (
            "cannot undo: models already trained on this user's events keep what they learned until the next "
            "training without them"
        )
        if spans:
            note += f"; {len(spans)} span file(s) already exported hold them: delete or rewrite " + ", ".join(spans)
        return ForgetResult(user_id=user, removed=len(rows), items=items, spans=spans, cannot_undo=note)


def span_frame(events: pd.DataFrame, implied_ratings: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Stored events as a span in the canonical interactions format (the ``table`` loader's columns) plus
    ``review``, ``event_id`` and ``event``; events without a rating get ``implied_ratings[event]``."""
    from recforge.interactions import parse_int_id

    def ids(column: pd.Series) -> pd.Series:
        # ids are stored as text; a column of canonical integers goes out as int64 (as a CSV of them would read),
        # so a span joins base data with integer ids (the gate wants one id type per column)
        text = column.astype(str)
        numbers = [parse_int_id(value) for value in text]
        return pd.Series(numbers, index=column.index, dtype="int64") if None not in numbers else text

    implied = {**IMPLIED_RATINGS, **(implied_ratings or {})}
    rating = events["rating"].astype("float64")
    rating = rating.where(rating.notna(), events["event"].map(implied).astype("float64"))
    return pd.DataFrame(
        {
            "user_id": ids(events["user_id"]),
            "item_id": ids(events["item_id"]),
            "rating": rating,
            "timestamp": events["timestamp"].astype("int64"),
            "review": events["review"].fillna("").astype(str),
            "event_id": events["event_id"].astype(object),
            "event": events["event"].astype(str),
        }
    )[SPAN_COLUMNS]


def store_from_params(params: Any, root: str | Path | None = None) -> FeedbackStore:
    """The store ``params.feedback.url`` names (a relative SQLite path is under ``root``, default the cwd)."""
    return FeedbackStore(params.feedback.url, root=root if root is not None else os.getcwd())
