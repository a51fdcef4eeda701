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
