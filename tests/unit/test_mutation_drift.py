"""recforge.drift: the reference, the six statistics, their thresholds and the spans ingest checks (fast; each
test names the wrong behaviour it catches). test_drift.py covers the statistics on a typical span."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import drift
from recforge.drift import Reference, psi, span_checks, statistics
from recforge.params import DriftParams, load_params
from recforge.validation import Check
from tests.conftest import tmp_overrides

FLOOR = 1e-4


def frame(users, items, times, ratings=None) -> pd.DataFrame:
    data = {"user_id": users, "item_id": items, "timestamp": times}
    if ratings is not None:
        data["rating"] = ratings
    return pd.DataFrame(data)


def term(s: float, r: float) -> float:
    """One bin's share of the PSI: (s - r) * ln(s / r)."""
    return (s - r) * math.log(s / r)


# ---- the reference ---------------------------------------------------------------------------------------


def test_reference_from_frame_reads_what_it_summarises():
    # catches ratings or timestamps not coerced (a stray text value must become a gap, not an error), the
    # ratings' gaps kept, the events per user not events / distinct users, the last timestamp not the
    # largest one, and the keys not sorted (the duplicate look-up relies on it)
    ref = Reference.from_frame(
        frame([1, 1, 2], [10, 11, 10], pd.Series(["100", "300", "x"], dtype=object), ["4", "x", 5.0]), "base"
    )
    assert ref.source == "base"
    assert ref.ratings.tolist() == [4.0, 5.0] and ref.ratings.dtype == np.float64
    assert sorted(ref.users.tolist()) == [1, 2] and sorted(ref.items.tolist()) == [10, 11]
    assert ref.events_per_user == 1.5
    assert ref.last_timestamp == 300
    assert len(ref.keys) == 3 and (np.diff(ref.keys.astype(np.float64)) >= 0).all()


def test_reference_of_one_user_and_of_no_events():
    # catches the users floor not 1 (one user with two events: two per user), an empty reference's last
    # timestamp not 0 and its keys not an empty uint64 array, a frame without ratings given some, and integer
    # ratings kept as integers (the reference's ratings are float64 whatever their source)
    one = Reference.from_frame(frame([7, 7], [1, 2], [5, 6]), "one")
    assert one.events_per_user == 2.0 and one.ratings is None
    integers = Reference.from_frame(frame([7, 7], [1, 2], [5, 6], [4, 5]), "ints")
    assert integers.ratings.dtype == np.float64  # the same dtype as a package's float32 ratings read back
    empty = Reference.from_frame(frame([], [], [], []), "none")
    assert empty.events_per_user == 0.0 and empty.last_timestamp == 0
    assert empty.keys.dtype == np.uint64 and len(empty.keys) == 0
    assert empty.ratings is not None and len(empty.ratings) == 0
    assert drift._keys(frame([], [], [])).dtype == np.uint64


def test_keys_match_the_same_event_spelled_differently():
    # catches float ids with gaps (5.0 read from a column holding NaN) or text timestamps hashed as they
    # are, so a repeated event of the reference is not seen as a duplicate; non-integral floats stay floats
    ref = Reference.from_frame(frame([1, 3], [11, 13], [100, 300]), "ref")
    span = frame([1.0, np.nan, 3.0], [11.0, 12.0, 13.0], pd.Series(["100", "200", "300"], dtype=object))
    assert statistics(span, ref)["duplicates"] == pytest.approx(2 / 3)
    assert statistics(frame([1.5], [11], [100]), ref)["duplicates"] == 0.0


# ---- PSI -------------------------------------------------------------------------------------------------


