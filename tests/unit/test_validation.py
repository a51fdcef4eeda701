"""The Great Expectations gate: corrupted data stops the run, nothing downstream is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.errors import ValidationFailed
from recforge.params import load_params
from recforge.stages.ingest import run_ingest
from recforge.stages.validate import run_validate
from tests.conftest import tmp_overrides


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
