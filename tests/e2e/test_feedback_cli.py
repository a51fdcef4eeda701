"""`recforge data export-feedback` and `recforge data forget` in subprocesses, on a real SQLite store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from recforge.feedback import FeedbackStore

RECFORGE = str(Path(sys.executable).parent / "recforge")


def recforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([RECFORGE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_export_then_forget_from_the_command_line(tmp_path):
    # catches the CLI exporting from another store than the service writes (the default url, relative to the
    # workspace), a second export repeating the first, forget not reaching the store, and the span it cannot undo
    # left unnamed
    store = FeedbackStore("feedback/events.sqlite3", root=tmp_path)
    store.add([{"user_id": "u1", "item_id": f"i{n}", "event": "purchase", "event_id": f"e{n}"} for n in range(2)])
    store.add([{"user_id": "u2", "item_id": "i9", "event": "rating", "rating": 4.5, "review": "fine"}])
    first = recforge("data", "export-feedback", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    span = tmp_path / "feedback/spans/feedback-000000000001-000000000003.parquet"
    assert "3 events (ids 1..3)" in first.stdout and "mark 3 recorded" in first.stdout
    assert pd.read_parquet(span)["review"].tolist() == ["", "", "fine"]
    again = recforge("data", "export-feedback", cwd=tmp_path)
    assert again.returncode == 0 and "no events after mark 3: nothing written" in again.stdout
    replay = recforge("data", "export-feedback", "--since", "1", "--out", "replay.csv", cwd=tmp_path)
    assert replay.returncode == 0 and len(pd.read_csv(tmp_path / "replay.csv")) == 2
    forget = recforge("data", "forget", "u1", cwd=tmp_path)
    assert forget.returncode == 0, forget.stderr
    assert "removed 2 events of user u1 (items i0, i1)" in forget.stdout
    assert "models already trained" in forget.stdout and span.name in forget.stdout.replace("\n", "")
    assert store.count() == 1 and store.exclusions("u1") == frozenset()


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    # catches a negative mark accepted, an unreadable span suffix written, a file overwritten, a control character
    # in a user id reaching the store, and a bad store URL as a traceback
    FeedbackStore("feedback/events.sqlite3", root=tmp_path).add([{"user_id": "u", "item_id": "i", "event": "view"}])
    (tmp_path / "taken.parquet").write_text("keep me")
    cases = [
        (["data", "export-feedback", "--since", "-1"], "greater than or equal to 0"),
        (["data", "export-feedback", "--out", "span.txt"], "a span is a .parquet or .csv file"),
        (["data", "export-feedback", "--out", "taken.parquet"], "exists already"),
        (["data", "forget", "bad\x01user"], "user_id: must not contain control characters"),
        (["data", "forget", "u", "-S", "feedback.url=mysql://db/x"], "unsupported scheme 'mysql'"),
    ]
    for args, message in cases:
        result = recforge(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert (tmp_path / "taken.parquet").read_text() == "keep me"
