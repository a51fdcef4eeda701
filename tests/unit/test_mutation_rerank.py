"""recforge.rerank: what reaches the feature code, the block loop and the serving lists (fast, no training).

Each test names the wrong behaviour it catches. The workspace is the hand-written one of
test_rerank_candidates.py (3 users, 5 items, two candidate models); trained models and the
re-ranker are replaced by recording fakes, so nothing here trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import rerank
from recforge.errors import RecforgeError
from recforge.params import load_params
from recforge.profiles import UserProfiles, settings_from_params
from tests.conftest import tmp_overrides
from tests.unit.test_rerank_candidates import workspace  # noqa: F401  (the shared fixture)

MODELS = ["pop", "knn"]


def _lists(users, items_of, per_model=2):
    """Candidate lists: for each user, ``items_of(user)`` in rank order."""
    rows = [(u, item, r + 1, 1.0 - r / 10) for u in users for r, item in enumerate(items_of(u)[:per_model])]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])


def test_part_data_hands_sentiment_of_the_parts_history(workspace, monkeypatch):  # noqa: F811
    # catches the review sentiment dropped (None) or computed over the wrong history (val rows must see
    # train only, test rows train+val), and the profile settings / text fields not reaching the features
    import recforge.sentiment

    calls = []

    def fake(ws, part):
        calls.append((ws, part))
        return np.arange(len(ws.events(part).user_ids), dtype=np.float64)

    monkeypatch.setattr(recforge.sentiment, "history_sentiment", fake)
    workspace.params.rerank.sentiment = True
    val = rerank.part_data(workspace, "val", MODELS)
    test = rerank.part_data(workspace, "test", MODELS)
    assert calls == [(workspace, "train"), (workspace, "train+val")]
    assert val.sentiment.tolist() == [0, 1, 2, 3, 4] and len(test.sentiment) == 8
    assert val.profile_settings == settings_from_params(workspace.params)
    assert val.text_fields == workspace.params.encode.fields


def test_part_data_uses_given_lists_instead_of_the_stored_ones(workspace):  # noqa: F811
    # catches lists passed by the serving path (test_lists_for) ignored and the train stage's files read
    given = {"pop": _lists([1], lambda u: [104, 103])}
    data = rerank.part_data(workspace, "test", ["pop"], lists=given)
    assert data.lists["pop"] is given["pop"]


def _write_profiles(params, part, encoders, users=(1, 2, 3)):
    directory = Path(params.paths.profiles_dir) / part
    vectors = {name: np.full((len(users), 5), i + 1, dtype=np.float32) for i, name in enumerate(encoders)}
    UserProfiles(user_ids=list(users), vectors=vectors).save(directory)
    return directory


def test_written_profiles_reads_only_the_encoders_written(workspace):  # noqa: F811
    # catches the encode stage's profiles ignored (features recomputed from history with other weights),
    # profiles of the wrong part, an encoder without a file loaded (error) and a missing directory read
    params = workspace.params
    assert workspace.written_profiles("val", ["e"]) == {}
    _write_profiles(params, "val", ["e", "f"])
    got = workspace.written_profiles("val", ["e", "g"])
    assert list(got) == ["e"] and got["e"].shape == (3, 5) and np.all(got["e"] == 1)
    assert workspace.written_profiles("val", ["g"]) == {}  # none of the asked encoders written
    assert workspace.written_profiles("full", ["e"]) == {}
    with pytest.raises(RecforgeError, match="profile part"):
        workspace.written_profiles("test", ["e"])
    # a FitContext offers profiles only when they were built from the events being fitted: these were not
    assert workspace.context().profiles("e", workspace.events("train")) is None
    # part_data passes its feature encoders and the profile part of the part (val -> val, test -> full)
    assert list(rerank.part_data(workspace, "val", MODELS).profiles) == ["e"]
    assert rerank.part_data(workspace, "test", MODELS).profiles == {}


def test_blocks_follow_block_users_with_integer_division(workspace):  # noqa: F811
    # catches blocks computed as user_index / size (a float: each block then holds one user) and the loop
    # stopping at a block without candidates (``break`` instead of ``continue``) so later users are lost
    blocks = list(rerank.iter_part(workspace, "val", MODELS, block_users=2))
    assert [b["user_id"].unique().tolist() for b in blocks] == [[1, 2], [3]]
    # user 2 has no candidates: block 1 is empty, user 3's block must still come
    lists = {name: _lists([1, 3], lambda u: [100 + u, 101 + u]) for name in MODELS}
    blocks = list(rerank.iter_part(workspace, "val", MODELS, block_users=1, lists=lists))
    assert [b["user_id"].unique().tolist() for b in blocks] == [[1], [3]]


def test_given_lists_may_start_past_the_first_blocks_or_hold_only_unknown_users(workspace):  # noqa: F811
    # catches the first run of blocks in a given frame missed when it is not block 0 (a wrong value before
    # the first block), and the skip over unknown users' rows (block -1) failing when nothing follows them
    lists = _lists([3], lambda u: [100, 101])
    blocks = list(rerank.iter_part(workspace, "val", MODELS, block_users=1, lists={"pop": lists, "knn": lists}))
    assert [b["user_id"].unique().tolist() for b in blocks] == [[3]]
    unknown = _lists([99], lambda u: [100, 101])
    assert list(rerank.iter_part(workspace, "val", MODELS, block_users=1, lists={"pop": unknown, "knn": unknown})) == []


def test_make_reranker_needs_the_positive_users_for_auto_sizes():
    # catches the 'auto' sizes chosen from no count at all instead of the error that says what is missing
    params = load_params(None, ["rerank.folds=auto"])
    with pytest.raises(ValueError, match=r"^rerank.folds/repeats/num_leaves 'auto' need the number of validation"):
        rerank.make_reranker(params, ["a"], None)
    fixed = load_params(None, ["rerank.folds=2", "rerank.repeats=1", "rerank.num_leaves=7"])
    assert rerank.make_reranker(fixed, ["a"], None) is not None


def test_positive_users_count_the_groups_with_a_positive():
    # catches the count taken over rows instead of groups, or labels and groups swapped
    assert rerank.positive_users(np.array([0, 1, 1, 0, 0, 1]), np.array([3, 2, 1])) == 2


def _llm(frame, data):
    return frame["item"].to_numpy() * 0.5


def test_llm_scorer_reaches_every_block_and_the_training_table(workspace):  # noqa: F811
    # catches the LLM scorer dropped between training_table / build_part / iter_part and the feature code
    # (the re-ranker then trains without its llm_logprob feature)
    for block in rerank.iter_part(workspace, "val", MODELS, _llm, block_users=1):
        assert block["llm_logprob"].tolist() == (block["item"] * 0.5).tolist()
    frame, _, _ = rerank.training_table(workspace, MODELS, llm_scorer=_llm)
    assert frame["llm_logprob"].tolist() == (frame["item"] * 0.5).tolist()


def test_build_part_index_runs_over_all_blocks(workspace):  # noqa: F811
    # catches the block frames concatenated with their own indexes (repeated labels 0.. per block), which
    # breaks label alignment (labels_for, .loc) downstream
    workspace.params.rerank.block_users = 1
    whole = rerank.build_part(workspace, "val", MODELS)
    assert whole.index.tolist() == list(range(len(whole)))
    assert whole["user_id"].unique().tolist() == [1, 2, 3]


def test_load_reranker_message_and_what_it_loads(tmp_path, monkeypatch):
    # catches the missing-model message changed, and the directory, the re-ranker registry or the meta
    # already read not passed on to load_model_dir
    params = load_params(None, tmp_overrides(tmp_path))
    with pytest.raises(RecforgeError, match=r"rerank: no trained re-ranker; run `recforge stage rerank`$"):
        rerank.load_reranker(params)
    from recforge.artifacts import write_meta

    directory = Path(params.paths.models_dir) / "rerank"
    directory.mkdir(parents=True)
    write_meta(directory, {"plugin": "lambdarank", "models": MODELS})
    seen = {}
    monkeypatch.setattr(rerank, "load_model_dir", lambda *a, **kw: seen.update(args=a, kw=kw) or "loaded")
    assert rerank.load_reranker(params) == "loaded"
    assert seen["args"] == (directory, rerank.registry.rerankers)
    assert seen["kw"]["meta"]["models"] == MODELS


class _Reranker:
    """Scores a candidate by its item code (higher item, better), and records what it saw."""

    def __init__(self):
        self.blocks = []

    def rerank(self, block):
        self.blocks.append(block)
        return block["item"].to_numpy(np.float64) + (block["llm_logprob"].to_numpy() if "llm_logprob" in block else 0)


def _serving(workspace, monkeypatch, length=2):  # noqa: F811
    import recforge.stages.train as train

    workspace.params.evaluate.list_length = length
    reranker = _Reranker()
    calls = []

    def load_reranker(params):
        assert params is workspace.params
        return reranker, {"models": MODELS}

    monkeypatch.setattr(rerank, "load_reranker", load_reranker)

    def load_model(params, name, part="full", context=None):
        calls.append(("load", params, name, part, context))
        return name

    def recommend_frame(model, user_ids, maps, k):
        calls.append(("recommend", model, list(user_ids), maps, k))
        shift = MODELS.index(model)
        return _lists(
            [u for u in user_ids if u in (1, 2, 3)], lambda u: [100 + (u + shift + r) % 5 for r in range(k)], k
        )

    monkeypatch.setattr(train, "load_model", load_model)
    monkeypatch.setattr(train, "recommend_frame", recommend_frame)
    return reranker, calls


def test_test_lists_for_scores_users_as_the_stage_does(workspace, monkeypatch):  # noqa: F811
    # catches the serving lists built from the wrong models (not the 'full' refits, not those of the
    # re-ranker's meta), for other users, at another length, from the val history, or without the LLM feature
    from recforge.protocols import FitContext

    reranker, calls = _serving(workspace, monkeypatch, length=3)
    lists = rerank.test_lists_for(workspace, [3, 1], llm_scorer=_llm)
    loads = [c for c in calls if c[0] == "load"]
    assert [(c[1], c[2], c[3]) for c in loads] == [(workspace.params, "pop", "full"), (workspace.params, "knn", "full")]
    assert all(isinstance(c[4], FitContext) for c in loads)
    recs = [c for c in calls if c[0] == "recommend"]
    assert [(c[1], c[2], c[4]) for c in recs] == [("pop", [3, 1], 3), ("knn", [3, 1], 3)]
    assert all(c[3] is workspace.maps for c in recs)
    # the blocks are test blocks (history train + val: user 1 has 3 events) carrying the LLM score
    block = reranker.blocks[0]
    assert "llm_logprob" in block and block.loc[block["user_id"] == 1, "user_history"].iloc[0] == 3
    # candidates per model = 2: pop u+0, u+1; knn u+1, u+2 (mod 5); best = highest item code
    assert lists[["user_id", "item_id", "rank"]].values.tolist() == [
        [1, 103, 1], [1, 102, 2], [1, 101, 3], [3, 104, 1], [3, 103, 2], [3, 100, 3],
    ]  # fmt: skip
    assert lists["rank"].dtype == np.int32


def test_test_lists_for_unknown_users_give_an_empty_table(workspace, monkeypatch):  # noqa: F811
    # catches the no-candidates case crashing (pd.concat of nothing) or returning other columns
    _serving(workspace, monkeypatch)
    lists = rerank.test_lists_for(workspace, [99])
    assert list(lists.columns) == ["user_id", "item_id", "rank", "score"] and len(lists) == 0


def test_test_lists_for_index_runs_over_all_blocks(workspace, monkeypatch):  # noqa: F811
    # catches the per-block lists concatenated with their own indexes (repeated labels), which packaging
    # then misaligns when it writes the precomputed lists
    _serving(workspace, monkeypatch)
    workspace.params.rerank.block_users = 1
    lists = rerank.test_lists_for(workspace, [1, 2, 3])
    assert lists.index.tolist() == list(range(6)) and lists["user_id"].tolist() == [1, 1, 2, 2, 3, 3]
