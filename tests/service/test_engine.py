"""recforge.engine and recforge.packaging without HTTP: packaging and the fallback paths of a popularity-only package."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from recforge.engine import Engine
from recforge.errors import RecforgeError
from recforge.packaging import build_package, model_version, params_hash
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from recforge.schemas import BadRequestError, NotFoundError
from tests.conftest import TINY, TINY_RERANK, TINY_RERANK_MODELS, tmp_overrides
from tests.unit.test_mutation_engine import wrong_checksum_copy


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    params = load_params(None, tmp_overrides(root) + TINY + ["serve.api_token=do-not-leak", "serve.explainer=builtin"])
    run_pipeline(params)
    manifest = build_package(params, root / "package")
    return params, root / "package", manifest


def test_package_records_hashes_and_no_secret(package):
    params, directory, manifest = package
    # the version is d<sha256 over the split and items files>-p<sha256 over the trained-on params>, recomputed here
    digest = hashlib.sha256()
    for path in [Path(params.paths.split_dir) / f"{part}.parquet" for part in ("train", "val", "test")] + [
        Path(params.paths.canonical_dir) / "items.parquet"
    ]:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    assert manifest["version"] == f"d{digest.hexdigest()[:12]}-p{params_hash(params)[:12]}" == model_version(params)
    # any trained-on setting changes the tag: a model option, the split, the data
    for change in ("recommenders={popularity: {half_life_days: 7}}", "split.method=random", "seed=7"):
        other = load_params(None, tmp_overrides(directory.parent) + TINY + [change])
        assert params_hash(other) != params_hash(params), change
    assert "do-not-leak" not in (directory / "params.json").read_text()
    assert set(manifest["models"]) == {"popularity"}
    assert "models/popularity/meta.json" in manifest["checksums"]
    moved = load_params(None, tmp_overrides(directory.parent / "elsewhere") + TINY)
    assert params_hash(moved) == params_hash(params), "paths and serve settings do not change the tag"


def test_popularity_only_package_falls_back(package):
    _, directory, manifest = package
    engine = Engine.load(directory, device="cpu")
    assert engine.text_model is None and engine.text_encoder is None
    text = engine.recommend_text("anything at all", 5)
    assert text.fallback == "popular" and len(text.items) == 5
    user = manifest["example_user_id"]
    known = engine.recommend(user, 5)
    assert known.fallback is None and known.model == "popularity"
    popular = engine.recommend("nobody", 5)
    assert popular.fallback == "popular"
    # known users do not get their own history back, the popular fallback does not know any history
    seen = set(engine._history(engine.maps.lookup_user(user)).tolist())
    assert not {engine.maps.lookup_item(i.item_id) for i in known.items} & seen
    first = popular.items[0].item_id
    history = engine.recommend_history([first, "missing"], 5)
    assert history.unknown_item_ids == ["missing"] and first not in [i.item_id for i in history.items]
    similar = engine.similar_items(first, 3)
    assert first not in [i.item_id for i in similar.items]
    explanation = engine.explain(user, first)
    assert explanation.explanation.startswith(f'"{explanation.title}" is recommended')
    assert engine.metadata()["explainer"] == "builtin"


def test_engine_rejects_bad_requests(package):
    _, directory, _ = package
    engine = Engine.load(directory, device="cpu")
    for k in (0, 101):
        with pytest.raises(BadRequestError):
            engine.recommend("nobody", k)
    with pytest.raises(BadRequestError):
        engine.recommend_text("   ", 5)
    with pytest.raises(NotFoundError):
        engine.similar_items("no-such-item", 5)
    with pytest.raises(RecforgeError, match="not in the package"):
        Engine.load(directory, device="cpu", model="mf")


def test_a_tampered_manifest_entry_is_caught(package, tmp_path):
    _, directory, _ = package
    copy = wrong_checksum_copy(directory, tmp_path)
    with pytest.raises(RecforgeError, match="checksum"):
        Engine.load(copy, device="cpu")


def test_sequential_user_states_match_the_model(tmp_path):
    """The cached user states (the UserStates ability) score exactly like Sequential.recommend for every user."""
    import numpy as np

    models = "recommenders={gru: {plugin: sequential, cell: gru, dim: 16, max_len: 10, epochs: 2, min_epochs: 1, batch_size: 64}}"
    params = load_params(None, tmp_overrides(tmp_path) + TINY + [models])
    run_pipeline(params, stages=["ingest", "validate", "split", "encode", "train", "evaluate"])
    build_package(params, tmp_path / "package")
    engine = Engine.load(tmp_path / "package", device="cpu")
    assert engine.primary == "gru" and engine.user_states is not None
    model = engine.models["gru"]
    for user in range(len(model.sequences)):
        expected, _ = model.recommend(np.array([user]), k=10)
        got, _ = model.recommend_states(np.array([user]), engine.user_states[[user]], k=10)
        assert np.array_equal(expected, got)
    answer = engine.recommend(engine.maps.user_ids[0], 5)
    assert answer.model == "gru" and len(answer.items) == 5
    assert engine.metadata()["cached_user_states"] is True


def test_served_reranker_matches_the_offline_test_lists(tmp_path):
    """/recommend through the re-ranker gives, per user, the rerank stage's own test list.

    The offline test part is what is served: candidate models refitted on
    train + val, features over the train + val history. Serving rebuilds the
    features for one user at a time from the package, so any drift between the
    two paths (history, embeddings, candidate scores, tie order) shows here.
    """
    from pathlib import Path

    import numpy as np
    import pandas as pd

    models, rerank = TINY_RERANK_MODELS, [*TINY_RERANK, "serve.model=rerank"]
    params = load_params(None, tmp_overrides(tmp_path) + TINY + [models] + rerank)
    run_pipeline(params)
    build_package(params, tmp_path / "package")
    engine = Engine.load(tmp_path / "package", device="cpu")
    meta = engine.metadata()
    assert engine.primary == "rerank" and meta["rerank_served"] is True and meta["rerank_note"] is None
    assert set(engine.states) == {"gru"}  # the sequential candidate scores from cached states

    offline = pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "test.parquet")
    k = 10
    users = offline["user_id"].drop_duplicates().to_numpy()
    checked = 0
    for user_id in users[:: max(1, len(users) // 25)]:
        expected = offline[(offline["user_id"] == user_id) & (offline["rank"] <= k)].sort_values("rank")
        answer = engine.recommend(user_id, k)
        assert answer.model == "rerank"
        assert [i.item_id for i in answer.items] == expected["item_id"].tolist(), user_id
        np.testing.assert_allclose([i.score for i in answer.items], expected["score"], rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 20


def test_reranker_without_candidates_in_the_package_is_refused_with_the_reason(tmp_path):
    models = "recommenders={popularity: {}, itemknn: {neighbors: 20}}"
    params = load_params(
        None,
        tmp_overrides(tmp_path)
        + TINY
        + [models, "rerank.enabled=true", "rerank.folds=2", "rerank.num_boost_round=30", "encode.encoders=[tfidf]"],
    )
    run_pipeline(params)
    build_package(params, tmp_path / "package")
    import shutil

    shutil.rmtree(tmp_path / "package" / "models" / "itemknn")
    manifest = json.loads((tmp_path / "package" / "manifest.json").read_text())
    del manifest["models"]["itemknn"]
    manifest["checksums"] = {k: v for k, v in manifest["checksums"].items() if not k.startswith("models/itemknn/")}
    (tmp_path / "package" / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine.load(tmp_path / "package", device="cpu")
    assert engine.primary == "popularity" and engine.reranker is None  # never built unless asked for
    note = engine.metadata()[
        "rerank_note"
    ]  # serve.model: auto tried it (and names the missing model) or found it not best
    assert "itemknn" in note or "better validation" in note
    with pytest.raises(RecforgeError, match="itemknn"):
        Engine.load(tmp_path / "package", device="cpu", model="rerank")


def test_offline_and_online_evidence_agree(tmp_path):
    """recforge explain (the workspace) and the Engine (the package) give the same evidence."""
    from recforge.explain import workspace_evidence

    models = "recommenders={popularity: {}, itemknn: {neighbors: 20}}"
    params = load_params(
        None, tmp_overrides(tmp_path) + TINY + [models, "encode.encoders=[tfidf]", "rerank.enabled=false"]
    )
    run_pipeline(params, stages=["ingest", "validate", "split", "encode", "train", "evaluate"])
    build_package(params, tmp_path / "package")
    engine = Engine.load(tmp_path / "package", device="cpu")
    assert engine.item_table.vectors is not None, "evidence similarity from the tfidf embeddings"
    users, items = engine.maps.user_ids[:8], engine.maps.item_ids[::7]
    genre_word_pairs = 0
    for user_id in users:
        for item_id in items:
            offline = workspace_evidence(params, user_id, item_id)
            online = engine.explain(user_id, item_id).evidence
            assert offline == online, (user_id, item_id)
            genre_word_pairs += bool(online["shared_genres"])
            assert not {g.lower() for g in online["shared_genres"]} & set(online["shared_keywords"])
    assert genre_word_pairs, "some pairs share genres, so the genre-word rule was exercised"
