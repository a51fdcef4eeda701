"""Fixtures for the orchestration tests: telemetry off, a tiny project in a temporary directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

# before prefect is imported anywhere: no analytics, results and settings in a throwaway home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="recforge-prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin"

TINY_PARAMS = {
    "data": {"synthetic": {"num_users": 120, "num_items": 80, "num_interactions": 2400, "num_topics": 4}},
    "recommenders": {"popularity": {}, "pop_b": {"plugin": "popularity"}},
    "evaluate": {"ks": [1, 5, 10], "list_length": 20},
}


def write_params(directory: Path, params: dict | None = None) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params or TINY_PARAMS, sort_keys=False))
    return path


def bin_path(name: str) -> str:
    """A console script of the venv running the tests (dvc, prefect, recforge)."""
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate if candidate.exists() else VENV_BIN / name)


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server (SQLite) shared by the session's flow tests; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a tiny params.yaml; the test runs inside it."""
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path
