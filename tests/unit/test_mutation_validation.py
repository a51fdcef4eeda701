"""recforge.validation: the gate's pure parts (id kinds, bounds, report text, the failure message) and the
expectations it builds (fast; each test names the wrong behaviour it catches)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recforge import validation
from recforge.data.loaders import Tables
from recforge.errors import ValidationFailed
from recforge.params import load_params
from recforge.validation import Check, Report
from tests.conftest import tmp_overrides

# ---- id kinds --------------------------------------------------------------------------------------------


def test_id_kind_of_each_python_value():
    # catches an id kind misnamed (the report tells the user what to fix), the int64 range off by one at
    # either end, integral floats beyond 2**63 - 1024 (which round past int64) accepted, and NaN / NA / NaT /
    # None not left to the not-null check
    k = validation._id_kind
    assert k("a") == "str" and k(True) == "bool: True" and k(np.bool_(False)) == "bool: np.False_"
    assert k(2**63 - 1) == "int64" and k(-(2**63)) == "int64"
    assert k(2**63) == "int out of int64 range: 9223372036854775808"
    assert k(-(2**63) - 1) == "int out of int64 range: -9223372036854775809"
    assert k(3.0) == "int64" and k(1.5) == "float: 1.5" and k(float("inf")) == "float: inf"
    assert k(float(2**63 - 1024)) == "int64" and k(float(2**63)) == "float: 9.223372036854776e+18"
    assert k(float("nan")) is None and k(None) is None and k(pd.NA) is None and k(pd.NaT) is None
    assert k([1, 2]) == "list: [1, 2]" and k(10**60) == "int out of int64 range: " + str(10**60)[:37] + "..."


def test_short_cuts_at_40_characters():
    # catches long values not shortened (one huge id floods the report) or cut at another length
    assert validation._short("x" * 40) == "x" * 40
    assert validation._short("x" * 41) == "x" * 37 + "..."


def test_id_kinds_by_column_dtype():
    # catches booleans, uint64 beyond int64, nullable integers and string dtypes given the wrong kind, and
    # missing ids not left missing; the index is kept (rows are reported by it)
    bools = validation.id_kinds(pd.Series([True, None], dtype=object).astype("boolean"))
    assert bools.tolist()[0] == "bool: True" and pd.isna(bools.tolist()[1])
    big = validation.id_kinds(pd.Series([1, 2**63], dtype=np.uint64, index=[4, 5]))
    assert big.tolist() == ["int64", "int out of int64 range: 9223372036854775808"] and big.index.tolist() == [4, 5]
    ints = validation.id_kinds(pd.Series([1, None], dtype="Int64", index=[7, 8]))
    assert ints.tolist() == ["int64", None] and ints.index.tolist() == [7, 8]
    strings = validation.id_kinds(pd.Series(["a", None], dtype="string", index=[1, 2]))
    assert strings.tolist() == ["str", None] and strings.index.tolist() == [1, 2]
    mixed = validation.id_kinds(pd.Series(["a", 1, 1.5], index=[3, 4, 5]))
    assert mixed.tolist() == ["str", "int64", "float: 1.5"] and mixed.index.tolist() == [3, 4, 5]


def test_id_type_frame_expects_the_majority_and_names_the_odd_ones():
    # catches the expected kind not the more common one (ties go to int64), the odd ones out not showing
    # their value, and columns absent from the frame not skipped
    frame = pd.DataFrame({"user_id": ["u1", "u2", 3], "item_id": [1, "i", 2]})
    kinds, expected = validation.id_type_frame(frame, ["user_id", "item_id", "nope"])
    assert expected == [("user_id", "str"), ("item_id", "int64")]
    assert kinds["user_id"].tolist() == ["str", "str", "int64: 3"]
    assert kinds["item_id"].tolist() == ["int64", "str: i", "int64"]
    tie = validation.id_type_frame(pd.DataFrame({"user_id": ["a", 1]}), ["user_id"])[1]
    assert tie == [("user_id", "int64")]


# ---- bounds ----------------------------------------------------------------------------------------------


def test_seconds_reads_dates_as_utc_unless_zoned():
    # catches naive dates not read as UTC, and zoned dates shifted again
    assert validation._seconds("1970-01-02") == 86_400
    assert validation._seconds("1970-01-02T01:00:00+01:00") == 86_400


def test_timestamp_bounds_round_up_to_midnight():
    # catches the default upper bound not now + margin rounded up to the next UTC midnight, and explicit
    # bounds ignored
    params = load_params(None, ["validate.timestamp_margin_days=2"]).validate_
    low, high = validation.timestamp_bounds(params, now=10 * 86_400 + 5)
    assert low == validation._seconds(params.timestamp_min) and high == 13 * 86_400
    assert validation.timestamp_bounds(params, now=10 * 86_400)[1] == 12 * 86_400
    fixed = load_params(None, ["validate.timestamp_max='2001-01-01'"]).validate_
    assert validation.timestamp_bounds(fixed, now=0)[1] == 978_307_200


# ---- report text -----------------------------------------------------------------------------------------


def _check(**kw):
    base = dict(table="items", expectation="expect_x", kwargs={"column": "a"}, success=False)
    return Check(**{**base, **kw})


def test_check_arguments_leave_out_batch_id_and_long_value_sets():
    # catches batch_id shown, a long value set printed in full (thousands of item ids), and a short one hidden
    check = _check(kwargs={"column": "a", "batch_id": "b", "value_set": [1, 2, 3, 4]})
    assert check.arguments() == "column=a"
    assert _check(kwargs={"value_set": [1, 2, 3], "min": 0}).arguments() == "value_set=[1, 2, 3], min=0"
    assert _check(kwargs={"value_set": "abcd"}).arguments() == "value_set=abcd"


def test_check_line_counts_examples_and_rows():
    # catches the unexpected count, examples (repr) or rows (singular/plural) missing from the one-line text
    assert _check().line() == "items: expect_x(column=a)"
    one = _check(unexpected_count=1, examples=["u"], rows=[3])
    assert one.line() == "items: expect_x(column=a) — 1 unexpected, e.g. 'u' at row 3"
    two = _check(unexpected_count=2, examples=[1, "v"], rows=[3, 9])
    assert two.line() == "items: expect_x(column=a) — 2 unexpected, e.g. 1, 'v' at rows 3, 9"
    assert _check(unexpected_count=2, examples=[1]).line() == "items: expect_x(column=a) — 2 unexpected, e.g. 1"


def test_report_dict_and_markdown():
    # catches the status, counts or result column wrong in the written reports
    ok = _check(success=True)
    bad = _check(table="interactions", unexpected_count=2, examples=["a", 1])
    report = Report([ok, bad])
    data = report.to_dict()
    assert (data["success"], data["evaluated"], data["failed"]) == (False, 2, 1)
    assert data["checks"][1]["examples"] == ["a", 1]
    text = report.to_markdown()
    assert text.startswith("# Data validation: FAILED\n\n2 expectations, 1 failed.\n\n")
    lines = text.splitlines()
    assert lines[4].replace(" ", "") == "|table|expectation|arguments|result|unexpected|examples|"
    assert [cell.strip() for cell in lines[6].split("|")[1:-1]] == ["items", "expect_x", "column=a", "ok", "", ""]
    assert [cell.strip() for cell in lines[7].split("|")[1:-1]] == [
        "interactions", "expect_x", "column=a", "**FAILED**", "2", "a, 1",
    ]  # fmt: skip
    assert Report([ok]).to_markdown().startswith("# Data validation: PASSED\n\n1 expectations, 0 failed.")


def test_unique_and_plain():
    # catches repeated examples kept, their first-seen order lost, and numpy / missing values not made plain
    assert validation._unique([[1], 2, [1], "2", 2]) == [[1], 2, "2"]
    assert validation._plain(np.int64(3)) == 3 and type(validation._plain(np.int64(3))) is int
    assert validation._plain(None) is None and validation._plain(pd.NA) is None and validation._plain(pd.NaT) is None
    assert validation._plain(float("nan")) is None
    assert validation._plain((np.int64(1), 2)) == [1, 2] and validation._plain(list(range(30))) == list(range(20))
    assert validation._plain("s") == "s"


def test_gate_writes_reports_and_names_source_and_failures(tmp_path):
    # catches the failure message without the source, the count, each failed check or the report path, and
    # the reports not written (or written elsewhere)
    params = load_params(None, tmp_overrides(tmp_path))
    ok, bad = _check(success=True), _check(unexpected_count=1, examples=["u"], rows=[2])
    assert validation.gate([ok], params).success
    with pytest.raises(ValidationFailed) as info:
        validation.gate([ok, bad, _check(table="users")], params, source="data.csv")
    report_path = validation.write_report(Report([ok, bad, _check(table="users")]), params.paths.reports_dir)
    assert str(info.value) == (
        "data validation failed for data.csv (2 expectations): items: expect_x(column=a) — 1 unexpected, e.g. 'u' "
        f"at row 2; users: expect_x(column=a) (report: {report_path})"
    )
    assert json.loads(report_path.read_text())["failed"] == 2
    assert (report_path.parent / "validation.md").read_text().startswith("# Data validation: FAILED")
    with pytest.raises(ValidationFailed, match=r"^data validation failed \(1 expectations\)"):
        validation.gate([bad], params)


# ---- the expectations built --------------------------------------------------------------------------------


def _described(suites):
    return {
        table: (frame, [(e.__class__.__name__, e.dict(exclude_none=True, include=_FIELDS)) for e in checks])
        for table, (frame, checks) in suites.items()
    }


_FIELDS = {"column", "min_value", "max_value", "value_set"}


def test_raw_suites_cover_nulls_ranges_references_and_id_types():
    # catches an expectation dropped or built on another column, rating / timestamp bounds not the
    # configured ones, the item reference set not the catalogue, and id types not checked per table
    params = load_params(
        None, ["validate.rating_min=1", "validate.rating_max=5", "validate.timestamp_max='2001-01-01'"]
    )
    inter = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 11], "rating": [4.0, 5.0], "timestamp": [1, 2]})
    items = pd.DataFrame({"item_id": [10, 11, None]})
    suites = _described(validation.raw_suites(Tables(inter, items), params))
    assert list(suites) == ["interactions", "items", "interactions (id types)", "items (id types)"]
    low, high = validation.timestamp_bounds(params.validate_)
    assert suites["interactions"][1] == [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnToExist", {"column": "user_id"}),
        ("ExpectColumnToExist", {"column": "item_id"}),
        ("ExpectColumnToExist", {"column": "timestamp"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "user_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "timestamp"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "rating"}),
        ("ExpectColumnValuesToBeBetween", {"column": "rating", "min_value": 1.0, "max_value": 5.0}),
        ("ExpectColumnValuesToBeBetween", {"column": "timestamp", "min_value": low, "max_value": high}),
        ("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": [10.0, 11.0]}),
    ]
    assert suites["items"][1] == [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnToExist", {"column": "item_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        ("ExpectColumnValuesToBeUnique", {"column": "item_id"}),
    ]
    assert suites["interactions (id types)"][1] == [
        ("ExpectColumnValuesToBeInSet", {"column": "user_id", "value_set": ["int64"]}),
        ("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": ["int64"]}),
    ]
    assert suites["items (id types)"][1] == [
        ("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": ["int64"]})
    ]
    assert suites["interactions"][0] is inter and suites["items"][0] is items
    bare = _described(validation.raw_suites(Tables(inter.drop(columns=["rating", "timestamp"]), items), params))
    names = [name for name, _ in bare["interactions"][1]]
    assert names.count("ExpectColumnValuesToBeBetween") == 0 and names.count("ExpectColumnValuesToNotBeNull") == 2


def test_prepared_suites_count_per_user_and_text():
    # catches the per-user minimum not the configured one, users counted wrongly, and item text not
    # title + text (stripped) or checked when require_text is off
    params = load_params(None, ["validate.min_interactions_per_user=3", "validate.require_text=true"])
    inter = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 1]})
    items = pd.DataFrame({"item_id": [1, 2], "title": ["A", None], "text": [None, " b "]})
    suites = _described(validation.prepared_suites(Tables(inter, items), params))
    counts, checks = suites[validation.PER_USER]
    assert counts.values.tolist() == [[1, 2], [2, 1]] and list(counts.columns) == ["user_id", "interactions"]
    assert checks == [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnValuesToBeBetween", {"column": "interactions", "min_value": 3}),
    ]
    text, checks = suites["items (text)"]
    assert text.values.tolist() == [[1, "A"], [2, "b"]]
    assert checks == [("ExpectColumnValueLengthsToBeBetween", {"column": "item_text", "min_value": 1})]
    off = load_params(None, ["validate.require_text=false"])
    assert list(validation.prepared_suites(Tables(inter, items), off)) == [validation.PER_USER]
