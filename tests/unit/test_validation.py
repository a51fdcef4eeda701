"""The Great Expectations gate: corrupted data stops the run, nothing downstream is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.loaders import Tables
from recforge.errors import RecforgeError, ValidationFailed
from recforge.params import ValidateParams, load_params
from recforge.stages.ingest import run_ingest
from recforge.stages.validate import run_validate
from recforge.validation import id_kinds, id_type_frame, raw_suites, run_suites, timestamp_bounds
from tests.conftest import tmp_overrides
from tests.unit.crafted_inputs import GATE_FAILURES, write_cases


def _write_movielens(root: Path, ratings: pd.DataFrame) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ratings.to_csv(root / "ratings.csv", index=False)
    items = pd.DataFrame({"movieId": range(1, 21), "title": [f"Movie {i}" for i in range(1, 21)], "genres": "Drama"})
    items.to_csv(root / "movies.csv", index=False)


def _clean_ratings() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 31), 10)
    items = np.concatenate([rng.choice(np.arange(1, 21), size=10, replace=False) for _ in range(30)])
    return pd.DataFrame(
        {
            "userId": users,
            "movieId": items,
            "rating": rng.choice([1.0, 3.5, 5.0], size=len(users)),
            "timestamp": 1_500_000_000 + np.arange(len(users)),
        }
    )


def _params(tmp_path: Path, data: Path):
    return load_params(
        None, tmp_overrides(tmp_path / "out") + ["data.format=movielens-latest", f"data.path={data}", "data.kcore=2"]
    )


def test_clean_data_passes_and_writes_report(tmp_path):
    _write_movielens(tmp_path / "clean", _clean_ratings())
    params = _params(tmp_path, tmp_path / "clean")
    run_ingest(params)
    run_validate(params)
    report = json.loads((Path(params.paths.reports_dir) / "validation.json").read_text())
    assert report["success"] is True and report["failed"] == 0 and report["evaluated"] >= 10
    assert "PASSED" in (Path(params.paths.reports_dir) / "validation.md").read_text()


def test_corrupted_data_stops_at_gate_and_keeps_previous_outputs(tmp_path):
    _write_movielens(tmp_path / "clean", _clean_ratings())
    params = _params(tmp_path, tmp_path / "clean")
    run_ingest(params)
    canonical = Path(params.paths.canonical_dir) / "interactions.parquet"
    before = canonical.read_bytes()

    bad = _clean_ratings().astype({"userId": "float64"})
    bad.loc[0, "userId"] = np.nan  # null id
    bad.loc[1, "rating"] = 9.0  # out of range
    bad.loc[2, "movieId"] = 999  # unknown item
    _write_movielens(tmp_path / "bad", bad)
    corrupted = _params(tmp_path, tmp_path / "bad")
    with pytest.raises(ValidationFailed) as failure:
        run_ingest(corrupted)
    message = str(failure.value)
    assert "expect_column_values_to_not_be_null" in message
    assert "expect_column_values_to_be_between" in message and "9.0" in message
    assert "expect_column_values_to_be_in_set" in message and "999" in message
    assert canonical.read_bytes() == before  # previous outputs untouched
    report = json.loads((Path(params.paths.reports_dir) / "validation.json").read_text())
    assert report["success"] is False and report["failed"] == 3
    assert "FAILED" in (Path(params.paths.reports_dir) / "validation.md").read_text()


def test_too_short_histories_fail_after_filtering(tmp_path):
    _write_movielens(tmp_path / "clean", _clean_ratings())
    params = load_params(
        None,
        tmp_overrides(tmp_path / "out")
        + [
            "data.format=movielens-latest",
            f"data.path={tmp_path / 'clean'}",
            "data.kcore=0",
            "validate.min_interactions_per_user=50",
        ],
    )
    with pytest.raises(ValidationFailed, match="interactions"):
        run_ingest(params)
    assert not Path(params.paths.canonical_dir).exists()


# ---- the gate's new checks (issue 11): nulls, infinities, the future, id types (cases in crafted_inputs.py) ----


@pytest.mark.parametrize("case", sorted(GATE_FAILURES))
def test_crafted_input_fails_the_gate_naming_the_file(tmp_path, case):
    data_format, path = write_cases(tmp_path / "in")[case]
    params = load_params(None, tmp_overrides(tmp_path / "out") + [f"data.format={data_format}", f"data.path={path}"])
    with pytest.raises(ValidationFailed, match=GATE_FAILURES[case]) as failure:
        run_ingest(params)
    message = str(failure.value)
    assert f"data validation failed for {path} (1 expectations)" in message and "\n" not in message
    assert not Path(params.paths.canonical_dir).exists()  # nothing reached Parquet


def test_timestamp_max_defaults_to_now_plus_a_margin_and_stays_configurable():
    v = ValidateParams()
    assert v.timestamp_max is None
    now = 1_800_000_000.5
    low, high = timestamp_bounds(v, now=now)
    assert low == 0 and high % 86_400 == 0 and now + 86_400 <= high < now + 2 * 86_400
    assert timestamp_bounds(ValidateParams(timestamp_margin_days=0), now=now)[1] == 1_800_057_600  # next midnight
    assert timestamp_bounds(ValidateParams(timestamp_max="2100-01-01"), now=now)[1] == 4_102_444_800
    assert timestamp_bounds(ValidateParams(timestamp_max="2030-01-01T00:00:00+01:00"), now=now)[1] == 1_893_452_400
    assert load_params(None, ["validate.timestamp_max=2030-01-01"]).validate_.timestamp_max == "2030-01-01"


@pytest.mark.parametrize(
    "override, message",
    [
        ("validate.timestamp_max=next year", r"'validate\.timestamp_max': .*not a date"),
        ("validate.rating_max=.inf", r"'validate\.rating_max': .*finite"),
        ("validate.rating_min=.nan", r"'validate\.rating_min': .*finite"),
        ("validate.rating_min=6", r"rating_min 6\.0 is above rating_max 5\.0"),
        ("validate.timestamp_margin_days=-1", r"'validate\.timestamp_margin_days'"),
    ],
)
def test_gate_settings_are_checked_when_loaded(override, message):
    with pytest.raises(RecforgeError, match=message):
        load_params(None, [override])


def test_id_kinds_say_what_parquet_cannot_store():
    kinds = id_kinds(pd.Series([1, 10**30, "a", 1.0, 1.5, None, True, [1]], dtype=object)).tolist()
    assert kinds == [
        "int64",
        "int out of int64 range: 1000000000000000000000000000000",
        "str",
        "int64",
        "float: 1.5",
        None,
        "bool: True",
        "list: [1]",
    ]
    assert id_kinds(pd.Series([1, 2], dtype=np.int64)).tolist() == ["int64", "int64"]
    assert id_kinds(pd.Series([1.0, np.nan])).tolist() == ["int64", None]
    assert id_kinds(pd.Series(["a", None], dtype="str")).tolist() == ["str", None]
    assert id_kinds(pd.Series([2**64 - 1, 1], dtype=np.uint64)).tolist()[0].startswith("int out of int64 range")
    frame = pd.DataFrame({"user_id": pd.Series(["a", "b", 3], dtype=object), "item_id": [1, 2, 3]})
    _, expected = id_type_frame(frame, ["user_id", "item_id"])
    assert expected == [("user_id", "str"), ("item_id", "int64")]  # the odd one out fails, the majority passes


def test_mixed_id_types_fail_the_gate(tmp_path):
    """An id column mixing numbers and strings (from JSON or a Python-built frame) would crash the Parquet write."""
    frame = _clean_ratings().rename(columns={"userId": "user_id", "movieId": "item_id"}).astype({"user_id": object})
    frame.loc[0, "user_id"] = "u1"
    items = pd.DataFrame({"item_id": range(1, 21)})
    params = load_params(None, tmp_overrides(tmp_path / "out"))
    checks = run_suites(raw_suites(Tables(frame, items), params), max_examples=5)
    failed = [(c.table, c.kwargs["column"], c.examples) for c in checks if not c.success]
    assert failed == [("interactions (id types)", "user_id", ["str: u1"])]


def test_report_values_are_json_even_for_numpy_nan() -> None:
    """A NaN example (numpy float) became NaN in validation.json, which is not JSON."""
    import json

    import numpy as np

    from recforge.validation import _plain

    assert _plain(np.float64("nan")) is None
    assert _plain(np.float32(1.5)) == 1.5
    assert json.loads(json.dumps([_plain(np.float64("nan")), _plain(np.int64(3))], allow_nan=False)) == [None, 3]
