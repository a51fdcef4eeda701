"""The re-ranker served by default: every known user's list precomputed at package time, equal to offline.

``trained`` (the tiny two-stage pipeline and its package) is the session-scoped fixture of
tests/service/conftest.py, shared with test_request_options.py, which serves the same package over HTTP.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recforge.engine import Engine
from recforge.selection import val_score


def test_served_top10_equals_the_offline_test_top10_for_every_user(trained):
    params, directory, offline = trained
    engine = Engine.load(directory, device="cpu", model="rerank")
    assert engine.metadata()["rerank_precomputed"] is True
    k, checked = 10, 0
    for user_id, expected in offline.groupby("user_id", sort=False):
        expected = expected[expected["rank"] <= k].sort_values("rank")
        answer = engine.recommend(user_id, k)
        assert answer.model == "rerank"
        assert [i.item_id for i in answer.items] == expected["item_id"].tolist(), user_id
        np.testing.assert_allclose([i.score for i in answer.items], expected["score"], rtol=1e-6)
        checked += 1
    assert checked == offline["user_id"].nunique() >= 100
    # known users the offline test part does not cover were scored at package time (none left unserved)
    indptr = engine.reranker.lists[0]
    assert len(indptr) == len(engine.maps.user_ids) + 1


def test_the_precomputed_lists_are_the_online_reranker_s_lists(trained):
    """The lookup and the online second stage (candidate models + features per request) agree for every user."""
    _, directory, _ = trained
    engine = Engine.load(directory, device="cpu", model="rerank")
    reranker = engine.reranker
    for user in range(len(engine.maps.user_ids)):
        stored = reranker.precomputed(user, 10)
        lists = {name: engine.top(name, user, reranker.per_model, True) for name in reranker.models}
        items, scores = reranker.rank(user, lists, 10)
        assert stored[0].tolist() == items.tolist(), user
        np.testing.assert_allclose(stored[1], scores, rtol=1e-5, atol=1e-6)


def test_package_step_scores_users_without_test_events_like_the_stage(trained):
    """recforge.rerank.test_lists_for (what packaging uses for users the stage did not score) equals the stage."""
    from recforge.rerank import test_lists_for
    from recforge.workspace import Workspace

    params, _, offline = trained
    users = offline["user_id"].drop_duplicates().to_numpy()[::7]
    again = test_lists_for(Workspace(params), users)
    expected = offline[offline["user_id"].isin(users)]
    pd.testing.assert_frame_equal(
        again.sort_values(["user_id", "rank"]).reset_index(drop=True),
        expected.sort_values(["user_id", "rank"]).reset_index(drop=True),
        check_dtype=False,
    )


def test_auto_serves_the_reranker_when_best_on_validation(trained):
    params, directory, _ = trained
    engine = Engine.load(directory, device="cpu")  # serve.model: auto, from the packaged params
    k = params.evaluate.k
    singles = {name: val_score(engine.metrics, name, k) for name in engine.models}
    rerank_best = val_score(engine.metrics, "rerank", k) >= max(singles.values())
    meta = engine.metadata()
    assert meta["model_reason"].startswith("auto: ")
    if rerank_best:
        assert meta["model"] == "rerank" and meta["rerank_served"] and "precomputed" in meta["model_reason"]
    else:
        assert meta["model"] == max(singles, key=singles.get) and meta["rerank_note"]
    # asking for a single model by name serves it and says so
    single = Engine.load(directory, device="cpu", model="itemknn").metadata()
    assert single["model"] == "itemknn" and single["model_reason"] == "serve.model: itemknn"
    assert single["rerank_served"] is False and "not asked for" in single["rerank_note"]


def test_online_paths_still_answer_what_the_lists_cannot(trained):
    """exclude_seen=False and k above the list length go through the online re-ranker."""
    params, directory, offline = trained
    engine = Engine.load(directory, device="cpu", model="rerank")
    user_id = offline["user_id"].iloc[0]
    length = params.evaluate.list_length
    longer = engine.recommend(user_id, length + 5)
    stored = offline[offline["user_id"] == user_id].sort_values("rank")["item_id"].tolist()
    assert [i.item_id for i in longer.items][: len(stored)] == stored
    with_seen = engine.recommend(user_id, 10, exclude_seen=False)
    assert with_seen.model == "rerank" and len(with_seen.items) == 10


def test_package_and_serve_take_the_same_params_flags_as_run(tmp_path, monkeypatch):
    """`recforge package` / `recforge serve` read `-p FILE` and `-S key=value` exactly as `recforge run` does."""
    import yaml
    from typer.testing import CliRunner

    import recforge.bento
    import recforge.stages.package
    from recforge import cli

    config = tmp_path / "quality.yaml"
    config.write_text(yaml.safe_dump({"seed": 11, "serve": {"port": 3999}}))
    seen = {}

    def fake_package(params, build=None):
        seen["package"] = params
        return {"model_tag": "m:1", "bento_tag": None}

    def fake_serve(params, port=None):
        seen["serve"] = params
        return ["true"], {}

    monkeypatch.setattr(recforge.stages.package, "run_package", fake_package)
    monkeypatch.setattr(recforge.bento, "serve_command", fake_serve)
    monkeypatch.setattr(cli.os, "execvpe", lambda *a: None)
    runner = CliRunner()
    for command in (["package", "--no-build"], ["serve"]):
        flags = ["-p", str(config), "-S", "serve.model=gru", "--set", "evaluate.k=5"]
        result = runner.invoke(cli.app, [*command, *flags])
        assert result.exit_code == 0, result.output
        params = seen[command[0]]
        assert (params.seed, params.serve.port, params.serve.model, params.evaluate.k) == (11, 3999, "gru", 5)


def test_a_session_is_reranked_like_a_user_with_that_history(trained):
    # catches /recommend/history answered by one fold-in model while the re-ranker is served, the session's
    # features taken from another user (a known user's last items or profile), or candidates not folded in
    from recforge.candidates import candidate_frame

    _, directory, _ = trained
    engine = Engine.load(directory, device="cpu", model="rerank")
    reranker = engine.reranker
    assert engine.metadata()["history_path"] == "rerank"
    differs = 0
    for user in range(0, len(engine.maps.user_ids), 7):
        history = engine._history(user)[-30:]
        answer = engine.recommend_history([engine._item_id(i) for i in history], 10)
        assert answer.model == "rerank"
        # the same ranking recomputed from its definition: every model's fold-in top lists, the union's
        # features for a user whose history is exactly the session, the fold models' mean score
        lists = {}
        for name in reranker.models:
            items, scores = engine.models[name].recommend_history(history, k=reranker.per_model, exclude_seen=True)
            items, scores = np.ravel(items), np.ravel(scores)
            keep = (items >= 0) & np.isfinite(scores)
            lists[name] = pd.DataFrame(
                {
                    "user_id": 7,
                    "item_id": engine.maps.item_ids[items[keep]],
                    "rank": np.arange(1, keep.sum() + 1),
                    "score": scores[keep],
                }
            )
        from recforge.interactions import IdMaps

        maps = IdMaps(user_ids=pd.Index([7]), item_ids=engine.maps.item_ids)
        frame = reranker.context.for_history(history).add(candidate_frame(lists, maps, reranker.per_model))
        scores = reranker.model.rerank(frame)
        order = np.lexsort((frame["item"].to_numpy(), -scores))[:10]
        assert [i.item_id for i in answer.items] == frame["item_id"].to_numpy()[order].tolist()
        assert not set(engine.maps.item_index([i.item_id for i in answer.items])) & set(history.tolist())
        single = engine.models[engine.fold_in_model].recommend_history(history, k=10, exclude_seen=True)[0]
        differs += np.ravel(single).tolist() != engine.maps.item_index([i.item_id for i in answer.items]).tolist()
    assert differs > 0  # the second stage changes some sessions' lists
