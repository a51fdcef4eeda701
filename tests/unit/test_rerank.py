"""The second stage end to end on synthetic data: outputs, no leakage, and it beats its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import registry
from recforge.candidates import feature_columns
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from recforge.rerank import (
    build_part,
    candidate_models,
    iter_part,
    load_reranker,
    ranked_lists,
    training_table,
)
from recforge.stages.rerank import run_rerank
from recforge.workspace import Workspace
from tests.conftest import tmp_overrides
from tests.ndcg import recomputed_ndcg

# Known truth: synthetic users pick items by topic (which the item text carries) and by
# popularity. Popularity alone and text similarity alone each see half of it, so a
# re-ranker over both candidate lists with popularity and similarity features must beat both.
SYNTHETIC = [
    "data.synthetic.num_users=600",
    "data.synthetic.num_items=150",
    "data.synthetic.num_interactions=9000",
    "data.synthetic.num_topics=6",
    "data.synthetic.drift=0.0",
]
INPUTS = ("popularity", "content")
MODELS = "recommenders={popularity: {}, content: {encoder: tfidf}}"
RERANK = [
    "rerank.enabled=true",
    "rerank.ablations=true",
    "rerank.folds=3",
    "rerank.candidates_per_model=30",
    "rerank.num_boost_round=150",
    "rerank.early_stopping_rounds=15",
    "encode.encoders=[tfidf]",
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    params = load_params(None, tmp_overrides(root) + SYNTHETIC + [MODELS] + RERANK)
    run_pipeline(params)
    metrics = json.loads(Path(params.paths.metrics_file).read_text())
    return params, metrics


def test_outputs_in_the_common_formats(pipeline):
    params, metrics = pipeline
    for part in ("val", "test"):
        lists = pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / f"{part}.parquet")
        assert list(lists.columns) == ["user_id", "item_id", "rank", "score"]
        assert lists.groupby("user_id")["rank"].max().max() <= params.evaluate.list_length
        assert not lists.duplicated(["user_id", "item_id"]).any()
        # scores descend with rank inside each user's list
        assert (lists.groupby("user_id")["score"].diff().dropna() <= 1e-6).all()
    # the reported NDCG@10 is the one recomputed here from the written lists and the test split
    test = pd.read_parquet(Path(params.paths.split_dir) / "test.parquet")
    rerank_lists = pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "test.parquet")
    assert metrics["rerank"]["ndcg@10"] == pytest.approx(recomputed_ndcg(rerank_lists, test, 10), abs=1e-9)
    reports = Path(params.paths.reports_dir)
    importance = pd.read_csv(reports / "feature_importance.csv")
    assert {"feature", "gain"} <= set(importance.columns) and importance["gain"].sum() > 0
    assert (Path(params.paths.plots_dir) / "feature_importance.png").stat().st_size > 1000
    recall = pd.read_csv(reports / "candidate_recall.csv")
    # candidate recall recomputed from each model's test lists (its top candidates_per_model items)
    per_model = params.rerank.candidates_per_model
    proposed = {name: pd.read_parquet(Path(params.paths.lists_dir) / name / "test.parquet") for name in INPUTS}
    proposed = {name: frame[frame["rank"] <= per_model] for name, frame in proposed.items()}
    proposed["union"] = pd.concat(proposed.values()).drop_duplicates(["user_id", "item_id"])
    reported = recall[recall["part"] == "test"].set_index("candidates")["recall"]
    expected = {
        name: test.merge(frame[["user_id", "item_id"]])["user_id"].nunique() / test["user_id"].nunique()
        for name, frame in proposed.items()
    }
    assert reported.to_dict() == pytest.approx(expected, abs=1e-12)
    # the two inputs see different halves of the truth: their union finds clearly more than either
    assert expected["union"] > max(expected[name] for name in INPUTS) + 0.05, expected
    ablation = pd.read_csv(reports / "rerank_ablation.csv")
    assert {
        "without popularity",
        "without content",
        "without text similarity features",
        "without profile features",
        "without timeline features",
    } <= set(ablation["variant"])
    reranker, meta = load_reranker(params)
    assert meta["training"]["part"] == "val" and meta["features"] == reranker.features


def test_reranker_beats_its_best_input(pipeline):
    _, metrics = pipeline
    best_input = max(metrics[m]["ndcg@10"] for m in INPUTS)
    assert metrics["rerank"]["ndcg@10"] > 1.05 * best_input


def test_no_leakage_training_rows_use_validation_targets_only(pipeline):
    params, _ = pipeline
    workspace = Workspace(params)
    train, val, test = workspace.frame("train"), workspace.frame("val"), workspace.frame("test")
    frame, labels, groups = training_table(workspace)
    positives = frame.loc[labels == 1, ["user_id", "item_id"]]
    # every positive label is a validation event, and no test event is ever a positive
    assert len(positives) > 0
    assert len(positives.merge(val[["user_id", "item_id"]])) == len(positives)
    assert len(positives.merge(test[["user_id", "item_id"]])) == 0
    assert groups.sum() == len(frame)
    # the validation candidates come from models that never saw validation events:
    # train and val are disjoint, and features were computed from train events only
    keys = ["user_id", "item_id", "timestamp"]
    assert len(train[keys].merge(val[keys])) == 0 and len(train[keys].merge(test[keys])) == 0
    assert frame["user_history"].sum() == pytest.approx(train.groupby("user_id").size().reindex(frame["user_id"]).sum())
    # a validation target is never already in the history the val lists were made from
    val_lists = pd.read_parquet(Path(params.paths.lists_dir) / "content" / "val.parquet")
    assert len(val_lists.merge(train[["user_id", "item_id"]])) == 0


def test_no_leakage_changing_test_targets_changes_nothing_learned(pipeline, tmp_path):
    params, _ = pipeline
    model_dir = Path(params.paths.models_dir) / "rerank"
    before = json.loads((model_dir / "meta.json").read_text())["checksums"]
    val_before = pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "val.parquet")
    test_before = pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "test.parquet")
    split = Path(params.paths.split_dir) / "test.parquet"
    original = pd.read_parquet(split)
    scrambled = original.copy()
    rng = np.random.default_rng(1)
    scrambled["item_id"] = rng.permutation(scrambled["item_id"].to_numpy())
    scrambled.to_parquet(split)
    try:
        run_rerank(params.model_copy(update={"rerank": params.rerank.model_copy(update={"ablations": False})}))
        after = json.loads((model_dir / "meta.json").read_text())["checksums"]
        assert after == before  # the same LightGBM models, byte for byte
        pd.testing.assert_frame_equal(
            pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "val.parquet"), val_before
        )
        pd.testing.assert_frame_equal(
            pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "test.parquet"), test_before
        )
    finally:
        original.to_parquet(split)


def test_blocks_of_users_give_the_same_table_and_lists(pipeline):
    """Features and test lists are built per block of users; the block size must change nothing."""
    params, _ = pipeline
    workspace = Workspace(params)
    models = candidate_models(params)
    whole = build_part(workspace, "test", models)
    blocks = list(iter_part(workspace, "test", models, block_users=37))
    assert len(blocks) > 10
    assert all(b["user"].is_monotonic_increasing for b in blocks)
    assert all(blocks[i]["user"].max() < blocks[i + 1]["user"].min() for i in range(len(blocks) - 1))
    pd.testing.assert_frame_equal(pd.concat(blocks, ignore_index=True), whole)
    assert {whole[c].dtype for c in feature_columns(whole)} == {np.dtype(np.float32)}

    lists = Path(params.paths.lists_dir) / "rerank" / "test.parquet"
    before = pd.read_parquet(lists)
    small = params.model_copy(
        update={"rerank": params.rerank.model_copy(update={"ablations": False, "block_users": 37})}
    )
    run_rerank(small)
    pd.testing.assert_frame_equal(pd.read_parquet(lists), before)


def test_reranker_plugin_contract_and_roundtrip(pipeline, tmp_path):
    params, _ = pipeline
    workspace = Workspace(params)
    frame, labels, groups = training_table(workspace)
    reranker = registry.rerankers.create("lambdarank", folds=2, num_boost_round=30, early_stopping_rounds=10)
    reranker.fit(frame, labels, groups)
    scores = reranker.rerank(frame)
    assert scores.shape == (len(frame),) and np.isfinite(scores).all()
    assert reranker.oof_scores is not None and np.isfinite(reranker.oof_scores).all()
    reranker.save(tmp_path)
    loaded = type(reranker).load(tmp_path)
    np.testing.assert_allclose(loaded.rerank(frame), scores, rtol=1e-6)
    # feature columns must all be present
    with pytest.raises(ValueError):
        loaded.rerank(frame.drop(columns=[feature_columns(frame)[0]]))


def test_ranked_lists_orders_by_score_and_truncates():
    frame = pd.DataFrame(
        {"user": [0, 0, 0, 1], "item": [5, 6, 7, 5], "user_id": ["a", "a", "a", "b"], "item_id": [50, 60, 70, 50]}
    )
    lists = ranked_lists(frame, np.array([0.1, 0.9, 0.5, 0.0]), k=2)
    assert lists["item_id"].tolist() == [60, 70, 50] and lists["rank"].tolist() == [1, 2, 1]


def test_profile_features_read_the_written_profiles(pipeline, tmp_path):
    """The user-profiles artifact is an input of the re-ranker: its vectors are the sim_*_profile features."""
    import shutil

    import numpy as np

    from recforge.features import FeatureContext
    from recforge.profiles import settings_from_params
    from recforge.rerank import part_data

    params, _ = pipeline
    workspace = Workspace(params)
    for part, history in (("val", "train"), ("test", "train+val")):
        data = part_data(workspace, part, list(INPUTS))
        written = data.profiles["tfidf"]
        from recforge.profiles import profile_vectors

        computed = profile_vectors(
            workspace.events(history), workspace.embeddings("tfidf"), settings_from_params(params)
        )
        np.testing.assert_allclose(written, computed, atol=1e-6)  # the same computation, read from the artifact
        assert FeatureContext(data).embeddings["tfidf"][1] is not None
    # change the artifact: the feature follows it
    copy = tmp_path / "profiles"
    shutil.copytree(params.paths.profiles_dir, copy)
    for part in ("val", "full"):
        path = copy / part / "tfidf.npz"
        with np.load(path) as stored:
            arrays = dict(stored)
        arrays["vectors"] = np.zeros_like(arrays["vectors"])
        np.savez(path, **arrays)
    moved = params.model_copy(update={"paths": params.paths.model_copy(update={"profiles_dir": str(copy)})})
    assert not Workspace(moved).written_profiles("val", ["tfidf"])["tfidf"].any()
    frame = build_part(Workspace(moved), "val", list(INPUTS))
    assert (frame["sim_tfidf_profile"] == 0).all()
    assert not (build_part(workspace, "val", list(INPUTS))["sim_tfidf_profile"] == 0).all()


def test_content_model_reads_the_written_profiles(pipeline, tmp_path):
    """The content model's user profiles are the encode stage's artifact (val part for the train fit, full part
    for the refit), not a second computation: a changed artifact changes the model, a model whose settings differ
    from the artifact's computes its own."""
    import shutil

    from recforge.stages.train import load_model, train_model

    params, _ = pipeline
    workspace = Workspace(params)
    for part in ("val", "full"):
        model = load_model(params, "content", part, workspace.context())
        np.testing.assert_allclose(model.user_vectors, workspace.written_profiles(part, ["tfidf"])["tfidf"], atol=1e-6)
    # permute the users' profile rows in a copy of the artifact: the refitted model follows the copy
    copy = tmp_path / "profiles"
    shutil.copytree(params.paths.profiles_dir, copy)
    rng = np.random.default_rng(0)
    permuted = {}
    for part in ("val", "full"):
        path = copy / part / "tfidf.npz"
        with np.load(path) as stored:
            arrays = dict(stored)
        arrays["vectors"] = permuted[part] = arrays["vectors"][rng.permutation(len(arrays["vectors"]))]
        np.savez(path, **arrays)
    paths = {"profiles_dir": str(copy), "models_dir": str(tmp_path / "models"), "lists_dir": str(tmp_path / "lists")}
    moved = params.model_copy(update={"paths": params.paths.model_copy(update=paths)})
    train_model(Workspace(moved), "content")
    for part in ("val", "full"):
        model = load_model(moved, "content", part, Workspace(moved).context())
        np.testing.assert_allclose(model.user_vectors, permuted[part], atol=1e-6)
    # other settings than the artifact's: the model computes its own profiles (and ignores the artifact)
    from recforge import registry

    context = Workspace(moved).context()
    events = workspace.events("train")
    own = registry.recommenders.create("content", encoder="tfidf", half_life_events=3.0)
    own.fit(events, context=context)
    assert own.profile_source == "computed"
    same = registry.recommenders.create("content", encoder="tfidf")
    same.fit(events, context=context)
    assert same.profile_source == "artifact"
    np.testing.assert_allclose(same.user_vectors, permuted["val"], atol=1e-6)
    # the part is the one built from the events being fitted: train + val gets the full part
    both = registry.recommenders.create("content", encoder="tfidf").fit(workspace.events("train+val"), context=context)
    np.testing.assert_allclose(both.user_vectors, permuted["full"], atol=1e-6)
    # other events (one user's last event dropped) or another weighting: stale, not used
    train = workspace.events("train")
    keep = np.ones(len(train), bool)
    keep[train.bounds[1] - 1] = False
    fewer = type(train)(
        user_ids=train.user_ids[keep],
        item_ids=train.item_ids[keep],
        timestamps=train.timestamps[keep],
        ratings=None if train.ratings is None else train.ratings[keep],
        n_users=train.n_users,
        n_items=train.n_items,
    )
    assert Workspace(moved).fitted_profiles("tfidf", fewer) is None
    stale = moved.model_copy(update={"encode": moved.encode.model_copy(update={"profile_rating_weight": 0.0})})
    assert Workspace(stale).fitted_profiles("tfidf", train) is None
    assert Workspace(moved).fitted_profiles("tfidf", train) is not None
