"""recforge.online_rerank: the packaged re-ranker served one user at a time (fast; each test names the bug it
catches). The re-ranker is the tiny two-stage package of tests/unit/rerank_package.py (built once, cached on
disk); a package that cannot be served is a copy of it with one file changed."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from recforge.candidates import candidate_frame
from recforge.interactions import IdMaps
from recforge.online_rerank import RERANK, OnlineReranker
from recforge.packaging import Package
from tests.unit.rerank_package import one_openmp_thread, open_with_models, rerank_package

K = 10  # the package's list length (evaluate.list_length)
SESSION = "<session>"  # the user id of an anonymous session in the reference frames


@pytest.fixture(scope="module")
def loaded():
    """(package, its models, the re-ranker loaded from it), LightGBM on one OpenMP thread."""
    with one_openmp_thread():
        package, models = open_with_models(rerank_package())
        reranker, note = OnlineReranker.load(package, models)
        assert note is None
        yield package, models, reranker


def candidates(models, reranker, user: int, k: int | None = None) -> dict:
    """Each candidate model's top-k (default: per_model) for a known dense user, as the engine asks them."""
    k = reranker.per_model if k is None else k
    return {name: models[name].recommend(np.array([user]), k=k, exclude_seen=True) for name in reranker.models}


def copy_of(package: Package, tmp_path) -> Package:
    """A writable copy of the package (opened without checking the files a test changes)."""
    folder = tmp_path / "package"
    shutil.copytree(package.directory, folder)
    return Package(directory=folder, manifest=dict(package.manifest), params=package.params, verify=False)


