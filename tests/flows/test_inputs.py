"""A flow run's parameters cannot reach outside the project, change paths or pick a Dask scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.inputs import check_batch, check_run
from recforge.errors import RecforgeError


@pytest.mark.parametrize(
    ("params_file", "overrides", "message"),
    [
        ("/etc/passwd.yaml", [], "outside the project"),
        ("../other/params.yaml", [], "outside the project"),
        ("params.txt", [], "must be a .yaml file"),
        ("params.yaml", ["paths.models_dir=/tmp/x"], "not allowed"),
        ("params.yaml", ["orchestration.dask_address=tcp://evil:8786"], "not allowed"),
        ("params.yaml", ["serve.api_token=x"], "not allowed"),
        ("params.yaml", ["data.path=/etc/shadow"], "outside the project"),
        ("params.yaml", ["data.items_path=../../secret.csv"], "outside the project"),
        ("params.yaml", ["seed"], "section.key=value"),
        ("params.yaml", ["seed=" + "1" * 600], "section.key=value"),
        ("params.yaml", ["seed=1"] * 51, "at most 50"),
    ],
)
def test_refused(tmp_path: Path, params_file: str, overrides: list[str], message: str) -> None:
    with pytest.raises(RecforgeError, match=message):
        check_run(params_file, overrides, root=tmp_path)


def test_accepted(tmp_path: Path) -> None:
    overrides = ["rerank.enabled=true", "data.path=data/raw/ml", "data.path=null", " seed = 3"]
    assert check_run("configs/quality.yaml", overrides, root=tmp_path) == overrides


@pytest.mark.parametrize(
    ("k", "users", "output", "message"),
    [
        (0, 10, None, "k=0"),
        (10**6, 10, None, "k=1000000"),
        (10, 0, None, "batch_users=0"),
        (10, 10, "/tmp/out.parquet", "outside"),
        (10, 10, "../x.parquet", "outside"),
        (10, 10, "artifacts/recs/x.csv", ".parquet"),
    ],
)
def test_batch_bounds(tmp_path: Path, k: int, users: int, output: str | None, message: str) -> None:
    with pytest.raises(RecforgeError, match=message):
        check_batch(k, users, output, "artifacts/recs", root=tmp_path)


def test_batch_output_under_recs_dir(tmp_path: Path) -> None:
    check_batch(10, 100, "artifacts/recs/batch/x.parquet", "artifacts/recs", root=tmp_path)


def test_batch_output_elsewhere_in_the_project_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecforgeError, match="under paths.recs_dir"):
        check_batch(10, 100, "data/canonical/items.parquet", "artifacts/recs", root=tmp_path)
