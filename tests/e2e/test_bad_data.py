"""Crafted bad data through the CLI: exit code 2 and one error line naming the file, no traceback (issue 11).

The crafted files are tests/unit/crafted_inputs.py's; the in-process tests cover all of them, these a few
through `recforge data import` and `recforge run` in subprocesses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tmp_overrides
from tests.unit.crafted_inputs import GATE_FAILURES, LOADER_ERRORS, write_cases

RECFORGE = str(Path(sys.executable).parent / "recforge")
EXPECTED = {**LOADER_ERRORS, **GATE_FAILURES}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("crafted"))


def _sets(root: Path) -> list[str]:
    flags = []
    for override in tmp_overrides(root):
        flags += ["-S", override]
    return flags


def _one_line_error(result: subprocess.CompletedProcess, path: Path, case: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert str(path) in errors[0] and re.search(EXPECTED[case], errors[0]), errors[0]


@pytest.mark.parametrize(
    "case", ["rating_abc", "amazon_latin1_bytes", "amazon_truncated_gzip", "tags_csv_without_movieId", "user_id_1e30"]
)
def test_data_import(tmp_path, cases, case):
    data_format, path = cases[case]
    args = ["data", "import", str(path), "--format", data_format, *_sets(tmp_path)]
    result = subprocess.run([RECFORGE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    _one_line_error(result, path, case)
    assert result.stderr.strip().count("\n") == 0  # nothing else on stderr either
    assert not (tmp_path / "data" / "canonical").exists()


@pytest.mark.parametrize("case", ["nan_rating", "amazon_list_line"])
def test_run(tmp_path, cases, case):
    data_format, path = cases[case]
    args = ["run", "-S", f"data.format={data_format}", "-S", f"data.path={path}", *_sets(tmp_path)]
    result = subprocess.run([RECFORGE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    _one_line_error(result, path, case)
    assert not (tmp_path / "metrics" / "metrics.json").exists()
