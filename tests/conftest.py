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


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    """Default params on a tiny synthetic dataset, every output under tmp_path (no params.yaml)."""
    return load_params(None, tmp_overrides(tmp_path) + TINY)