def rewrite_npz(path, change) -> None:
    """Rewrite the arrays of the npz file ``path`` through ``change(arrays)`` (a dict it edits in place)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    np.savez(path, **arrays)


class Recording:
    """The real re-ranker model, keeping every feature matrix it scores as a frame of its feature columns."""

    def __init__(self, model) -> None:
        self.model, self.frames = model, []

    def rerank(self, matrix: np.ndarray) -> np.ndarray:
        self.frames.append(pd.DataFrame(np.array(matrix), columns=self.model.features))
        return self.model.rerank(matrix)


class Constant:
    """A re-ranker model that scores every candidate the same (only the tie rule orders them), in float32."""

    def rerank(self, matrix: np.ndarray) -> np.ndarray:
        return np.zeros(len(matrix), dtype=np.float32)


# ---- load ---------------------------------------------------------------------------------------------------


def test_load_reads_the_packaged_reranker_and_its_lists(loaded):
    # catches the candidate models, candidates per model, id maps or precomputed lists not taken from the package
    # (or taken partly: the lists are (indptr, items, scores) and the list length apart)
    package, _, reranker = loaded
    meta = json.loads((package.directory / RERANK / "meta.json").read_text())
    assert reranker.models == meta["models"] == ["popularity", "itemknn"]
    assert reranker.per_model == meta["candidates_per_model"] == 10 and isinstance(reranker.per_model, int)
    assert reranker.maps is package.maps
    stored = package.rerank_lists()
    assert len(reranker.lists) == 3 and reranker.length == stored[3] == K
    for got, expected in zip(reranker.lists, stored[:3], strict=True):
        np.testing.assert_array_equal(got, expected)


def test_every_known_user_ranked_online_gets_the_precomputed_list(loaded):
    # the online second stage (features over the packaged history, items, embeddings, profiles and text fields,
    # then the fold models' mean score) must reproduce the rerank stage's list of every user: catches any input
    # of the feature context dropped or swapped, the candidates not cut to per_model, ranks off by one, the
    # order reversed and the list not cut to k
    _, models, reranker = loaded
    short = 0
    for user in range(len(reranker.maps.user_ids)):
        stored_items, stored_scores = reranker.precomputed(user, K)
        items, scores = reranker.rank(user, candidates(models, reranker, user), K)
        assert items.tolist() == stored_items.tolist(), user
        np.testing.assert_allclose(scores, stored_scores, rtol=1e-5, atol=1e-6)
        assert items.dtype == np.int64 and scores.dtype == np.float64
        short += len(items) < K
    assert short > 0  # some users' candidate union is shorter than the list (those lists answer any k)


def test_invalid_and_surplus_candidates_are_dropped_before_ranking(loaded):
    # catches -1 items or non-finite scores reaching the features, a candidate list not cut to per_model (the
    # models answer 20 here; the stage used 10), an item 0 dropped with the invalid ones, and a 2-d model answer
    # not flattened
    _, models, reranker = loaded
    for user in (0, 5, 17):
        expected = reranker.rank(user, candidates(models, reranker, user), K)
        noisy = {}
        for name, (items, scores) in candidates(models, reranker, user, k=20).items():
            items = np.concatenate([[-1, 3], np.ravel(items)])[None, :]
            scores = np.concatenate([[5.0, np.nan], np.ravel(scores)])[None, :]
            noisy[name] = (items, scores)
        got = reranker.rank(user, noisy, K)
        assert got[0].tolist() == expected[0].tolist()
        np.testing.assert_allclose(got[1], expected[1])
    # item 0 is a valid candidate
    recording = dataclasses.replace(reranker, model=Recording(reranker.model))
    only_popular = {"popularity": (np.array([0, 2]), np.array([0.5, 0.25])), "itemknn": (np.array([-1]), np.ones(1))}
    recording.rank(0, only_popular, K)
    assert recording.model.frames[0]["popularity_rank"].tolist() == [1.0, 2.0]
    assert reranker.rows(0, only_popular)["item"].tolist() == [0, 2]


def reference_frame(reranker: OnlineReranker, lists: dict, maps: IdMaps, user_id, context) -> pd.DataFrame:
    """The offline path's rows for one user's candidate lists (dense items, scores): candidate_frame (original
    ids), then FeatureContext.add."""
    frames = {}
    for name, (found, values) in lists.items():
        found, values = np.ravel(found), np.ravel(values)
        keep = (found >= 0) & np.isfinite(values)
        frames[name] = pd.DataFrame(
            {
                "user_id": user_id,
                "item_id": maps.item_ids[found[keep]],
                "rank": np.arange(1, keep.sum() + 1),
                "score": values[keep],
            }
        )
    return context.add(candidate_frame(frames, maps, reranker.per_model))


def test_a_known_user_s_scored_rows_are_the_offline_frame_s(loaded):
    # catches the array path departing from the offline frame path (features.FeatureContext.add over
    # candidates.candidate_frame): rows built for another dense user, a feature column out of the model's order
    # or computed from the wrong ranks, and columns taken by position instead of by name
    package, models, reranker = loaded
    recording = dataclasses.replace(reranker, model=Recording(reranker.model))
    lists = candidates(models, reranker, 7)
    recording.rank(7, lists, K)
    frame = reference_frame(reranker, lists, package.maps, package.maps.user_ids[7], reranker.context)
    (scored,) = recording.model.frames
    np.testing.assert_array_equal(scored.to_numpy(), frame[reranker.features].to_numpy(np.float32))
    assert set(reranker.rows(7, lists)["user"]) == {7}


def test_rows_lacking_a_feature_column_are_refused(loaded):
    # catches a model's columns missing from the rows (a candidate list not given) scored as whatever column
    # comes next: the matrix is built by name
    _, models, reranker = loaded
    lists = candidates(models, reranker, 3)
    del lists[reranker.models[-1]]
    with pytest.raises(ValueError, match="lack feature columns"):
        reranker.rank(3, lists, K)


def test_no_valid_candidate_ranks_nothing(loaded):
    # catches an empty candidate set sent to the features (an error) instead of an empty answer
    _, _, reranker = loaded
    items, scores = reranker.rank(0, {"popularity": (np.array([-1, -1]), np.array([1.0, np.inf]))}, K)
    assert items.dtype == np.int64 and items.tolist() == [] and scores.tolist() == []


def test_ties_go_to_the_lower_item_index_and_k_cuts(loaded):
    # catches ties ordered by candidate position or by higher index (offline, ranked_lists breaks them by the
    # lower item index), the list not cut to k, and a model's float32 scores not answered as float64
    _, _, reranker = loaded
    flat = dataclasses.replace(reranker, model=Constant())
    lists = {"popularity": (np.array([9, 4, 7]), np.array([0.3, 0.2, 0.1])), "itemknn": (np.array([5, 1]), np.ones(2))}
    items, scores = flat.rank(3, lists, 4)
    assert items.tolist() == [1, 4, 5, 7] and scores.tolist() == [0.0] * 4 and scores.dtype == np.float64
    assert flat.rank(3, lists, 10)[0].tolist() == [1, 4, 5, 7, 9]


def test_timings_add_the_feature_and_scoring_seconds(loaded):
    # catches the seconds not added to what is there, swapped, negative or counted from the wrong mark (the two
    # add up to at most the call's own time), and a missing timings dict not allowed
    _, models, reranker = loaded
    lists = candidates(models, reranker, 2)
    timings = {}
    started = time.perf_counter()
    reranker.rank(2, lists, K, timings=timings)
    wall = time.perf_counter() - started
    assert set(timings) == {"features", "scoring"}
    assert timings["features"] > 0 and timings["scoring"] > 0 and timings["features"] + timings["scoring"] <= wall
    again = {"features": 100.0, "scoring": 200.0}
    reranker.rank(2, lists, K, timings=again)
    assert again["features"] > 100.0 and again["scoring"] > 200.0
    reranker.rank(2, lists, K)  # no timings asked


# ---- sessions ---------------------------------------------------------------------------------------------


def test_a_session_is_ranked_with_the_features_of_its_own_history(loaded):
    # rank_history by its definition: the models' fold-in lists (candidate_frame), the features of a user whose
    # history is exactly the session (FeatureContext.for_history), the model's scores, ties by lower index.
    # Catches the package user 0's features used instead of the session's, the session's frame carrying a package
    # user's id, and the list not cut to k
    package, models, reranker = loaded
    history = np.array([3, 8, 5, 12])
    lists = {n: models[n].recommend_history(history, k=reranker.per_model, exclude_seen=True) for n in reranker.models}
    recording = dataclasses.replace(reranker, model=Recording(reranker.model))
    items, scores = recording.rank_history(history, lists, 6)
    session = IdMaps(user_ids=pd.Index([SESSION]), item_ids=package.maps.item_ids)
    frame = reference_frame(reranker, lists, session, SESSION, reranker.context.for_history(history))
    expected = np.asarray(reranker.model.rerank(frame), dtype=np.float64)
    order = np.lexsort((frame["item"].to_numpy(), -expected))[:6]
    assert items.tolist() == frame["item"].to_numpy()[order].tolist() and len(items) == 6
    np.testing.assert_allclose(scores, expected[order])
    (seen,) = recording.model.frames
    np.testing.assert_array_equal(seen.to_numpy(), frame[reranker.features].to_numpy(np.float32))
    # the session's features differ from the package's user 0 (else this test could not tell them apart)
    assert items.tolist() != reranker.rank(0, lists, 6)[0].tolist() or not np.allclose(
        scores, reranker.rank(0, lists, 6)[1]
    )


def test_session_timings_count_the_session_features(loaded):
    # catches the seconds spent building the session's feature context not added (or added negative)
    _, models, reranker = loaded
    history = np.array([1, 2, 3])
    lists = {n: models[n].recommend_history(history, k=reranker.per_model, exclude_seen=True) for n in reranker.models}
    timings = {"features": 100.0}
    started = time.perf_counter()
    reranker.rank_history(history, lists, K, timings=timings)
    wall = time.perf_counter() - started
    assert set(timings) == {"features", "scoring"}
    assert timings["features"] > 100.0 and timings["features"] - 100.0 + timings["scoring"] <= wall
    fresh = {}
    started = time.perf_counter()
    reranker.rank_history(history, lists, K, timings=fresh)
    assert fresh["features"] > 0 and fresh["features"] + fresh["scoring"] <= time.perf_counter() - started
    reranker.rank_history(history, lists, K)  # no timings asked


# ---- precomputed --------------------------------------------------------------------------------------------


def stored(length: int = 3) -> OnlineReranker:
    """Hand-made lists: user 0 a full list (3), user 1 a short one (its whole candidate union), user 2 none."""
    indptr = np.array([0, 3, 5, 5])
    items = np.array([7, 2, 9, 4, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    return OnlineReranker(
        model=None,
        context=None,
        models=[],
        per_model=1,
        maps=None,
        features=[],
        lists=(indptr, items, scores),
        length=length,
    )


def test_precomputed_answers_up_to_the_list_length():
    # catches the wrong user's slice, the list not cut to k, and k equal to the length sent online
    reranker = stored()
    items, scores = reranker.precomputed(0, 2)
    assert items.tolist() == [7, 2] and scores.tolist() == [0.9, 0.8]
    assert reranker.precomputed(0, 3)[0].tolist() == [7, 2, 9]
    assert reranker.precomputed(1, 1)[0].tolist() == [4]


def test_precomputed_beyond_the_length_only_for_a_short_list():
    # catches k above the list length answered from a full list (it would be cut short: the online path must
    # answer) and a short list (the user's whole candidate union) refused for any k
    reranker = stored()
    assert reranker.precomputed(0, 4) is None
    items, scores = reranker.precomputed(1, 50)
    assert items.tolist() == [4, 1] and scores.tolist() == [0.6, 0.5]
    assert reranker.precomputed(2, 50)[0].tolist() == []
    assert stored(length=2).precomputed(1, 3) is None  # a list as long as the length is full


def test_no_stored_lists_answer_nothing():
    # catches a re-ranker without lists (an older package) indexing None instead of going online
    assert dataclasses.replace(stored(), lists=None, length=0).precomputed(0, 1) is None


# ---- what cannot be served ----------------------------------------------------------------------------------


def test_no_reranker_in_the_package(tmp_path, loaded):
    # catches a package without a re-ranker (manifest flag off, or its folder missing) loaded anyway
    package, models, _ = loaded
    assert OnlineReranker.load(Package(tmp_path, {"rerank": False}, None), models) == (
        None,
        "no re-ranker in the package",
    )
    assert OnlineReranker.load(Package(tmp_path, {"rerank": True}, None), models) == (
        None,
        "no re-ranker in the package",
    )
    flag_off = Package(package.directory, {**package.manifest, "rerank": False}, package.params)
    assert OnlineReranker.load(flag_off, models) == (None, "no re-ranker in the package")


def test_a_fallback_reranker_is_not_served(tmp_path, loaded):
    # catches a stage that trained no re-ranker (its lists came from one model) served as a re-ranker
    _, models, _ = loaded
    (tmp_path / RERANK).mkdir()
    (tmp_path / RERANK / "meta.json").write_text(json.dumps({"fallback": "popularity", "checksums": {}}))
    assert OnlineReranker.load(Package(tmp_path, {"rerank": True}, None), models) == (
        None,
        "no re-ranker was trained (the lists used popularity)",
    )


def test_missing_candidate_models_are_named(loaded):
    # catches a re-ranker loaded without one of its candidate models (every request would fail)
    package, models, _ = loaded
    assert OnlineReranker.load(package, {"popularity": models["popularity"]}) == (
        None,
        "candidate models ['itemknn'] are not in the package",
    )


def test_offline_only_features_are_named(tmp_path, loaded):
    # catches a re-ranker over LLM or review-sentiment features (computed offline only) served online, and the
    # missing candidate models checked after them
    package, models, _ = loaded
    copy = copy_of(package, tmp_path)
    path = copy.directory / RERANK / "meta.json"
    meta = json.loads(path.read_text())
    meta["features"] += ["llm_score", "sent_mean", "item_pop_llm_"]
    path.write_text(json.dumps(meta))
    assert OnlineReranker.load(copy, models) == (
        None,
        "features ['llm_score', 'sent_mean'] are computed offline only (LLM scorer, review sentiment)",
    )
    assert OnlineReranker.load(copy, {"itemknn": models["itemknn"]})[1] == (
        "candidate models ['popularity'] are not in the package"
    )


def test_a_history_without_timestamps_is_refused(tmp_path, loaded):
    # catches a package from an older recforge (no timestamps: every time feature would be wrong) served
    package, models, _ = loaded
    copy = copy_of(package, tmp_path)
    rewrite_npz(copy.directory / "history.npz", lambda arrays: arrays.pop("timestamps"))
    assert OnlineReranker.load(copy, models) == (
        None,
        "the package's history has no timestamps (packaged by an older recforge)",
    )


def test_lists_not_covering_the_users_are_refused(tmp_path, loaded):
    # catches precomputed lists of another user set looked up by dense index (another user's list served)
    package, models, _ = loaded
    copy = copy_of(package, tmp_path)
    rewrite_npz(copy.directory / "rerank_lists.npz", lambda arrays: arrays.update(indptr=arrays["indptr"][:-1]))
    assert OnlineReranker.load(copy, models) == (
        None,
        "the precomputed lists do not cover the package's users; repackage",
    )


def test_without_stored_lists_every_user_is_ranked_online(tmp_path, loaded):
    # catches a package without rerank_lists.npz refused, or given lists or a length it does not have
    package, models, _ = loaded
    copy = copy_of(package, tmp_path)
    (copy.directory / "rerank_lists.npz").unlink()
    with one_openmp_thread():
        reranker, note = OnlineReranker.load(copy, models)
    assert note is None and reranker.lists is None and reranker.length == 0
    assert reranker.precomputed(0, 1) is None


def test_the_fold_models_are_compiled_into_the_models_cache(tmp_path, loaded, monkeypatch, caplog):
    # catches the per-request scoring left on LightGBM (the native trees are 3-5x faster), the compiled objects
    # written outside recforge's model cache, and the log line not saying which scorer serves
    package, models, _ = loaded
    monkeypatch.setenv("RECFORGE_MODELS_DIR", str(tmp_path / "models"))
    with caplog.at_level(logging.INFO, logger="recforge.online_rerank"), one_openmp_thread():
        reranker, _ = OnlineReranker.load(package, models)
    assert len(list((tmp_path / "models" / "compiled-rerankers").glob("*.o"))) == 2  # one per fold model
    assert "online re-ranker: compiled trees" in caplog.messages
    assert reranker.rank(0, candidates(models, reranker, 0), K)[0].tolist() == reranker.precomputed(0, K)[0].tolist()


def test_without_a_native_compiler_lightgbm_scores_and_the_log_says_so(tmp_path, loaded, caplog, monkeypatch):
    # catches the log line claiming compiled trees when compiling failed (here: the model cache is a file)
    package, models, _ = loaded
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("RECFORGE_MODELS_DIR", str(tmp_path / "not-a-folder"))
    with caplog.at_level(logging.INFO, logger="recforge.online_rerank"), one_openmp_thread():
        reranker, _ = OnlineReranker.load(package, models)
    assert "online re-ranker: LightGBM trees" in caplog.messages
    assert reranker.rank(0, candidates(models, reranker, 0), K)[0].tolist() == reranker.precomputed(0, K)[0].tolist()


# ---- each packaged input reaches the features ------------------------------------------------------------


def scored_frame(reranker: OnlineReranker, models, user: int | None = None) -> pd.DataFrame:
    """The candidate rows the model scores (OnlineReranker.rows, checked against the offline frame above) for a
    known dense ``user``, or (None) for a fixed session."""
    if user is None:
        history = np.array([3, 8, 5, 12])
        lists = {n: models[n].recommend_history(history, k=10, exclude_seen=True) for n in reranker.models}
        return pd.DataFrame(reranker.rows(0, lists, reranker.context.for_history(history)))
    return pd.DataFrame(reranker.rows(user, candidates(models, reranker, user)))


def load_copy(copy: Package, models) -> OnlineReranker:
    with one_openmp_thread():
        reranker, note = OnlineReranker.load(copy, models)
    assert note is None
    return reranker


def with_encode(package: Package, tmp_path, **changes) -> Package:
    """A copy of the package whose params' encode section has ``changes``."""
    copy = copy_of(package, tmp_path)
    encode = package.params.encode.model_copy(update=changes)
    copy.params = package.params.model_copy(update={"encode": encode})
    return copy


