"""recforge.explain: evidence, the template sentence, the explainer fallbacks, workspace evidence.

Fast: hand-made item tables, and one tiny trained workspace cached on disk (tests/unit/tiny_workspace.py)
for the workspace paths. Each test names the bug it catches. The LLM explainer is never loaded (a
nonexistent model path makes it fall back at once).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import explain
from recforge.errors import RecforgeError
from recforge.explain import ItemTable, evidence, template_explanation
from recforge.profiles import UserProfiles
from recforge.workspace import Workspace
from tests.unit.tiny_workspace import workspace_params

# a target item (5) with 3 genres and 4 keywords (7 terms); history items sharing 3, 3, 0, 2 and 1 of them
TABLE = ItemTable(
    item_ids=np.array([10, 11, 12, 13, 14, 15]),
    titles=["A", "B", "C", "D", "E", "T"],
    genres=[["Drama", "Sci-Fi"], ["Drama", "Action"], [], ["Action"], ["Comedy"], ["Drama", "Action", "War"]],
    keywords=[
        ["robots", "space"],
        ["robots", "laser"],
        [],
        ["drama"],
        ["jokes", "space"],
        ["robots", "space", "drama", "desert"],
    ],
)


def _entry(index: int, similarity: float) -> dict:
    return {
        "item_id": int(TABLE.item_ids[index]),
        "title": TABLE.titles[index],
        "similarity": similarity,
        "genres": TABLE.genres[index],
    }


# ---- ItemTable, encoders, profiles -------------------------------------------------------------------------


def test_item_table_build_reads_the_items_and_makes_vectors_float32_contiguous():
    # catches the vectors conversion inverted or dropped (float64/Fortran-order rows reach the dot products)
    # and the item columns swapped
    items = pd.DataFrame({"item_id": [7, 8], "title": ["X", "Y"], "genres": ["A|B", "B"], "text": ["foo", "bar"]})
    vectors = np.asfortranarray(np.array([[1.0, 0.0], [0.0, 1.0]]))
    table = ItemTable.build(items, ["text"], vectors)
    assert table.item_ids.tolist() == [7, 8] and table.titles == ["X", "Y"]
    assert table.genres == [["A", "B"], ["B"]] and table.keywords == [["foo"], ["bar"]]
    assert table.vectors.dtype == np.float32 and table.vectors.flags["C_CONTIGUOUS"]
    assert table.vectors.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert ItemTable.build(items, ["text"]).vectors is None


def test_explanation_encoders_prefer_the_rerank_encoders():
    # catches evidence reading other embeddings than the re-rank features (rerank.encoders, else encode.encoders)
    params = workspace_params()
    assert explain.explanation_encoders(params) == ["tfidf"]
    assert explain.explanation_encoders(workspace_params("rerank.encoders=[word2vec, tfidf]")) == ["word2vec", "tfidf"]


def _profiles(keywords):
    return UserProfiles(user_ids=[1, "u2"], keywords=keywords)


def test_profile_keywords_guards_and_cap():
    # catches each guard dropped (no profiles, no keywords, a row out of range either side, another user's row),
    # the str() comparison of ids lost, and the cap of MAX_USER_KEYWORDS (6) changed
    words = [[f"w{i}" for i in range(9)], ["solo"]]
    profiles = _profiles(words)
    assert explain.profile_keywords(profiles, 0, "1") == [f"w{i}" for i in range(6)]  # "1" and 1: the same user
    assert explain.profile_keywords(profiles, 1, "u2") == ["solo"]
    assert explain.profile_keywords(profiles, 0, 2) == []  # row 0 is user 1's
    assert explain.profile_keywords(profiles, 2, "u3") == []
    assert explain.profile_keywords(profiles, -1, "u2") == []  # -1 must not wrap to the last row
    assert explain.profile_keywords(None, 0, 1) == []
    assert explain.profile_keywords(_profiles([]), 0, 1) == []


def test_profile_keywords_are_strings():
    # catches the str() of each keyword dropped (JSON-friendly evidence)
    assert explain.profile_keywords(_profiles([[1, 2]]), 0, 1) == ["1", "2"]


def test_read_profiles_loads_keywords_without_vectors(tmp_path):
    # catches read_profiles asking for the vectors of every encoder users.json names (a package without the
    # npz files would lose its keywords) and a directory without profiles not giving None
    meta = {"user_ids": [5], "keywords": [["k"]], "genres": [["g"]], "settings": {}, "encoders": ["tfidf"]}
    (tmp_path / "users.json").write_text(json.dumps(meta))
    profiles = explain.read_profiles(tmp_path)
    assert profiles.keywords == [["k"]] and profiles.user_ids == [5] and profiles.vectors == {}
    assert explain.read_profiles(tmp_path / "none") is None


def test_read_profiles_unreadable_warns_and_gives_none(tmp_path, caplog):
    # catches an unreadable users.json failing the explanation instead of dropping the profile keywords, and the
    # warning losing the directory or the reason
    (tmp_path / "users.json").write_text(json.dumps({"user_ids": [5]}))
    with caplog.at_level(logging.WARNING, logger="recforge.explain"):
        assert explain.read_profiles(str(tmp_path)) is None
    assert caplog.messages == [
        f"{tmp_path}: profiles unreadable ('keywords'); explanations go without profile keywords"
    ]


# ---- evidence ---------------------------------------------------------------------------------------------


def test_evidence_from_shared_terms_exactly():
    # catches: the item itself or duplicates counted as history, the term set built with & instead of |, the
    # share computed other than shared / the item's terms, ties not to the lower index, the most similar not
    # first, k not defaulting to 3, the 4-digit rounding changed, shared genres as a union, genre words left
    # among the keywords (compared lower-case), history_length not the raw history's length, any key renamed
    found = evidence(TABLE, np.array([4, 0, 5, 1, 3, 2, 0]), 5)
    assert found == {
        "item_id": 15,
        "item_title": "T",
        "item_genres": ["Drama", "Action", "War"],
        "history": [_entry(0, 0.4286), _entry(1, 0.4286), _entry(3, 0.2857)],
        "shared_genres": ["Action", "Drama"],
        "shared_keywords": ["robots", "space"],
        "user_keywords": [],
        "history_length": 7,
    }
    assert isinstance(found["item_id"], int) and isinstance(found["history"][0]["item_id"], int)  # JSON-friendly


def test_evidence_k_and_the_least_similar_are_left_out():
    # catches k ignored or the order reversed (the least similar named first)
    found = evidence(TABLE, np.array([2, 4, 3, 1]), 5, k=2)
    assert [h["title"] for h in found["history"]] == ["B", "D"]
    assert [h["similarity"] for h in found["history"]] == [0.4286, 0.2857]


def test_evidence_share_of_a_single_term_and_of_none():
    # catches the denominator's floor changed: one shared term of one is 1.0; an item with no terms is 0, not an
    # error
    table = ItemTable(
        item_ids=np.array([1, 2, 3]), titles=["a", "b", "c"], genres=[["G"], ["G"], []], keywords=[[], ["x"], []]
    )
    assert [h["similarity"] for h in evidence(table, np.array([1]), 0)["history"]] == [1.0]
    assert [h["similarity"] for h in evidence(table, np.array([0, 1]), 2)["history"]] == [0.0, 0.0]


def test_evidence_uses_cosine_over_vectors_when_present():
    # catches the vectors ignored (shared terms instead), and the similarity not the dot product of the rows
    vectors = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.8, 0.6], [1, 0], [1, 0]], dtype=np.float32)
    table = ItemTable(TABLE.item_ids, TABLE.titles, TABLE.genres, TABLE.keywords, vectors)
    found = evidence(table, np.array([2, 1, 3, 0]), 5)
    assert [(h["title"], h["similarity"]) for h in found["history"]] == [("A", 1.0), ("D", 0.8), ("B", 0.6)]


def test_evidence_without_history():
    # catches an empty history (or one holding only the item) failing instead of giving no history items
    for table in (TABLE, ItemTable(TABLE.item_ids, TABLE.titles, TABLE.genres, TABLE.keywords, np.eye(6))):
        found = evidence(table, np.array([5]), 5)
        assert found["history"] == [] and found["shared_genres"] == [] and found["shared_keywords"] == []
        assert found["history_length"] == 1
        assert evidence(table, np.array([], dtype=np.int64), 5)["history"] == []


def test_evidence_caps_shared_keywords_and_user_keywords():
    # catches MAX_KEYWORDS (8) or MAX_USER_KEYWORDS (6) changed, and user keywords not made strings
    words = [f"k{i}" for i in range(10)]
    table = ItemTable(np.array([1, 2]), ["a", "b"], [[], []], [words, words])
    found = evidence(table, np.array([1]), 0, user_keywords=[1, 2, 3, 4, 5, 6, 7, 8])
    assert found["shared_keywords"] == sorted(words)[:8]
    assert found["user_keywords"] == ["1", "2", "3", "4", "5", "6"]


# ---- the template sentence ------------------------------------------------------------------------------


def test_template_sentence_exactly():
    # catches any part of the sentence changed: the quoting and joining of titles, the genres and themes clauses
    found = evidence(TABLE, np.array([0, 1, 3]), 5)
    assert template_explanation(found) == (
        '"T" is recommended because you enjoyed "A", "B" and "D". '
        "They share the genres Action, Drama and themes like robots, space."
    )


def test_template_caps_items_and_terms():
    # catches max_items (3) or max_terms (4) changed or applied to the wrong list
    found = {
        "item_title": "T",
        "history": [{"title": t} for t in "ABCDE"],
        "shared_genres": list("GHIJK"),
        "shared_keywords": list("vwxyz"),
    }
    assert template_explanation(found) == (
        '"T" is recommended because you enjoyed "A", "B" and "C". '
        "They share the genres G, H, I, J and themes like v, w, x, y."
    )
    assert template_explanation(found, max_items=1, max_terms=1) == (
        '"T" is recommended because you enjoyed "A". They share the genres G and themes like v.'
    )


def test_template_two_items_and_only_one_kind_of_term():
    # catches the clauses not independent (genres without themes, themes without genres) and two titles joined
    # with a comma
    two = [{"title": "A"}, {"title": "B"}]
    assert template_explanation({"item_title": "T", "history": two, "shared_genres": ["G"]}) == (
        '"T" is recommended because you enjoyed "A" and "B". They share the genres G.'
    )
    assert template_explanation({"item_title": "T", "history": two[:1], "shared_keywords": ["k"]}) == (
        '"T" is recommended because you enjoyed "A". They share themes like k.'
    )
    assert template_explanation({"item_title": "T", "history": two[:1]}) == (
        '"T" is recommended because you enjoyed "A".'
    )


def test_template_without_history_or_title():
    # catches the no-history sentence changed, a missing history key failing, and the item id not standing in
    # for a missing title
    assert template_explanation({"item_id": 42}) == (
        '"42" is recommended because it is popular with users whose tastes resemble yours.'
    )
    assert template_explanation({"item_id": 42, "item_title": "", "history": [{"title": "A"}]}) == (
        '"42" is recommended because you enjoyed "A".'
    )


# ---- explainers and their fallbacks -----------------------------------------------------------------------

EVIDENCE = {"item_id": 42, "item_title": "T", "history": [{"title": "A"}]}
TEMPLATE = '"T" is recommended because you enjoyed "A".'


class _Explainer:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def explain(self, user, item, *, evidence):
        self.calls.append((user, item, evidence))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_explain_text_uses_the_explainer():
    # catches the explainer's text dropped or not made a string, and its arguments mixed up
    explainer = _Explainer(123)
    assert explain.explain_text(explainer, "u", 42, EVIDENCE) == "123"
    assert explainer.calls == [("u", 42, EVIDENCE)]


def test_explain_text_falls_back_to_the_template(caplog):
    # catches an empty answer returned as the explanation, an explainer failure failing the request, and the
    # warning losing the explainer's name or the reason
    assert explain.explain_text(None, "u", 42, EVIDENCE) == TEMPLATE
    assert explain.explain_text(_Explainer(""), "u", 42, EVIDENCE) == TEMPLATE
    with caplog.at_level(logging.WARNING, logger="recforge.explain"):
        assert explain.explain_text(_Explainer(RuntimeError("boom")), "u", 42, EVIDENCE, name="mine") == TEMPLATE
        assert explain.explain_text(_Explainer(RuntimeError("bang")), "u", 42, EVIDENCE) == TEMPLATE
    assert caplog.messages == ["explainer mine failed: boom", "explainer explainer failed: bang"]


def test_load_explainer_builtin_unknown_and_plugin():
    # catches a plugin not loaded by name, its options dropped, and builtin / unknown / no name not giving the
    # built-in fallback
    from recforge_plugins.explainers.template import TemplateExplainer

    explainer, name = explain.load_explainer("template", {"max_items": 1})
    assert isinstance(explainer, TemplateExplainer) and name == "template" and explainer.max_items == 1
    assert explain.load_explainer("template")[0].max_items == 3
    for missing in (None, "", "builtin", "no-such-explainer"):
        assert explain.load_explainer(missing) == (None, "builtin")


class _Recording:
    """A registered explainer plugin that records what it is asked."""

    calls: list = []

    def __init__(self, **options):
        self.options = options

    def explain(self, user, item, *, evidence):
        _Recording.calls.append((user, item, evidence, self.options))
        return "recorded"


@pytest.fixture
def recording(monkeypatch):
    from recforge import registry

    _Recording.calls = []
    monkeypatch.setitem(registry.explainers._loaded, "recording", _Recording)
    monkeypatch.setitem(registry.explainers._loaded, "builtin", _Recording)
    return _Recording


def test_load_explainer_builtin_is_reserved_and_unknown_names_are_not_tried(recording, caplog):
    # catches "builtin" loaded as a plugin (even if a plugin of that name is registered), and no name or an
    # unregistered one attempted anyway (a spurious "unavailable" warning)
    with caplog.at_level(logging.WARNING, logger="recforge.explain"):
        assert explain.load_explainer("builtin") == (None, "builtin")
        assert explain.load_explainer(None) == (None, "builtin")
        assert explain.load_explainer("no-such-explainer") == (None, "builtin")
    assert caplog.messages == []
    explainer, name = explain.load_explainer("recording", {"a": 1})
    assert isinstance(explainer, _Recording) and name == "recording" and explainer.options == {"a": 1}


def test_load_explainer_failure_warns(caplog):
    # catches a plugin that cannot be created failing the service instead of the built-in fallback, and the
    # warning losing the name or the reason
    with caplog.at_level(logging.WARNING, logger="recforge.explain"):
        assert explain.load_explainer("template", {"bogus": 1}) == (None, "builtin")
    [message] = caplog.messages
    assert message.startswith("explainer template unavailable (plugin 'template': bad options ['bogus']")
    assert message.endswith("); using the built-in one")


# ---- the workspace's evidence ----------------------------------------------------------------------------


def _workspace_parts(params):
    workspace = Workspace(params)
    return workspace, workspace.maps


def test_workspace_evidence_full_and_val_parts():
    # catches the parts swapped (served evidence must read train+val and the full profiles; 'val' train and the
    # val profiles), the tfidf embeddings not used for similarity, and the user or item looked up wrongly
    params = workspace_params()
    workspace, maps = _workspace_parts(params)
    user, item = 0, 3
    vectors = workspace.embeddings("tfidf")
    for part, events in (("full", "train+val"), ("val", "train")):
        found = explain.workspace_evidence(params, maps.user_ids[user], maps.item_ids[item], part=part)
        history = workspace.events(events).sequences[user]
        profiles = UserProfiles.load(Path(params.paths.profiles_dir) / part, [])
        assert found["item_id"] == maps.item_ids[item] and found["history_length"] == len(history)
        assert found["user_keywords"] == profiles.keywords[user][:6]
        for entry in found["history"]:
            h = maps.lookup_item(entry["item_id"])
            assert h in history and entry["similarity"] == round(float(vectors[h] @ vectors[item]), 4)
    full = explain.workspace_evidence(params, maps.user_ids[user], maps.item_ids[item])
    assert full["history_length"] == len(workspace.events("train+val").sequences[user])
    val = explain.workspace_evidence(params, maps.user_ids[user], maps.item_ids[item], part="val")
    assert val["user_keywords"] != full["user_keywords"]  # the two parts' profiles differ for this user


def test_workspace_evidence_takes_the_first_encoder_with_embeddings():
    # catches the encoder loop stopping at an encoder without embeddings (shared terms instead of the tfidf
    # cosine) or not stopping at the first that has them
    params = workspace_params("rerank.encoders=[word2vec, tfidf]")
    workspace, maps = _workspace_parts(params)
    vectors = workspace.embeddings("tfidf")
    found = explain.workspace_evidence(params, maps.user_ids[0], maps.item_ids[3])
    assert found["history"]
    for entry in found["history"]:
        h = maps.lookup_item(entry["item_id"])
        assert entry["similarity"] == round(float(vectors[h] @ vectors[3]), 4)
    # no encoder with embeddings: the share of terms
    terms = explain.workspace_evidence(
        workspace_params("rerank.encoders=[word2vec]"), maps.user_ids[0], maps.item_ids[3]
    )
    assert [h["similarity"] for h in terms["history"]] != [h["similarity"] for h in found["history"]]
    table = ItemTable.build(workspace.items, params.encode.fields)
    expected = evidence(table, workspace.events("train+val").sequences[0], 3)
    assert terms["history"] == expected["history"]


def test_workspace_evidence_unknown_ids():
    # catches an unknown user or item answered with someone else's evidence, and the one-line errors changed
    params = workspace_params()
    _, maps = _workspace_parts(params)
    with pytest.raises(RecforgeError) as info:
        explain.workspace_evidence(params, maps.user_ids[0], 999999)
    assert str(info.value) == "unknown item 999999"
    with pytest.raises(RecforgeError) as info:
        explain.workspace_evidence(params, "nobody", maps.item_ids[0])
    assert str(info.value) == "unknown user 'nobody'"


def test_explain_recommendation_runs_each_explainer_on_the_evidence():
    # catches explainers not given their own options, the part not passed on, and the result's keys renamed
    params = workspace_params()
    _, maps = _workspace_parts(params)
    user_id, item_id = maps.user_ids[0], maps.item_ids[3]
    result = explain.explain_recommendation(
        params, user_id, item_id, ["template"], part="val", options={"template": {"max_items": 1}}
    )
    found = explain.workspace_evidence(params, user_id, item_id, part="val")
    assert result == {
        "user_id": user_id,
        "item_id": item_id,
        "evidence": found,
        "explanations": {"template": template_explanation(found, max_items=1)},
    }


def test_explain_recommendation_defaults_to_every_registered_explainer():
    # catches the default (None: every registered explainer) running none, and no options meaning an error
    from recforge import registry

    params = workspace_params()
    _, maps = _workspace_parts(params)
    options = {"llm": {"model": "/nonexistent/local-model", "time_budget_s": 5}}
    result = explain.explain_recommendation(params, maps.user_ids[0], maps.item_ids[3], options=options)
    assert sorted(result["explanations"]) == sorted(registry.explainers.view())
    assert result["explanations"]["template"] == template_explanation(result["evidence"])
    alone = explain.explain_recommendation(params, maps.user_ids[0], maps.item_ids[3], ["template"])
    assert alone["explanations"] == {"template": template_explanation(alone["evidence"])}


def test_explain_recommendation_asks_with_the_original_ids_and_logs_the_time(recording, caplog):
    # catches the explainer asked with other ids than the original user and item, the default part not 'full'
    # (what is served), and the timing log line changed
    params = workspace_params()
    _, maps = _workspace_parts(params)
    user_id, item_id = maps.user_ids[0], maps.item_ids[3]
    with caplog.at_level(logging.INFO, logger="recforge.explain"):
        result = explain.explain_recommendation(
            params, user_id, item_id, ["recording"], options={"recording": {"b": 2}}
        )
    found = explain.workspace_evidence(params, user_id, item_id, part="full")
    assert result["evidence"] == found and result["explanations"] == {"recording": "recorded"}
    assert recording.calls == [(user_id, item_id, found, {"b": 2})]
    [line] = [m for m in caplog.messages if m.startswith("explainer recording")]
    seconds = re.fullmatch(r"explainer recording: (\d+\.\d)s", line)
    assert seconds and float(seconds.group(1)) < 60
