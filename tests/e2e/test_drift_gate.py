"""The drift gate in `recforge stage ingest` (a subprocess): a drifting span warns, a bad span stops the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.e2e.test_spans import _sets, recforge, span_frame


def _ingest(root: Path, *extra: str):
    return recforge("stage", "ingest", *_sets(root, ["data.spans_held_out=0", *extra]), cwd=root)


def test_drift_warns_then_stops_and_leaves_the_tables(tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    span_frame(1_700_000_000).to_csv(spans / "0001.csv", index=False)
    first = _ingest(tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads((tmp_path / "reports/validation.json").read_text())
    drift = [c for c in report["checks"] if c["expectation"].startswith("drift.")]
    assert {c["expectation"] for c in drift} == {
        "drift.unknown_users",
        "drift.unknown_items",
        "drift.rating_psi",
        "drift.events_per_user",
        "drift.predating",
        "drift.duplicates",
    }
    assert report["warnings"] == 0 and all(c["success"] for c in drift)

    # a fifth of the events predate the reference: a warning (>= 0.05, < 0.5), the run goes on
    late = span_frame(1_710_000_000, seed=3)
    late.loc[:39, "timestamp"] = 1_600_000_000
    late.to_csv(spans / "0002.csv", index=False)
    warned = _ingest(tmp_path)
    assert warned.returncode == 0, warned.stderr
    markdown = (tmp_path / "reports/validation.md").read_text()
    assert "1 warnings" in markdown and "span 0002.csv" in markdown and "drift.predating" in markdown
    before = (tmp_path / "data/canonical/interactions.parquet").read_bytes()

    # every event from users nobody has seen: unknown_users = 1.0 >= fail
    span_frame(1_720_000_000, users=range(10_000, 10_050)).to_csv(spans / "0003.csv", index=False)
    stopped = _ingest(tmp_path)
    assert stopped.returncode == 2
    assert "drift.unknown_users" in stopped.stderr and len(stopped.stderr.strip().splitlines()) == 1
    assert (tmp_path / "data/canonical/interactions.parquet").read_bytes() == before
    (spans / "0003.csv").unlink()


def test_a_held_out_span_is_gated_too(tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    bad = span_frame(1_700_000_000)
    bad["rating"] = np.where(np.arange(len(bad)) < 5, 9.0, bad["rating"])  # out of [0, 5]
    bad.to_csv(spans / "0001.csv", index=False)
    done = recforge("stage", "ingest", *_sets(tmp_path), cwd=tmp_path)  # held out: not trained on, still checked
    assert done.returncode == 2
    assert "expect_column_values_to_be_between" in done.stderr and "rating" in done.stderr
    assert not (tmp_path / "data/canonical").exists()
    assert pd.read_csv(spans / "0001.csv")["rating"].max() == 9.0  # the span is left for the user to fix