def test_the_features_read_the_packaged_text_fields(tmp_path, loaded):
    # catches the item keywords built from the default field ("text") instead of the packaged encode.fields:
    # the copy's items carry a second descriptive field, and its words change the candidates' keyword overlap
    package, models, reranker = loaded
    copy = with_encode(package, tmp_path, fields=["title", "text", "plot"])
    items = pd.read_parquet(copy.directory / "items.parquet")
    items["plot"] = ["shared evenword" if i % 2 else "shared oddword" for i in range(len(items))]
    items.to_parquet(copy.directory / "items.parquet")
    before, after = scored_frame(reranker, models, 4), scored_frame(load_copy(copy, models), models, 4)
    assert before["item"].tolist() == after["item"].tolist()
    assert not np.allclose(before["keyword_overlap"], after["keyword_overlap"])


def test_a_session_s_profile_follows_the_packaged_profile_settings(tmp_path, loaded):
    # catches the session profile weighted by default settings instead of the packaged encode.profile_* ones
    package, models, reranker = loaded
    copy = with_encode(package, tmp_path, profile_half_life_events=1.0)
    before, after = scored_frame(reranker, models), scored_frame(load_copy(copy, models), models)
    assert before["item"].tolist() == after["item"].tolist()
    assert not np.allclose(before["sim_tfidf_profile"], after["sim_tfidf_profile"])


def test_known_users_profiles_are_the_packaged_ones(tmp_path, loaded):
    # catches the packaged profiles (the encode stage's, as the rerank stage read them offline) ignored and
    # recomputed from the history: here the packaged vectors are another user's, and the features follow them
    package, models, reranker = loaded
    copy = copy_of(package, tmp_path)
    path = copy.directory / "profiles" / "tfidf.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for key in ("vectors", "text_vectors"):
        arrays[key] = np.roll(arrays[key], 1, axis=0)
    np.savez(path, **arrays)
    before, after = scored_frame(reranker, models, 4), scored_frame(load_copy(copy, models), models, 4)
    assert before["item"].tolist() == after["item"].tolist()
    assert not np.allclose(before["sim_tfidf_profile"], after["sim_tfidf_profile"])
