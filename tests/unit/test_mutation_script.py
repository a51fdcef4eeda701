"""scripts/mutation.py's CI mode (`make mutation-changed`): which modules a change touches, and the verdict."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SPEC = importlib.util.spec_from_file_location("mutation_script", PROJECT_ROOT / "scripts" / "mutation.py")
mutation = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mutation)

MODULES = {
    "recforge/a.py": {"tests": ["tests/unit/test_a.py"]},
    "recforge/b.py": {"tests": ["tests/unit/test_b.py", "tests/unit/test_shared.py::test_b"]},
    "recforge/c.py": {"tests": ["tests/unit/test_c.py"]},
}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    for name in ["recforge/a.py", "recforge/b.py", "recforge/c.py", "tests/unit/test_shared.py", "README.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "base")
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    return tmp_path


def test_a_changed_source_or_test_file_selects_its_module_and_nothing_else(repo):
    """Catches: modules picked by their source only (a change to a module's tests would go unchecked), or all."""
    assert mutation.changed_modules("HEAD", MODULES) == []
    (repo / "README.md").write_text("docs\n")
    assert mutation.changed_modules("HEAD", MODULES) == []
    (repo / "recforge/a.py").write_text("x = 2\n")
    (repo / "tests/unit/test_shared.py").write_text("y = 2\n")  # named with ::test_b in b's list
    assert mutation.changed_modules("HEAD", MODULES) == ["recforge/a.py", "recforge/b.py"]


def test_a_bad_base_is_one_clear_error(repo):
    """Catches: an option-like or unknown revision passed on to git (or a traceback instead of a message)."""
    with pytest.raises(SystemExit, match="needs a git revision"):
        mutation.changed_modules("--output=/tmp/x", MODULES)
    with pytest.raises(SystemExit, match="cannot compare with 'no-such-rev'"):
        mutation.changed_modules("no-such-rev", MODULES)


def test_the_score_leaves_out_equivalents_and_unchecked_mutants():
    """Catches: a module whose budget ran out judged on all its mutants (unchecked would count as survivors)."""
    assert mutation.checked_score({"total": 100, "equivalent": 5, "not_checked": 15, "killed": 68}) == 0.85
    assert mutation.checked_score({"total": 100, "equivalent": 0, "killed": 84}) == 0.84
    assert mutation.checked_score({"total": 3, "equivalent": 3, "killed": 0}) is None


def test_fail_under_must_be_a_share(capsys):
    with pytest.raises(SystemExit):
        mutation.main(["--fail-under", "85"])
    assert "--fail-under must be in (0, 1]" in capsys.readouterr().err