def test_psi_on_rating_values_by_hand():
    # catches the shares not floored at 1e-4, a reference value in the wrong bin, and the smallest or
    # largest value taken for a value the reference never had (the clip of the positions)
    assert psi(np.array([1.0, 1, 2, 2]), np.array([1.0, 1, 1, 2])) == pytest.approx(0.25 * math.log(3))
    new_low = psi(np.array([1.0, 2.0]), np.array([0.5, 1.0]))
    assert new_low == pytest.approx(term(0.5, 0.5) + term(FLOOR, 0.5) + term(0.5, FLOOR))
    new_high = psi(np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    assert new_high == pytest.approx(term(FLOOR, 0.5) + term(0.5, 0.5) + term(0.5, FLOOR))
    # a sample without the top value: every bin is there all the same
    assert psi(np.array([1.0, 2.0, 3.0]), np.array([1.0])) == pytest.approx(term(1.0, 1 / 3) + 2 * term(FLOOR, 1 / 3))


def test_psi_of_nothing_is_zero():
    # catches an empty reference or sample not short-cut (a division by an empty count)
    assert psi(np.array([]), np.array([1.0])) == 0.0
    assert psi(np.array([1.0]), np.array([])) == 0.0


def test_psi_uses_value_bins_up_to_20_values_then_deciles():
    # catches the 20-value limit off by one (20 distinct ratings still get a bin each) and decile bins
    # that are not ten equal shares of the reference
    twenty = np.arange(20, dtype=np.float64)
    value_bins = 20 * term(FLOOR, 0.05) + term(1.0, FLOOR)  # 0.5: a value of its own
    assert psi(twenty, np.full(4, 0.5)) == pytest.approx(value_bins)
    hundred = np.arange(100, dtype=np.float64)  # deciles 9.9, 19.8, ...: ten bins of ten values
    assert psi(hundred, np.zeros(5)) == pytest.approx(term(1.0, 0.1) + 9 * term(FLOOR, 0.1))
    assert psi(hundred, np.full(5, 95.0)) == pytest.approx(term(1.0, 0.1) + 9 * term(FLOOR, 0.1))
    assert psi(hundred, hundred[::-1]) == pytest.approx(0.0, abs=1e-12)


# ---- the statistics --------------------------------------------------------------------------------------

REF = Reference.from_frame(frame([1, 1, 2, 2], [10, 11, 10, 12], [100, 110, 120, 130], [4.0, 5.0, 4.0, 5.0]), "ref")


def test_statistics_of_a_single_event():
    # catches the share's denominator floor not 1 (one unknown event out of one is 1.0), the event at the
    # reference's last timestamp counted as predating, and the per-user rate's users floor
    stats = statistics(frame([9], [99], [130]), REF)
    assert stats["unknown_users"] == 1.0 and stats["unknown_items"] == 1.0
    assert stats["predating"] == 0.0 and stats["duplicates"] == 0.0
    assert stats["events_per_user"] == 2.0  # 1 event per user against 2: the fold change both ways


def test_text_timestamps_in_a_span_are_gaps():
    # catches the span's timestamps not coerced (a text value must not stop the statistics): it is not
    # counted as predating
    stats = statistics(frame([1, 2], [10, 10], pd.Series(["50", "x"], dtype=object)), REF)
    assert stats["predating"] == 0.5


def test_events_per_user_is_a_fold_change_both_ways():
    # catches max(x, 1/x) miswritten: eight events of one user against two per user is 4.0
    assert statistics(frame([1] * 8, list(range(8)), [200] * 8), REF)["events_per_user"] == 4.0
    assert statistics(frame([1, 2, 3, 4], [10] * 4, [200] * 4), REF)["events_per_user"] == 2.0


def test_statistics_of_an_empty_span_and_an_empty_reference():
    # catches a span without events dividing by zero (its rate is 0: an infinite fold change) and an empty
    # reference (no rate to compare with) not giving the neutral fold change 1.0
    stats = statistics(frame([], [], []), REF)
    assert stats["events_per_user"] == math.inf
    assert stats["unknown_users"] == stats["predating"] == stats["duplicates"] == 0.0
    empty = Reference.from_frame(frame([], [], []), "empty")
    assert statistics(frame([1, 2, 3], [4, 5, 6], [7, 8, 9]), empty)["events_per_user"] == 1.0


def test_rating_psi_needs_ratings_on_both_sides():
    # catches the PSI computed (or crashing) when the reference has no ratings, the span has none, or the
    # reference's ratings are all gaps; and the span's text ratings not coerced with their gaps dropped
    span = frame([1], [10], [200], pd.Series(["5"], dtype=object))
    assert statistics(span, Reference.from_frame(frame([1], [10], [100]), "r"))["rating_psi"] is None
    assert statistics(frame([1], [10], [200]), REF)["rating_psi"] is None
    no_values = Reference.from_frame(frame([1], [10], [100], [np.nan]), "r")
    assert statistics(span, no_values)["rating_psi"] is None
    texts = frame([1, 2], [10, 10], [200, 201], pd.Series(["5", "x"], dtype=object))
    assert statistics(texts, REF)["rating_psi"] == pytest.approx(term(1.0, 0.5) + term(FLOOR, 0.5))


# ---- thresholds ------------------------------------------------------------------------------------------


def test_span_checks_at_the_thresholds():
    # catches `fail` not inclusive (a value at it passes), `warn` not inclusive, a failed check also
    # marked a warning, the value not rounded to 4 decimals, and the table / expectation misnamed
    params = DriftParams(
        unknown_users={"warn": 0.5, "fail": 1.0},
        unknown_items={"warn": 0.1, "fail": 1 / 3},
        predating={"warn": 0.2, "fail": 0.9},
        duplicates={"warn": 0.5, "fail": 0.9},
        events_per_user={"warn": 1.5, "fail": 2.0},
    )
    span = frame([1, 9, 9], [10, 10, 99], [50, 200, 210])  # one predating, one known user, item 99 unknown
    checks = {c.expectation: c for c in span_checks("0007.csv", span, REF, params)}
    assert list(checks) == [f"drift.{name}" for name in drift.STATISTICS if name != "rating_psi"]
    users = checks["drift.unknown_users"]
    assert users.table == "span 0007.csv (drift vs ref)"
    assert users.kwargs == {"value": 0.6667, "warn": 0.5, "fail": 1.0}
    assert users.success and users.warning
    items = checks["drift.unknown_items"]  # 1/3: at the fail threshold
    assert not items.success and not items.warning
    assert checks["drift.predating"].success and checks["drift.predating"].warning  # 1/3: warn 0.2, fail 0.9
    assert not checks["drift.duplicates"].warning  # 0.0
    per_user = checks["drift.events_per_user"]  # 1.5 per user against 2: 4/3
    assert per_user.kwargs["value"] == 1.3333 and per_user.success and not per_user.warning
    at_warn = span_checks("s", frame([1, 9], [10, 10], [200, 210]), REF, params)[0]  # 0.5 unknown users
    assert at_warn.success and at_warn.warning


# ---- the spans ingest checks -----------------------------------------------------------------------------


def write_span(directory: Path, name: str, rows: list[tuple]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,timestamp,rating", *(",".join(map(str, row)) for row in rows)]
    (directory / name).write_text("\n".join(lines) + "\n")


def params_for(tmp_path: Path, *overrides: str):
    return load_params(
        None,
        [
            *tmp_overrides(tmp_path),
            f"data.spans={tmp_path / 'spans'}",
            f"promote.registry={tmp_path / 'registry.json'}",
            *overrides,
        ],
    )


BASE = frame([1, 1, 2], [10, 11, 10], [100, 110, 120], [4.0, 5.0, 4.0])


def test_no_checks_when_disabled_or_without_spans(tmp_path):
    # catches the checks run with drift disabled, or failing when there is no span
    assert drift.drift_checks(params_for(tmp_path), BASE) == []
    write_span(tmp_path / "spans", "0001.csv", [(9, 10, 200, 4.0)])
    assert drift.drift_checks(params_for(tmp_path, "validate.drift.enabled=false"), BASE) == []
    assert len(drift.drift_checks(params_for(tmp_path), BASE)) == 6


def test_before_production_each_span_is_checked_against_what_precedes_it(tmp_path):
    # catches a span compared with the base data alone (span 2's user 9 came in span 1) or with itself,
    # and the reference misnamed in the report
    write_span(tmp_path / "spans", "0001.csv", [(9, 10, 200, 4.0), (9, 11, 210, 5.0)])
    write_span(tmp_path / "spans", "0002.csv", [(9, 10, 300, 4.0), (8, 10, 310, 4.0)])
    checks = drift.drift_checks(params_for(tmp_path), BASE)
    users = [(c.table, c.kwargs["value"]) for c in checks if c.expectation == "drift.unknown_users"]
    assert users == [("span 0001.csv (drift vs earlier data)", 1.0), ("span 0002.csv (drift vs earlier data)", 0.5)]


def make_package(directory: Path, users: list, items: list, history: dict[str, list]) -> Path:
    """A package holding what the reference reads (ids, train+val history); placeholder digests."""
    from recforge.packaging import MANIFEST, PACKAGE_FORMAT, package_files

    directory.mkdir(parents=True)
    pd.DataFrame({"item_id": items}).to_parquet(directory / "items.parquet", index=False)
    pd.DataFrame({"user_id": users}).to_parquet(directory / "users.parquet", index=False)
    arrays = {key: np.asarray(value) for key, value in history.items()}
    np.savez(directory / "history.npz", **arrays)
    (directory / "params.json").write_text(json.dumps(load_params(None, []).to_dict()))
    checksums = dict.fromkeys(package_files(directory), "0" * 64)
    (directory / MANIFEST).write_text(json.dumps({"format": PACKAGE_FORMAT, "checksums": checksums}))
    return directory


def register(tmp_path: Path, package: Path, spans: list[str] | None) -> None:
    tag = "recforge-model:v1"
    version = {"package_path": str(package), "content_hash": "0" * 64}
    if spans is not None:
        version["spans"] = spans
    body = {"format": 1, "serial": 1, "versions": {tag: version}, "lineage": [tag], "history": []}
    (tmp_path / "registry.json").write_text(json.dumps(body))


HISTORY = {  # users 1 (items 10, 11) and 2 (item 10), dense ids 0 and 1
    "indptr": np.array([0, 2, 3], np.int64),
    "items": np.array([0, 1, 0], np.int32),
    "timestamps": np.array([100, 110, 120], np.int64),
    "ratings": np.array([4.0, 5.0, 4.0], np.float32),
}


def test_after_promotion_new_spans_are_checked_against_the_production_history(tmp_path):
    # catches the spans production was trained on checked again (or one of the new ones skipped), the package's
    # dense ids not mapped back to original ids, its ratings or timestamps not read, and the package's
    # files hashed again (the reference reads it with verify=False: placeholder digests here)
    package = make_package(tmp_path / "package", [1, 2], [10, 11], HISTORY)
    register(tmp_path, package, ["0001.csv"])
    write_span(tmp_path / "spans", "0001.csv", [(9, 99, 50, 1.0)])
    write_span(tmp_path / "spans", "0002.csv", [(1, 10, 100, 4.0), (2, 12, 130, 5.0)])
    write_span(tmp_path / "spans", "0003.csv", [(1, 11, 500, 5.0)])
    found = drift.drift_checks(params_for(tmp_path), BASE)
    assert [c.table for c in found] == ["span 0002.csv (drift vs production)"] * 6 + [
        "span 0003.csv (drift vs production)"
    ] * 6
    checks = {c.expectation: c for c in found[:6]}
    values = {name: c.kwargs["value"] for name, c in checks.items()}
    assert values["drift.unknown_users"] == 0.0 and values["drift.unknown_items"] == 0.5
    assert values["drift.predating"] == 0.5 and values["drift.duplicates"] == 0.5
    assert values["drift.rating_psi"] == round(term(0.5, 2 / 3) + term(0.5, 1 / 3), 4)


def test_a_version_without_recorded_spans_has_every_span_checked(tmp_path):
    # catches a registry entry without "spans" taken as trained on every span
    package = make_package(tmp_path / "package", [1, 2], [10, 11], {k: v for k, v in HISTORY.items() if k != "ratings"})
    register(tmp_path, package, None)
    write_span(tmp_path / "spans", "0001.csv", [(9, 99, 50, 1.0)])
    checks = drift.drift_checks(params_for(tmp_path), BASE)
    assert [c.expectation for c in checks] == [f"drift.{n}" for n in drift.STATISTICS if n != "rating_psi"]
    assert checks[0].table == "span 0001.csv (drift vs production)"


# ---- the record ------------------------------------------------------------------------------------------


def test_the_record_keeps_the_drift_checks_only(tmp_path):
    # catches other checks recorded as drift, the record not read back (or read from elsewhere), and a
    # missing record not an empty list
    params = load_params(None, tmp_overrides(tmp_path))
    assert drift.recorded_checks(params) == []
    kept = Check(table="span a", expectation="drift.predating", kwargs={"value": 0.1}, success=True)
    kept.warning = True
    other = Check(table="t", expectation="expect_column_values_to_not_be_null", kwargs={}, success=True)
    directory = Path(params.paths.canonical_dir)
    directory.mkdir(parents=True)
    drift.write_record(directory, [other, kept])
    text = (directory / drift.RECORD).read_text()
    assert text == json.dumps([kept.__dict__], indent=2) + "\n"
    assert drift.recorded_checks(params) == [kept]
