"""Tuning on the validation split: grid expansion, the choice, and what the
train stage records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recforge.params import load_params
from recforge.stages import get_stage
from recforge.tuning import grid_points, validation_metrics
from recforge.workspace import Workspace
from tests.conftest import TINY, tmp_overrides


def test_grid_points_full_and_random() -> None:
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    points = grid_points(grid)
    assert len(points) == 6 and {"a": 3, "b": "y"} in points
    sampled = grid_points(grid, trials=4, seed=1)
    assert len(sampled) == 4 and all(p in points for p in sampled)
    assert grid_points(grid, trials=4, seed=1) == sampled  # reproducible
    with pytest.raises(ValueError):
        grid_points({})


def test_train_stage_tunes_on_validation_and_records_it(tmp_path: Path) -> None:
    overrides = (
        tmp_overrides(tmp_path)
        + TINY
        + [
            "recommenders={'itemknn': {'neighbors': 20, 'tune': {'neighbors': [1, 40], 'weighting': ['none', 'bm25']}}}",
        ]
    )
    params = load_params(None, overrides)
    for stage in ("ingest", "split", "train"):
        get_stage(stage)(params)
    meta = json.loads((Path(params.paths.models_dir) / "itemknn" / "val" / "meta.json").read_text())
    tuning = meta["tuning"]
    assert len(tuning["trials"]) == 4
    best = max(tuning["trials"], key=lambda t: t["ndcg@10"])
    assert tuning["best_score"] == pytest.approx(best["ndcg@10"], abs=1e-5)
    assert {k: meta["options"][k] for k in ("neighbors", "weighting")} == best["options"]
    assert "tune" not in meta["options"] and meta["configured_options"]["tune"]
    # the recorded score is the validation score of the saved val model
    workspace = Workspace(params)
    from recforge.stages.train import load_model

    model = load_model(params, "itemknn", "val", workspace.context())
    scores = validation_metrics(model, workspace.events("train"), workspace.events("val"))
    assert scores["ndcg@10"] == pytest.approx(tuning["best_score"], abs=1e-5)
