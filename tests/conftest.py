"""Shared fixtures: tiny synthetic workspaces in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recforge.params import Params, load_params, paths_under

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def tmp_overrides(root: Path) -> list[str]:
    """Overrides that put every output path under ``root``."""
    return paths_under(root)


TINY = [
    "data.synthetic.num_users=120",
    "data.synthetic.num_items=80",
    "data.synthetic.num_interactions=2400",
    "data.synthetic.num_topics=4",
]
# a small two-stage configuration: three candidate models (one sequential) and a quick LambdaRank
TINY_RERANK_MODELS = (
    "recommenders={popularity: {}, itemknn: {neighbors: 20}, "
    "gru: {plugin: sequential, cell: gru, dim: 16, max_len: 10, epochs: 2, min_epochs: 1, batch_size: 64}}"
)
TINY_RERANK = [
    "rerank.enabled=true",
    "rerank.folds=2",
    "rerank.candidates_per_model=15",
    "rerank.num_boost_round=40",
    "rerank.early_stopping_rounds=10",
    "encode.encoders=[tfidf]",
]


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    """Default params on a tiny synthetic dataset, every output under tmp_path (no params.yaml)."""
    return load_params(None, tmp_overrides(tmp_path) + TINY)


# Tests that need the real SmolLM2 (installed by `make models`) carry @pytest.mark.smollm2. Where the model is
# missing they skip; under CI (CI=true) they fail instead, so a broken model install cannot pass silently.
def in_ci() -> bool:
    """Whether this run is CI's (the environment variable CI is "true", as CI services set it)."""
    return os.environ.get("CI", "").lower() == "true"


def smollm2_missing() -> str | None:
    """Why the real SmolLM2 cannot be loaded here without fetching anything (None: it can)."""
    try:
        from recforge.llm import converted_dir, gguf_path

        gguf, converted = gguf_path(), converted_dir()
    except Exception as exc:  # noqa: BLE001 - any reason the model cannot be located
        return f"SmolLM2 cannot be located ({exc})"
    missing = [str(gguf)] if not gguf.exists() else []
    if not (converted / "config.json").exists() or not any(converted.glob("*.safetensors")):
        missing.append(f"{converted}/{{config.json,*.safetensors}}")
    return f"SmolLM2 is not installed (make models): no {' or '.join(missing)}" if missing else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smollm2: needs the real SmolLM2; skips without it, fails under CI=true")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("smollm2") is None:
        return
    reason = smollm2_missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this test fails instead of skipping", pytrace=False)
    pytest.skip(reason)
