"""The re-ranker's rows within a memory bound (recforge.rerank_rows): sampling rule, spill, same lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.candidates import feature_columns, positive_groups
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from recforge.rerank import (
    candidate_models,
    list_batches,
    list_paths,
    make_reranker,
    positive_users,
    ranked_lists,
    training_table,
)
from recforge.rerank_rows import TRAIN_USERS_AUTO, positive_val_users, sample_training_users
from recforge.stages.rerank import run_rerank
from recforge.workspace import Workspace
from tests.conftest import tmp_overrides

SYNTHETIC = [
    "data.synthetic.num_users=400",
    "data.synthetic.num_items=120",
    "data.synthetic.num_interactions=6000",
    "data.synthetic.num_topics=6",
    "recommenders={popularity: {}, content: {encoder: tfidf}, itemknn: {}}",
    "rerank.enabled=true",
    "rerank.folds=3",
    "rerank.candidates_per_model=20",
    "rerank.num_boost_round=60",
    "rerank.early_stopping_rounds=10",
    "rerank.block_users=97",  # several blocks, not aligned with anything
    "encode.encoders=[tfidf]",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    overrides = tmp_overrides(root) + SYNTHETIC
    params = load_params(None, overrides)
    run_pipeline(params)
    return params, overrides


def _lists(params, part: str) -> pd.DataFrame:
    return pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / f"{part}.parquet")


def test_positive_users_are_the_ones_with_a_labelled_candidate(workspace) -> None:
    """Read from the list files alone, a few rows at a time, they equal the users with a positive row in the
    built table (catches a rank cut-off off by one, the union computed per model, or a piece of a file lost)."""
    params, _ = workspace
    ws = Workspace(params)
    models = candidate_models(params)
    frame, labels, groups = training_table(ws, models)
    want = np.sort(frame["user"].to_numpy()[np.cumsum(groups) - 1][positive_groups(labels, groups)])
    per_model = params.rerank.candidates_per_model
    pieces = [rows for path in list_paths(params, models, "val").values() for rows in list_batches(path, per_model, 7)]
    got = positive_val_users(pieces, ws.frame("val"), ws.maps, per_model)
    assert len(got) > 10
    np.testing.assert_array_equal(got, want)


def test_below_the_cap_the_lists_are_the_whole_table_ones(workspace) -> None:
    """The streamed, spilled path gives exactly the lists of fitting on the whole frame (as before the bound):
    catches rows misaligned with their scores, a user's rows split over training and disk, or the spilled
    rows scored by something else than the ensemble."""
    params, _ = workspace
    ws = Workspace(params)
    models = candidate_models(params)
    frame, labels, groups = training_table(ws, models)
    features = feature_columns(frame)
    reranker = make_reranker(params, features, positive_users(labels, groups))
    reranker.fit(frame, labels, groups)
    want = ranked_lists(frame, reranker.oof_scores, params.evaluate.list_length)
    got = _lists(params, "val")
    pd.testing.assert_frame_equal(
        got.sort_values(["user_id", "rank"], ignore_index=True),
        want.sort_values(["user_id", "rank"], ignore_index=True),
        check_exact=False,
        rtol=1e-6,
    )


def test_a_cap_trains_on_that_many_users_and_still_lists_every_user(workspace, tmp_path) -> None:
    """With max_train_users below the positive users, the model trains on exactly that many (drawn with the
    seed), and every validation user still gets a list (catches the sample also cutting the lists)."""
    base, overrides = workspace
    params = load_params(None, [*overrides, "rerank.max_train_users=40"])
    before = _lists(base, "val")
    result = run_rerank(params)
    assert result["training"]["users"] == 40
    assert result["training"]["positive_users"] > 40
    assert result["training"]["val_rows_scored_from_disk"] > 0
    after = _lists(params, "val")
    assert set(after["user_id"]) == set(before["user_id"])
    run_rerank(base)  # leave the module's workspace as the fixture made it


def test_sampling_rule() -> None:
    positive = np.arange(0, 3000, 3)
    np.testing.assert_array_equal(sample_training_users(positive, None, 0), positive)
    np.testing.assert_array_equal(sample_training_users(positive, 5000, 0), positive)
    drawn = sample_training_users(positive, 100, 7)
    assert len(drawn) == 100 and len(np.unique(drawn)) == 100 and np.isin(drawn, positive).all()
    assert (np.diff(drawn) > 0).all()  # sorted: the blocks' row order is kept
    np.testing.assert_array_equal(drawn, sample_training_users(positive, 100, 7))  # seeded
    assert not np.array_equal(drawn, sample_training_users(positive, 100, 8))
    many = np.arange(TRAIN_USERS_AUTO + 5)
    assert len(sample_training_users(many, "auto", 0)) == TRAIN_USERS_AUTO
