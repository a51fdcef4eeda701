"""The gate of the tests marked ``smollm2`` (tests/conftest.py): skip without the model, fail under CI=true."""

from __future__ import annotations

import pytest

from tests import conftest


class _Item:
    def __init__(self, marked: bool) -> None:
        self.marked = marked

    def get_closest_marker(self, name: str):
        return pytest.mark.smollm2 if self.marked and name == "smollm2" else None


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    monkeypatch.setenv("RECFORGE_MODELS_DIR", str(tmp_path))
    assert conftest.smollm2_missing() is not None


def test_a_missing_model_skips_outside_ci(no_model, monkeypatch):
    # catches a gate that fails every developer's run without `make models`, or that lets the test run anyway
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make models"):
        conftest.pytest_runtest_setup(_Item(marked=True))
    conftest.pytest_runtest_setup(_Item(marked=False))  # unmarked tests are not touched


def test_a_missing_model_fails_under_ci(no_model, monkeypatch):
    # catches the gate skipping under CI=true: a broken model install would pass CI silently
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.pytest_runtest_setup(_Item(marked=True))
    conftest.pytest_runtest_setup(_Item(marked=False))


def test_the_model_counts_as_installed_only_with_the_gguf_and_the_conversion(monkeypatch, tmp_path):
    # catches a check that passes on half an install (the GGUF without its safetensors conversion, or the
    # reverse), which the marked tests would then fail on, or that fetches the model to find out
    monkeypatch.setenv("RECFORGE_MODELS_DIR", str(tmp_path))
    from recforge.llm import converted_dir, gguf_path

    gguf_path().parent.mkdir(parents=True)
    gguf_path().write_bytes(b"GGUF")
    assert "safetensors" in conftest.smollm2_missing()
    converted_dir().mkdir(parents=True)
    (converted_dir() / "config.json").write_text("{}")
    (converted_dir() / "model.safetensors").write_bytes(b"")
    assert conftest.smollm2_missing() is None
    gguf_path().unlink()
    assert "gguf" in conftest.smollm2_missing()


def test_ci_is_read_from_the_environment(monkeypatch):
    # catches CI read from the wrong variable or value
    for value, expected in [("true", True), ("TRUE", True), ("false", False), ("", False)]:
        monkeypatch.setenv("CI", value)
        assert conftest.in_ci() is expected, value
    monkeypatch.delenv("CI")
    assert conftest.in_ci() is False
