"""recforge.engine and recforge.engine_load against a real tiny package, every answer recomputed here.

The package (popularity, itemknn and content over tfidf, and the LambdaRank re-ranker, on tiny synthetic data)
is built once and kept on disk under the temp directory, keyed by a hash of its settings and of the code that
builds it (recforge/ except the two modules tested here, and plugins/): a mutant of engine.py or engine_load.py
reuses it (neither module builds packages), so each mutant pays only ``Engine.load`` (~0.1 s).

Expected answers come from the package's files read with numpy (``tests.service.test_request_options.Reference``)
or from the loaded model objects called directly, never from the engine's own output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recforge.engine import Engine
from recforge.engine_load import _prepare, cached_user_states, warm_up
from recforge.errors import RecforgeError
from recforge.explanation_cache import ExplanationCache
from recforge.packaging import Package
from recforge.schemas import BadRequestError, NotFoundError
from tests.conftest import PROJECT_ROOT
from tests.service.test_request_options import Reference
from tests.unit.build_cache import build_once, source_key

OVERRIDES = [
    "data.synthetic.num_users=40",
    "data.synthetic.num_items=30",
    "data.synthetic.num_interactions=700",
    "data.synthetic.num_topics=3",
    "encode.encoders=[tfidf]",
    "recommenders={popularity: {}, itemknn: {neighbors: 10}, content: {encoder: tfidf, popularity_weight: 0.5}}",
    "rerank.enabled=true",
    "rerank.folds=2",
    "rerank.candidates_per_model=8",
    "rerank.num_boost_round=20",
    "rerank.early_stopping_rounds=5",
    "evaluate.list_length=10",
    "serve.explainer=builtin",
]
K = 5


BUILD = """
import sys
from pathlib import Path
from recforge.packaging import build_package
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from tests.conftest import tmp_overrides
from tests.unit.test_mutation_engine import OVERRIDES
work = Path(sys.argv[1])
params = load_params(None, tmp_overrides(work / "workspace") + OVERRIDES)
run_pipeline(params)
build_package(params, work / "package")
"""


@pytest.fixture(scope="module", autouse=True)
def one_openmp_thread():
    """LightGBM scores with one OpenMP thread in this module (restored after it): mutmut forks each mutant's
    run from this process, and a GNU OpenMP thread pool created before a fork hangs the child's next parallel
    region (every re-ranker test then timed out instead of failing or passing)."""
    import lightgbm  # noqa: F401 - loads the OpenMP runtime the limit applies to
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="session")
def package_dir() -> Path:
    """The tiny package, built once per code version (in a child process: no training in this one) and reused
    by every later session (and mutant)."""
    import subprocess
    import sys

    def build(staging: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-c", BUILD, str(staging)], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        shutil.rmtree(staging / "workspace")

    skip = {"recforge/engine.py", "recforge/engine_load.py"}  # the modules tested here never build a package
    return build_once("engine-package", source_key(OVERRIDES, skip), build, "package/manifest.json") / "package"


@pytest.fixture(scope="module")
def ref(package_dir) -> Reference:
    return Reference(package_dir, {})


@pytest.fixture(scope="module")
def engine(package_dir) -> Engine:
    """The content model served (the text, history and similar-items paths all have it as their model)."""
    return Engine.load(package_dir, device="cpu", model="content")


@pytest.fixture(scope="module")
def rerank_engine(package_dir) -> Engine:
    """The LambdaRank re-ranker served (its precomputed lists for known users, online for the rest)."""
    return Engine.load(package_dir, device="cpu", model="rerank")


def fresh(engine: Engine, **changes) -> Engine:
    """A copy of ``engine`` with its own explanation cache (and ``changes``)."""
    return replace(engine, explanations=ExplanationCache(), **changes)


def dense(ref: Reference, answer) -> list[int]:
    return [ref.index[item.item_id] for item in answer.items]


def assert_is(answer, ref: Reference, expected: list[tuple[int, float]]) -> None:
    """``answer`` lists exactly ``expected`` (dense item, score), in order, with titles and no explanations."""
    assert [i.item_id for i in answer.items] == [ref.item_ids[i] for i, _ in expected]
    assert [i.title for i in answer.items] == [ref.titles[i] for i, _ in expected]
    np.testing.assert_allclose([i.score for i in answer.items], [s for _, s in expected], rtol=1e-5, atol=1e-6)


def popular(ref: Reference, k: int, exclude=()) -> list[tuple[int, float]]:
    counts = np.bincount(ref.history_items, minlength=len(ref.item_ids)).astype(np.float64)
    return ref.top(counts, k, exclude)


# ---- engine.py: /recommend -------------------------------------------------------------------------------------


def test_known_user_gets_the_served_models_top_k_without_their_history(engine, ref):
    """Catches: the wrong user's or model's scores, history not left out, k not honoured, user_id not echoed."""
    for user_id in ref.user_ids[::7]:
        u = ref.user(user_id)
        answer = engine.recommend(user_id, K)
        assert_is(answer, ref, ref.top(ref.scores("content", u), K, exclude=ref.history(u)))
        assert answer.model == "content" and answer.fallback is None and answer.user_id == user_id
        assert answer.unknown_item_ids == [] and answer.unknown_item_count == 0 and answer.unexplained == 0
        assert all(i.explanation is None for i in answer.items)
        # a string id finds the same user (ids arrive as strings over HTTP)
        assert [i.item_id for i in engine.recommend(str(user_id), K).items] == [i.item_id for i in answer.items]


def test_exclude_seen_false_keeps_the_history(engine, ref):
    """Catches: exclude_seen dropped or inverted on the way to the model."""
    changed = 0
    for user_id in ref.user_ids[::5]:
        u = ref.user(user_id)
        answer = engine.recommend(user_id, K, exclude_seen=False)
        assert_is(answer, ref, ref.top(ref.scores("content", u), K))
        changed += set(dense(ref, answer)) & set(ref.history(u).tolist()) != set()
    assert changed


def test_a_list_longer_than_the_unseen_items_ends_where_they_end(engine, ref):
    """k above the number of unseen items: every unseen item once (item 0 too), no -1 padding, no -inf score.
    Catches: the -1/-inf filter of _rows dropped, inverted or off by one."""
    user_id = next(u for u in ref.user_ids if 0 not in ref.history(ref.user(u)))
    u = ref.user(user_id)
    answer = engine.recommend(user_id, 100)
    unseen = sorted(set(range(len(ref.item_ids))) - set(ref.history(u).tolist()))
    assert sorted(dense(ref, answer)) == unseen
    assert_is(answer, ref, ref.top(ref.scores("content", u), 100, exclude=ref.history(u)))
    assert all(np.isfinite(i.score) for i in answer.items)


def test_k_is_checked_with_its_message(engine, ref):
    """Catches: the bounds 1..MAX_K moved or the message changed."""
    for k in (0, -1, 101):
        with pytest.raises(BadRequestError) as error:
            engine.recommend(ref.user_ids[0], k)
        assert str(error.value) == f"k must be between 1 and 100, got {k}"
    assert len(engine.recommend(ref.user_ids[0], 1).items) == 1
    assert len(engine.recommend("nobody", 100).items) == len(ref.item_ids)
    assert len(engine.recommend("nobody", "3").items) == 3
    for call in (
        lambda: engine.recommend_text("x", 0),
        lambda: engine.recommend_history([], 101),
        lambda: engine.similar_items(ref.item_ids[0], 0),
    ):
        with pytest.raises(BadRequestError, match="k must be between 1 and 100"):
            call()


def test_unknown_user_gets_the_popular_list(engine, ref):
    """Catches: the popularity order (counts, ties to the lower index), its scores, the fallback fields."""
    counts = np.bincount(ref.history_items, minlength=len(ref.item_ids))
    assert len(set(counts.tolist())) < len(counts), "the check needs tied counts"
    answer = engine.recommend("nobody", 12)
    assert_is(answer, ref, popular(ref, 12))
    assert answer.model == "popularity" and answer.fallback == "popular" and answer.user_id == "nobody"
    assert answer.unexplained == 0 and all(i.explanation is None for i in answer.items)


# ---- explanations in /recommend and /explain -------------------------------------------------------------------


class Recording:
    """An explainer plugin that answers with the ids it was asked about and counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def explain(self, user_id, item_id, *, evidence):
        self.calls.append((user_id, item_id, evidence["item_id"]))
        if self.fail:
            raise RuntimeError("no model")
        return f"{user_id} likes {item_id}"


def test_explain_true_explains_each_item_and_changes_nothing_else(engine, ref):
    """Catches: explanations of the wrong user or item, explain ignored, the list changed by explaining."""
    user_id = ref.user_ids[3]
    plain_answer = engine.recommend(user_id, K)
    explainer = Recording()
    answer = fresh(engine, explainer=explainer).recommend(user_id, K, explain=True)
    assert [i.item_id for i in answer.items] == [i.item_id for i in plain_answer.items]
    assert [i.score for i in answer.items] == [i.score for i in plain_answer.items]
    assert [i.explanation for i in answer.items] == [f"{user_id} likes {i.item_id}" for i in answer.items]
    assert explainer.calls == [(user_id, i.item_id, i.item_id) for i in answer.items]
    assert answer.unexplained == 0


def test_explanations_are_bounded_by_count_and_time(engine, ref):
    """Catches: max_explained or the time budget ignored, unexplained miscounted, unknown users explained."""
    user_id = ref.user_ids[4]
    answer = fresh(engine, explainer=Recording(), max_explained=2).recommend(user_id, K, explain=True)
    assert [i.explanation is not None for i in answer.items] == [True, True, False, False, False]
    assert answer.unexplained == 3
    late = fresh(engine, explainer=Recording(), explain_budget_s=0.0).recommend(user_id, K, explain=True)
    assert all(i.explanation is None for i in late.items) and late.unexplained == K
    explainer = Recording()
    ample = fresh(engine, explainer=explainer, explain_budget_s=60.0).recommend(user_id, K, explain=True)
    assert ample.unexplained == 0 and len(explainer.calls) == K
    unknown = fresh(engine, explainer=Recording()).recommend("nobody", K, explain=True)
    assert unknown.unexplained == 0 and all(i.explanation is None for i in unknown.items)


def test_explain_answers_for_its_user_and_item_with_grounded_evidence(engine, ref):
    """Catches: /explain swapping or misreading ids, evidence from the wrong history or item."""
    for user_id, item in [(ref.user_ids[0], 2), (ref.user_ids[9], 17)]:
        u = ref.user(user_id)
        result = fresh(engine).explain(user_id, ref.item_ids[item])
        assert result.user_id == user_id and result.item_id == ref.item_ids[item]
        assert result.title == ref.titles[item]
        assert result.evidence["item_id"] == ref.item_ids[item]
        assert [h["item_id"] for h in result.evidence["history"]] == ref.evidence_history(u, item)
        assert result.explanation.startswith(f'"{ref.titles[item]}" is recommended')


def test_explain_rejects_unknown_ids_by_name(engine, ref):
    """Catches: the unknown-user / unknown-item checks dropped or their messages changed."""
    with pytest.raises(NotFoundError) as error:
        engine.explain("nobody", ref.item_ids[0])
    assert str(error.value) == "unknown user_id 'nobody'"
    with pytest.raises(NotFoundError) as error:
        engine.explain(ref.user_ids[0], "nothing")
    assert str(error.value) == "unknown item_id 'nothing'"


def test_an_explanation_is_computed_once_per_pair(engine, ref):
    """Catches: the explanation cache not read, not written, or keyed by the wrong pair."""
    explainer = Recording()
    served = fresh(engine, explainer=explainer)
    a, b = ref.user_ids[1], ref.user_ids[2]
    first = served.explain(a, ref.item_ids[3])
    again = served.explain(a, ref.item_ids[3])
    assert first.explanation == again.explanation == f"{a} likes {ref.item_ids[3]}"
    assert len(explainer.calls) == 1
    other = served.explain(b, ref.item_ids[3])
    assert other.explanation == f"{b} likes {ref.item_ids[3]}" and len(explainer.calls) == 2
    assert served.explain(a, ref.item_ids[4]).explanation == f"{a} likes {ref.item_ids[4]}"
    assert len(explainer.calls) == 3 and len(served.explanations) == 3


def test_a_failing_explainer_is_logged_by_name_and_the_template_answers(engine, ref, caplog):
    """Catches: the explainer's name not passed to explain_text (the log would name another)."""
    served = fresh(engine, explainer=Recording(fail=True), explainer_name="flaky")
    with caplog.at_level(logging.WARNING, logger="recforge"):
        result = served.explain(ref.user_ids[0], ref.item_ids[5])
    assert result.explanation.startswith(f'"{ref.titles[5]}" is recommended')
    assert "explainer flaky failed: no model" in caplog.text


def test_evidence_carries_the_users_profile_keywords(engine, ref):
    """Catches: the profile keywords read for the wrong user (or not at all)."""
    from recforge.explain import profile_keywords

    assert engine.profiles is not None and engine.profiles.keywords
    user_id = ref.user_ids[6]
    found = engine.evidence(ref.user(user_id), 1)
    expected = [str(w) for w in engine.profiles.keywords[ref.user(user_id)]][: len(found["user_keywords"])]
    assert found["user_keywords"] == expected and expected
    assert found["user_keywords"] == profile_keywords(engine.profiles, ref.user(user_id), user_id)


# ---- free text, sessions, similar items ------------------------------------------------------------------------


def test_text_goes_to_the_text_model(engine, ref):
    """Catches: the text path not asking the content model, k ignored, the model name wrong."""
    model = engine.models["content"]
    for text in ("drama", "space adventure"):
        answer = engine.recommend_text(text, K)
        assert_is(answer, ref, ref.top(ref._content(model.embed_text(text)), K))
        assert answer.model == "content" and answer.fallback is None and answer.user_id is None


def test_empty_text_is_refused(engine):
    """Catches: blank text scored (a zero vector) instead of refused, or the message changed."""
    for text in ("", "   \n"):
        with pytest.raises(BadRequestError) as error:
            engine.recommend_text(text, K)
        assert str(error.value) == "text must not be empty"


def test_text_without_a_text_model_uses_the_encoder_and_the_item_embeddings(engine, ref):
    """Catches: the encoder path scoring the wrong vectors, named wrongly, or a zero vector not falling back."""
    encoder = engine.models["content"].encoder
    served = fresh(engine, text_model=None, text_encoder=encoder)
    text = ref.titles[7]
    vector = np.asarray(encoder.encode([text]), dtype=np.float32)[0]
    assert np.any(vector)
    answer = served.recommend_text(text, K)
    assert_is(answer, ref, ref.top(ref.evidence_vectors.astype(np.float32) @ vector, K))
    assert answer.model == "text:tfidf" and answer.fallback is None
    nothing = served.recommend_text("zzzzqqq", K)  # no known word: a zero vector
    assert_is(nothing, ref, popular(ref, K))
    assert nothing.model == "popularity" and nothing.fallback == "popular"
    for bare in (
        fresh(engine, text_model=None),
        fresh(engine, text_model=None, text_encoder=encoder, item_vectors=None),
    ):
        answer = bare.recommend_text(text, K)
        assert answer.model == "popularity" and answer.fallback == "popular"
        assert_is(answer, ref, popular(ref, K))


def test_encode_texts_uses_the_served_encoder(engine):
    """Catches: the content model's encoder not found, the wrong dtype, the message of a package without one."""
    encoder = engine.models["content"].encoder
    texts = ["space adventure", "drama"]
    expected = np.asarray(encoder.encode(texts), dtype=np.float32)
    for served in (engine, fresh(engine, text_model=None, text_encoder=encoder)):
        got = served.encode_texts(texts)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(BadRequestError) as error:
        fresh(engine, text_model=None).encode_texts(texts)
    assert str(error.value) == "this package has no text encoder (add one to encode.encoders and a content model)"


def test_history_folds_in_the_known_items_and_lists_the_unknown(engine, ref):
    """Catches: the session order, unknown ids not listed or miscounted, known items not excluded."""
    session = [ref.item_ids[4], "missing", ref.item_ids[9], ref.item_ids[1]]
    answer = engine.recommend_history(session, K)
    known = [4, 9, 1]
    assert_is(answer, ref, ref.top(ref.session_scores("content", known), K, exclude=known))
    assert answer.model == "content" and answer.fallback is None
    assert answer.unknown_item_ids == ["missing"] and answer.unknown_item_count == 1


def test_unknown_ids_are_echoed_at_most_ten(engine, ref):
    """Catches: every unknown id echoed (MAX_ECHOED_IDS ignored) or the count taken after the cut."""
    unknown = [f"x{n}" for n in range(13)]
    answer = engine.recommend_history(unknown, K)
    assert answer.unknown_item_ids == unknown[:10] and answer.unknown_item_count == 13
    assert_is(answer, ref, popular(ref, K))
    assert answer.model == "popularity" and answer.fallback == "popular"


def test_history_without_a_fold_in_model_is_the_popular_list_without_it(engine, ref):
    """Catches: the session's items left in the popular fallback, or the fallback not taken."""
    first, second = popular(ref, 2)
    session = [ref.item_ids[first[0]], ref.item_ids[second[0]], "gone"]
    answer = fresh(engine, fold_in_model=None).recommend_history(session, K)
    assert_is(answer, ref, popular(ref, K, exclude=[first[0], second[0]]))
    assert answer.model == "popularity" and answer.fallback == "popular" and answer.unknown_item_ids == ["gone"]


def test_similar_items_from_the_similar_items_model(engine, ref):
    """Catches: the wrong item's neighbours, the item itself listed, the model name."""
    for item in (0, 11):
        answer = engine.similar_items(ref.item_ids[item], K)
        scores = (ref.item_vectors @ ref.item_vectors[item]).astype(np.float64)
        assert_is(answer, ref, ref.top(scores, K, exclude=[item]))
        assert answer.model == "content" and answer.fallback is None


def test_similar_items_from_the_embeddings_then_popularity(engine, ref):
    """Catches: the embeddings path scoring or naming wrongly, the item itself kept in any fallback."""
    item = 6
    by_vectors = fresh(engine, similar_model=None).similar_items(ref.item_ids[item], K)
    vectors = ref.evidence_vectors.astype(np.float32)
    assert_is(by_vectors, ref, ref.top((vectors @ vectors[item]).astype(np.float64), K, exclude=[item]))
    assert by_vectors.model == "embeddings:tfidf" and by_vectors.fallback is None
    top_item = popular(ref, 1)[0][0]
    bare = fresh(engine, similar_model=None, item_vectors=None)
    answer = bare.similar_items(ref.item_ids[top_item], K)
    assert_is(answer, ref, popular(ref, K, exclude=[top_item]))
    assert answer.model == "popularity" and answer.fallback == "popular"


def test_similar_items_of_an_unknown_item(engine):
    """Catches: an unknown item answered (index -1 is the last item) instead of a 404 naming it."""
    with pytest.raises(NotFoundError) as error:
        engine.similar_items("nothing", K)
    assert str(error.value) == "unknown item_id 'nothing'"


# ---- feedback ----------------------------------------------------------------------------------------------------


def test_no_feedback_store_refuses_feedback(engine, ref):
    """Catches: /feedback without a store failing with an AttributeError (a 500) instead of the 400 message."""
    with pytest.raises(BadRequestError) as error:
        engine.record_feedback([{"user_id": ref.user_ids[0], "item_id": ref.item_ids[0], "event": "purchase"}])
    assert str(error.value) == "this service has no feedback store (feedback.enabled: false)"


def test_feedback_leaves_bought_and_disliked_items_out_of_the_next_list_at_once(package_dir, ref, tmp_path):
    """A purchase and a dislike of the user's top items: the next list is the same ranking without them, still k
    long, even with a long staleness (this worker forgets its cached entry). exclude_seen=False and other users
    are untouched. Catches: feedback not read, not forgotten after a write, asked for too few items, applied to
    the wrong user or with exclude_seen=False, the ack miscounted."""
    served = Engine.load(
        package_dir, device="cpu", model="content", feedback_url=str(tmp_path / "fb.sqlite3"), feedback_staleness_s=60
    )
    user_id, other = ref.user_ids[10], ref.user_ids[11]
    u = ref.user(user_id)
    ranking = ref.top(ref.scores("content", u), K + 2, exclude=ref.history(u))
    assert_is(served.recommend(user_id, K), ref, ranking[:K])  # cached for 60 s now
    unfiltered = ref.top(ref.scores("content", u), K)
    assert unfiltered[0][0] in ref.history(u)
    bought, disliked = ref.item_ids[ranking[0][0]], ref.item_ids[ranking[2][0]]
    events = [
        {"user_id": user_id, "item_id": bought, "event": "purchase", "event_id": "e1"},
        {"user_id": user_id, "item_id": disliked, "event": "dislike", "event_id": "e2"},
        {"user_id": user_id, "item_id": "new-item", "event": "purchase"},
        # rated: the unfiltered list's best item (a history item: out of the filtered list anyway)
        {"user_id": user_id, "item_id": ref.item_ids[unfiltered[0][0]], "event": "rating", "rating": 4.0},
    ]
    ack = served.record_feedback(events)
    assert (ack.received, ack.stored, ack.duplicates) == (4, 4, 0)
    again = served.record_feedback(events[:1])
    assert (again.received, again.stored, again.duplicates) == (1, 0, 1)
    answer = served.recommend(user_id, K)
    assert_is(answer, ref, [ranking[1]] + ranking[3 : K + 2])
    assert answer.model == "content"
    keep = served.recommend(user_id, K, exclude_seen=False)
    assert_is(keep, ref, unfiltered)
    o = ref.user(other)
    assert_is(served.recommend(other, K), ref, ref.top(ref.scores("content", o), K, exclude=ref.history(o)))
    meta = served.metadata()["feedback"]
    assert meta == {"store": repr(served.feedback.store), "staleness_s": 60.0, "worker": os.getpid()}


def test_feedback_foldin_adds_the_liked_items_to_the_history(package_dir, ref, tmp_path):
    """feedback.foldin: the viewed item joins the trained history (at its end) and the list is the fold-in's.
    Catches: the interests not folded in, the wrong history, the fold-in model not named."""
    served = Engine.load(
        package_dir,
        device="cpu",
        model="content",
        feedback_url=str(tmp_path / "fb.sqlite3"),
        feedback_staleness_s=0,
        feedback_foldin=True,
    )
    assert served.feedback.interests is True and served.feedback.staleness_s == 0
    user_id = ref.user_ids[12]
    u = ref.user(user_id)
    viewed = next(i for i in range(len(ref.item_ids)) if i not in ref.history(u))
    served.record_feedback([{"user_id": user_id, "item_id": ref.item_ids[viewed], "event": "view"}])
    history = [*ref.history(u).tolist(), viewed]
    answer = served.recommend(user_id, K)
    assert_is(answer, ref, ref.top(ref.session_scores("content", history), K, exclude=history))
    assert answer.model == "content" and answer.user_id == user_id
    # without a fold-in model the same feedback leaves the trained list as it is
    plain_list = fresh(served, fold_in_model=None).recommend(user_id, K)
    assert_is(plain_list, ref, ref.top(ref.scores("content", u), K, exclude=ref.history(u)))


# ---- the re-ranker -----------------------------------------------------------------------------------------------


def rerank_online(engine: Engine, user: int, k: int, exclude_seen: bool):
    """The re-ranker's online list, from the candidate models called directly."""
    reranker = engine.reranker
    lists = {
        name: engine.models[name].recommend(np.array([user]), k=reranker.per_model, exclude_seen=exclude_seen)
        for name in reranker.models
    }
    return reranker.rank(user, lists, k)


def test_rerank_known_users_read_the_packaged_lists(rerank_engine, ref, package_dir):
    """Catches: the stored lists not used, read for the wrong user, or cut at the wrong k."""
    with np.load(package_dir / "rerank_lists.npz") as stored:
        indptr, items, scores, length = stored["indptr"], stored["items"], stored["scores"], int(stored["length"])
    assert length == 10
    for user_id in ref.user_ids[::6]:
        u = ref.user(user_id)
        lo, hi = indptr[u], indptr[u + 1]
        expected = list(zip(items[lo:hi].tolist(), scores[lo:hi].tolist(), strict=True))
        answer = rerank_engine.recommend(user_id, K)
        assert_is(answer, ref, expected[:K])
        assert answer.model == "rerank" and answer.user_id == user_id
        assert_is(rerank_engine.recommend(user_id, length), ref, expected[:length])


def test_rerank_online_paths(rerank_engine, ref):
    """exclude_seen=False and k above the stored length go online: the candidate models' lists re-ranked.
    Catches: the online path asking the models with the wrong user, length or exclude_seen."""
    for user_id in ref.user_ids[1::9]:
        u = ref.user(user_id)
        items, scores = rerank_online(rerank_engine, u, K, exclude_seen=False)
        answer = rerank_engine.recommend(user_id, K, exclude_seen=False)
        assert_is(answer, ref, list(zip(items.tolist(), scores.tolist(), strict=True)))
        assert answer.model == "rerank"
        items, scores = rerank_online(rerank_engine, u, 12, exclude_seen=True)
        assert not set(items.tolist()) & set(ref.history(u).tolist())
        assert_is(rerank_engine.recommend(user_id, 12), ref, list(zip(items.tolist(), scores.tolist(), strict=True)))


def test_rerank_sessions_are_reranked(rerank_engine, ref):
    """Catches: a session not sent through the second stage, or its candidates asked with the wrong length."""
    assert rerank_engine.reranks_sessions
    known = np.array([3, 8, 5])
    reranker = rerank_engine.reranker
    lists = {
        name: rerank_engine.models[name].recommend_history(known, k=reranker.per_model, exclude_seen=True)
        for name in reranker.models
    }
    items, scores = reranker.rank_history(known, lists, K)
    answer = rerank_engine.recommend_history([ref.item_ids[i] for i in known], K)
    assert_is(answer, ref, list(zip(items.tolist(), scores.tolist(), strict=True)))
    assert answer.model == "rerank"


def test_reranks_sessions_needs_all_three(rerank_engine, engine):
    """Catches: sessions sent to the re-ranker when it is not served or no model folds in (and / or swapped)."""
    assert rerank_engine.reranks_sessions is True
    assert fresh(rerank_engine, fold_in_model=None).reranks_sessions is False
    assert fresh(rerank_engine, reranker=None).reranks_sessions is False
    assert engine.reranks_sessions is False


def test_rerank_feedback_leaves_the_bought_items_out_of_the_stored_list(package_dir, ref, tmp_path):
    """Catches: the precomputed list asked for k only (then cut below k by the exclusions)."""
    served = Engine.load(
        package_dir, device="cpu", model="rerank", feedback_url=str(tmp_path / "fb.sqlite3"), feedback_staleness_s=0
    )
    user_id = ref.user_ids[14]
    first = served.recommend(user_id, K)
    bought = first.items[1].item_id
    served.record_feedback([{"user_id": user_id, "item_id": bought, "event": "purchase"}])
    answer = served.recommend(user_id, K)
    longer = served.recommend(user_id, K + 1, exclude_seen=True)
    assert [i.item_id for i in answer.items] == [i.item_id for i in longer.items if i.item_id != bought][:K]
    assert len(answer.items) == K and bought not in [i.item_id for i in answer.items]


# ---- states, metadata ------------------------------------------------------------------------------------------


class StateModel:
    """A model with the UserStates ability: user u's state is a row of ``states``; scores = state @ items."""

    def __init__(self, n_users: int = 9, n_items: int = 30, agree: bool = True, fail: bool = False) -> None:
        rng = np.random.default_rng(0)
        self.states = rng.normal(size=(n_users, 4))
        self.items = rng.normal(size=(n_items, 4))
        self.agree, self.fail = agree, fail
        self.calls: list[tuple] = []

    def _top(self, states, k):
        scores = states @ self.items.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)

    def user_states(self):
        if self.fail:
            raise RuntimeError("no states")
        return self.states

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        self.calls.append(("recommend", user_ids.tolist(), k, exclude_seen))
        return self._top(self.states[user_ids], k)

    def recommend_states(self, user_ids, states, *, k, exclude_seen=True):
        self.calls.append(("states", user_ids.tolist(), k, exclude_seen))
        items, scores = self._top(np.asarray(states, dtype=np.float64), k)
        return (items[:, ::-1], scores) if not self.agree else (items, scores)

    def fit(self, *args, **kwargs):
        return self

    def save(self, directory):
        pass

    @classmethod
    def load(cls, directory, *, context):
        return cls()


def test_top_scores_from_the_cached_states(engine):
    """Catches: the cached states of another user, or the model's own recommend() used despite cached states."""
    model = StateModel()
    states = cached_user_states(model, "seq")
    served = fresh(engine, models={**engine.models, "seq": model}, states={"seq": states})
    model.calls.clear()
    items, _ = served.top("seq", 4, 3, False)
    assert model.calls == [("states", [4], 3, False)]
    np.testing.assert_array_equal(items, model._top(model.states[[4]], 3)[0])
    plain_served = fresh(engine, models={**engine.models, "seq": model}, states={})
    model.calls.clear()
    plain_served.top("seq", 2, 6, True)
    assert model.calls == [("recommend", [2], 6, True)]


def test_metadata_describes_the_served_package(engine, package_dir):
    """Catches: any field of /metadata naming the wrong path, model, hash or metrics."""
    manifest = json.loads((package_dir / "manifest.json").read_text())
    metrics = json.loads((package_dir / "metrics.json").read_text())
    meta = engine.metadata()
    assert meta["model_tag"] == meta["model_version"] == manifest["tag"]
    for key in ("data_hash", "params_hash", "created", "models", "counts", "example_user_id"):
        assert meta[key] == manifest[key], key
    assert meta["model"] == "content" and meta["model_reason"] == "serve.model: content"
    assert meta["text_path"] == "content" and meta["history_path"] == "content"
    assert meta["similar_items_path"] == "content" and meta["explainer"] == "builtin"
    assert meta["rerank_packaged"] is True and meta["rerank_served"] is False and meta["rerank_precomputed"] is False
    assert meta["rerank_note"] == "not asked for (serve.model: content)"
    assert meta["device"] == "cpu" and meta["cached_user_states"] is False and meta["feedback"] is None
    assert meta["metrics"] == {
        name: {key: value for key, value in m.items() if key.endswith("@10")} for name, m in metrics.items()
    }
    assert set(meta["metrics"]["content"]) == {
        f"{m}@10" for m in ("ndcg", "recall", "mrr", "map", "precision", "coverage")
    }


def test_metadata_paths_follow_the_engine(engine, rerank_engine, package_dir):
    """Catches: the fallbacks of text_path, history_path, similar_items_path and the tag of an older package."""
    encoder = engine.models["content"].encoder
    meta = fresh(engine, text_model=None, text_encoder=encoder, fold_in_model=None, similar_model=None).metadata()
    assert (meta["text_path"], meta["history_path"], meta["similar_items_path"]) == (
        "text:tfidf",
        "popularity",
        "embeddings",
    )
    meta = fresh(engine, text_model=None, fold_in_model="itemknn", similar_model=None, item_vectors=None).metadata()
    assert (meta["text_path"], meta["history_path"], meta["similar_items_path"]) == (
        "popularity",
        "itemknn",
        "popularity",
    )
    older = {key: value for key, value in engine.manifest.items() if key != "tag"}
    meta = fresh(engine, manifest={**older, "rerank": False}).metadata()
    assert meta["model_tag"] == meta["model_version"] == f"{older['name']}:{older['version']}"
    assert meta["rerank_packaged"] is False
    meta = rerank_engine.metadata()
    assert meta["model"] == "rerank" and meta["rerank_served"] is True and meta["rerank_precomputed"] is True
    assert meta["history_path"] == "rerank" and meta["rerank_note"] is None
    assert (
        fresh(rerank_engine, reranker=replace(rerank_engine.reranker, lists=None)).metadata()["rerank_precomputed"]
        is False
    )
    states = fresh(engine, states={"content": np.zeros((1, 1))})
    assert states.metadata()["cached_user_states"] is True and states.user_states is not None


# ---- engine_load.py ----------------------------------------------------------------------------------------------


def test_a_loaded_engine_caches_what_requests_reuse(ref, package_dir):
    """Catches: popularity, its order, titles, embeddings, the evidence table or the history read wrongly.
    (Loaded here, not by a fixture: mutmut runs only the tests during which the mutated function ran.)"""
    engine = Engine.load(package_dir, device="cpu", model="content")
    counts = np.bincount(ref.history_items, minlength=len(ref.item_ids)).astype(np.float64)
    assert engine.popularity.dtype == np.float64
    np.testing.assert_array_equal(engine.popularity, counts)
    np.testing.assert_array_equal(engine.popular_order, np.lexsort((np.arange(len(counts)), -counts)))
    assert engine.titles == ref.titles
    vectors = np.load(package_dir / "embeddings" / "tfidf.npy")
    assert engine.item_vectors.dtype == np.float32 and engine.item_vectors.flags.c_contiguous
    np.testing.assert_array_equal(engine.item_vectors, vectors.astype(np.float32))
    np.testing.assert_array_equal(engine.item_table.vectors, vectors)
    assert list(engine.item_table.titles) == ref.titles
    np.testing.assert_array_equal(engine.history_indptr, ref.indptr)
    np.testing.assert_array_equal(engine.history_items, ref.history_items)
    for user in (0, 7, len(ref.user_ids) - 1):
        np.testing.assert_array_equal(engine._history(user), ref.history(user))
    assert engine.profiles is not None and [str(u) for u in engine.profiles.user_ids] == [str(u) for u in ref.user_ids]
    assert (engine.device, engine.directory, engine.primary) == ("cpu", package_dir, "content")
    assert engine.max_explained == 10 and engine.explain_budget_s == 5.0 and engine.feedback is None
    assert engine.manifest == json.loads((package_dir / "manifest.json").read_text())
    assert engine.metrics == json.loads((package_dir / "metrics.json").read_text())
    assert engine.params.evaluate.k == 10 and set(engine.models) == {"popularity", "itemknn", "content"}
    assert engine.explainer is None and engine.explainer_name == "builtin"
    assert engine.model_reason == "serve.model: content" and engine.reranker is None
    assert engine.rerank_note == "not asked for (serve.model: content)"


def test_each_path_gets_its_model_by_ability_served_model_first(package_dir):
    """Catches: the served model not preferred, a model without the ability chosen, the text encoder loaded
    although a text model answers."""
    content = Engine.load(package_dir, device="cpu", model="content")
    assert (content.text_model, content.fold_in_model, content.similar_model) == ("content", "content", "content")
    assert content.text_encoder is None
    knn = Engine.load(package_dir, device="cpu", model="itemknn")
    assert (knn.primary, knn.text_model, knn.fold_in_model, knn.similar_model) == (
        "itemknn",
        "content",
        "itemknn",
        "itemknn",
    )
    pop = Engine.load(package_dir, device="cpu", model="popularity")
    assert (pop.text_model, pop.fold_in_model, pop.similar_model) == ("content", "popularity", "itemknn")
    assert pop.states == {} and pop.model_reason == "serve.model: popularity"


def test_auto_serves_the_best_validation_ndcg(package_dir):
    """Catches: the asked model not passed on (params.serve.model: auto) or a fixed model served."""
    metrics = json.loads((package_dir / "metrics.json").read_text())
    best = max(metrics, key=lambda name: (metrics[name]["val"]["ndcg@10"], name == "rerank"))
    loaded = Engine.load(package_dir, device="cpu")
    assert loaded.primary == best
    assert loaded.model_reason.startswith("auto: the best validation ndcg@10")


def without(package_dir: Path, target: Path, *names: str) -> Path:
    """A copy of the package without the models ``names`` (manifest and checksums updated)."""
    shutil.copytree(package_dir, target)
    manifest = json.loads((target / "manifest.json").read_text())
    for name in names:
        shutil.rmtree(target / "models" / name)
        del manifest["models"][name]
        manifest["checksums"] = {k: v for k, v in manifest["checksums"].items() if not k.startswith(f"models/{name}/")}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_without_a_text_model_the_packaged_encoder_answers_text(package_dir, ref, tmp_path):
    """Catches: the packaged encoder not loaded when no model takes text, or loaded from the wrong encoder."""
    copy = without(package_dir, tmp_path / "copy", "content")
    loaded = Engine.load(copy, device="cpu", model="popularity")
    assert loaded.text_model is None and loaded.text_encoder is not None
    assert (loaded.fold_in_model, loaded.similar_model) == ("popularity", "itemknn")
    text = ref.titles[3]
    vector = np.asarray(loaded.text_encoder.encode([text]), dtype=np.float32)[0]
    assert np.any(vector)
    answer = loaded.recommend_text(text, K)
    assert answer.model == "text:tfidf"
    assert_is(answer, ref, ref.top(ref.evidence_vectors.astype(np.float32) @ vector, K))


def test_a_package_without_models_is_refused(package_dir, tmp_path):
    """Catches: an empty package loaded (every request would fail later) or the message changed."""
    copy = without(package_dir, tmp_path / "copy", "popularity", "itemknn", "content")
    with pytest.raises(RecforgeError) as error:
        Engine.load(copy, device="cpu", model="popularity")
    assert str(error.value) == f"{copy}: the package holds no models"


def wrong_checksum_copy(directory, where: Path) -> Path:
    """A copy of the package whose manifest records a wrong sha256 for items.parquet: its checksums fail."""
    copy = where / "copy"
    shutil.copytree(directory, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["checksums"]["items.parquet"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_verify_checks_the_checksums_unless_turned_off(package_dir, tmp_path):
    """Catches: verify not passed to Package.open (a tampered package would load silently, or never load)."""
    copy = wrong_checksum_copy(package_dir, tmp_path)
    with pytest.raises(RecforgeError, match="checksum"):
        Engine.load(copy, device="cpu", model="content")
    assert Engine.load(copy, device="cpu", model="content", verify=False).primary == "content"


def test_load_passes_the_request_bounds_and_logs_what_it_serves(package_dir, ref, caplog):
    """Catches: max_explained / explain_budget_s not passed on, the load line naming the wrong tag or model."""
    manifest = json.loads((package_dir / "manifest.json").read_text())
    with caplog.at_level(logging.INFO, logger="recforge.engine"):
        loaded = Engine.load(package_dir, device="cpu", model="itemknn", max_explained=3, explain_budget_s=7.5)
    assert f"loaded {manifest['tag']} (serving itemknn on cpu)" in caplog.messages
    assert loaded.max_explained == 3 and loaded.explain_budget_s == 7.5
    answer = loaded.recommend(ref.user_ids[0], K, explain=True)
    assert answer.unexplained == K - 3


def test_feedback_url_opens_the_store_with_its_settings(package_dir, tmp_path):
    """Catches: the store opened at another URL, or the staleness / fold-in settings not passed on."""
    loaded = Engine.load(package_dir, device="cpu", model="content", feedback_url=str(tmp_path / "f.sqlite3"))
    assert loaded.feedback.staleness_s == 1.0 and loaded.feedback.interests is False
    assert str(tmp_path / "f.sqlite3") in repr(loaded.feedback.store)
    later = Engine.load(
        package_dir, device="cpu", model="content", feedback_url=str(tmp_path / "g.sqlite3"), feedback_staleness_s=2.5
    )
    assert later.feedback.staleness_s == 2.5


def test_cached_user_states_are_checked_on_spread_users(caplog):
    """Catches: states not float32/contiguous, the probe users not spread over the range, a disagreeing or
    failing model trusted, the log lines changed."""
    model = StateModel(n_users=9)
    with caplog.at_level(logging.INFO, logger="recforge.engine"):
        states = cached_user_states(model, "seq")
    assert states.dtype == np.float32 and states.flags.c_contiguous
    np.testing.assert_array_equal(states, model.states.astype(np.float32))
    probed = [c[1][0] for c in model.calls if c[0] == "recommend"]
    assert probed == [0, 2, 4, 6, 8]
    assert [c[1][0] for c in model.calls if c[0] == "states"] == probed
    assert all(c[2] == 10 for c in model.calls)
    assert "seq: cached 9 user states" in caplog.messages
    small = StateModel(n_users=2)
    assert cached_user_states(small, "two") is not None
    assert [c[1][0] for c in small.calls if c[0] == "recommend"] == [0, 1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recforge.engine"):
        assert cached_user_states(StateModel(agree=False), "bad") is None
        assert cached_user_states(StateModel(fail=True), "broken") is None
    assert "bad: cached user states disagree with recommend(); scoring online" in caplog.messages
    assert "broken: no cached user states (no states)" in caplog.messages
    assert cached_user_states(object(), "plain") is None


def test_prepare_caches_the_served_models_states_and_warms_up(engine, package_dir):
    """Catches: the states cached for no model or the wrong one, the served model not warmed up."""
    model = StateModel()
    served = fresh(engine, models={**engine.models, "seq": model}, primary="seq", states={})
    _prepare(served, Package.open(package_dir, verify=False))
    assert set(served.states) == {"seq"} and served.user_states is not None
    assert ("states", [0], 10, True) in model.calls  # the warm-up's request


class Failing:
    def recommend(self, *args, **kwargs):
        raise RuntimeError("broken top")

    def recommend_history(self, *args, **kwargs):
        raise RuntimeError("broken history")


def test_warm_up_runs_every_path_and_logs_failures(engine, rerank_engine, caplog):
    """Catches: a path not warmed up, a failure raised instead of logged, the log lines changed."""
    model = StateModel()
    served = fresh(engine, models={**engine.models, "seq": model, "bad": Failing()}, fold_in_model="bad")
    with caplog.at_level(logging.WARNING, logger="recforge.engine"):
        warm_up(served, ["seq"])
    assert model.calls == [("recommend", [0], 10, True)]
    assert "warm-up of bad failed: broken history" in caplog.messages
    caplog.clear()
    broken = fresh(engine, models={**engine.models, "bad": Failing()}, fold_in_model=None, text_model="bad")
    with caplog.at_level(logging.WARNING, logger="recforge.engine"):
        warm_up(broken, ["bad"])
    assert "warm-up of bad failed: broken top" in caplog.messages
    assert "warm-up of the text path failed: 'Failing' object has no attribute 'recommend_text'" in caplog.messages
    caplog.clear()
    rerank = fresh(rerank_engine, models={**rerank_engine.models, "content": Failing()}, fold_in_model=None)
    with caplog.at_level(logging.WARNING, logger="recforge.engine"):
        warm_up(rerank, [])
    assert "warm-up of the re-ranker failed: broken top" in caplog.messages


def test_default_k_is_ten(engine, ref):
    """Catches: the default k of an endpoint changed."""
    assert len(engine.recommend(ref.user_ids[0]).items) == 10
    assert len(engine.recommend_text("drama").items) == 10
    assert len(engine.recommend_history([ref.item_ids[1]]).items) == 10
    assert len(engine.similar_items(ref.item_ids[1]).items) == 10


def test_explain_works_for_the_first_item(engine, ref):
    """Catches: dense item 0 taken for an unknown item (``index <= 0``)."""
    result = fresh(engine).explain(ref.user_ids[0], ref.item_ids[0])
    assert result.item_id == ref.item_ids[0] and result.title == ref.titles[0]


class Padded:
    """A model whose list holds an item it could not score (-inf) and -1 padding."""

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        return np.array([[2, 5, 0, -1]]), np.array([[0.5, -np.inf, 0.25, -np.inf]])


def test_items_without_a_finite_score_are_dropped(engine, ref):
    """Catches: the finite-score filter of _rows dropped (``i >= 0 or isfinite``)."""
    served = fresh(engine, models={**engine.models, "padded": Padded()}, primary="padded")
    answer = served.recommend(ref.user_ids[0], K)
    assert [(i.item_id, i.score) for i in answer.items] == [(ref.item_ids[2], 0.5), (ref.item_ids[0], 0.25)]
    assert answer.model == "padded"


def test_stored_rerank_lists_are_what_known_users_get(rerank_engine, ref):
    """The stored list is answered as stored (here: doubled scores, reversed order, unlike the online path).
    Catches: the precomputed lists never read (every known user re-ranked online)."""
    indptr, items, scores = rerank_engine.reranker.lists
    changed = (indptr, items.copy(), scores * 2)
    for u in range(len(indptr) - 1):
        lo, hi = indptr[u], indptr[u + 1]
        changed[1][lo:hi] = items[lo:hi][::-1]
    served = fresh(rerank_engine, reranker=replace(rerank_engine.reranker, lists=changed))
    user_id = ref.user_ids[5]
    u = ref.user(user_id)
    lo = indptr[u]
    expected = [(int(changed[1][lo + n]), float(changed[2][lo + n])) for n in range(K)]
    assert_is(served.recommend(user_id, K), ref, expected)


class ListEncoder:
    """An encoder answering plain Python lists (float64 once converted)."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def encode(self, texts):
        return np.asarray(self.encoder.encode(texts), dtype=np.float64).tolist()


def test_encoded_text_is_float32_whatever_the_encoder_returns(engine, ref):
    """Catches: the float32 conversion of an encoder's output dropped (float64 scores, /encode answering float64)."""
    encoder = ListEncoder(engine.models["content"].encoder)
    served = fresh(engine, text_model=None, text_encoder=encoder)
    got = served.encode_texts(["drama", "space"])
    assert got.dtype == np.float32
    text = ref.titles[7]
    vector = np.asarray(encoder.encode([text]), dtype=np.float32)
    scores = (vector @ served.item_vectors.T)[0]
    assert scores.dtype == np.float32
    answer = served.recommend_text(text, K)
    order = np.lexsort((np.arange(len(scores)), -scores))[:K]
    assert [i.score for i in answer.items] == [float(scores[i]) for i in order]


class FoldInProbe:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        self.calls.append((np.asarray(item_ids).tolist(), k))
        return np.array([[1, 2]]), np.array([[0.5, 0.25]])


class WarmedEngine(Engine):
    """The engine, recording the requests the warm-up makes."""

    def recommend(self, user_id, k=10, *, exclude_seen=True, explain=False):
        self.asked.append(("recommend", user_id, k, exclude_seen))
        return super().recommend(user_id, k, exclude_seen=exclude_seen, explain=explain)

    def recommend_text(self, text, k=10):
        self.asked.append(("text", text, k))
        return super().recommend_text(text, k)


def warmed(engine: Engine, **changes) -> WarmedEngine:
    from dataclasses import fields

    values = {f.name: getattr(engine, f.name) for f in fields(engine)}
    values.update(explanations=ExplanationCache(), **changes)
    copy = WarmedEngine(**values)
    copy.asked = []
    return copy


def test_warm_up_asks_what_a_first_request_would(engine, rerank_engine, ref, caplog):
    """The warm-up makes one ordinary request per path and none fails. Catches: a warm-up call that fails
    (wrong arguments) and so warms nothing, the re-ranker or text path warmed when not served, or not warmed."""
    probe = FoldInProbe()
    served = warmed(engine, models={**engine.models, "probe": probe}, fold_in_model="probe")
    with caplog.at_level(logging.WARNING, logger="recforge.engine"):
        warm_up(served, ["content"])
    assert probe.calls == [([0], 10)]
    assert served.asked == [("text", "warm up", 10)]
    bare = warmed(engine, text_model=None, text_encoder=None, fold_in_model=None)
    warm_up(bare, ["content"])
    assert bare.asked == []
    encoded = warmed(engine, text_model=None, text_encoder=engine.models["content"].encoder, fold_in_model=None)
    warm_up(encoded, [])
    assert encoded.asked == [("text", "warm up", 10)]
    rerank = warmed(rerank_engine, fold_in_model=None, text_model=None)
    with caplog.at_level(logging.WARNING, logger="recforge.engine"):
        warm_up(rerank, [])
    first = ref.user_ids[0]
    assert rerank.asked == [("recommend", first, 10, True), ("recommend", first, 10, False)]
    assert type(rerank.asked[0][1]) is int  # a plain id, as a request carries it
    assert not [m for m in caplog.messages if "warm-up" in m]


def test_load_defaults_to_the_auto_device(package_dir):
    """Catches: the default device (auto: cuda where there is one, else cpu) changed."""
    from recforge.workspace import resolve_device

    loaded = Engine.load(package_dir, model="popularity")
    assert loaded.device == resolve_device("auto") and loaded.metadata()["device"] == loaded.device


def edited(package_dir: Path, target: Path, *, manifest=None, params=None) -> Path:
    """A copy of the package with manifest.json / params.json entries changed (loaded with verify=False)."""
    shutil.copytree(package_dir, target)
    for name, changes in (("manifest.json", manifest), ("params.json", params)):
        if changes:
            data = json.loads((target / name).read_text())
            for key, value in changes.items():
                section, _, field = key.rpartition(".")
                (data[section] if section else data)[field] = value
            (target / name).write_text(json.dumps(data))
    return target


def test_serve_model_of_the_package_params_is_served(package_dir, tmp_path):
    """Catches: params.serve.model ignored, or an empty serve.model not read as auto."""
    chosen = edited(package_dir, tmp_path / "knn", params={"serve.model": "itemknn"})
    assert Engine.load(chosen, device="cpu", verify=False).primary == "itemknn"
    unset = edited(package_dir, tmp_path / "none", params={"serve.model": None})
    assert Engine.load(unset, device="cpu", verify=False).model_reason.startswith("auto: ")


def test_the_load_line_names_an_older_package_by_name_and_version(package_dir, tmp_path, caplog):
    """Catches: the name:version fallback of a package without a tag."""
    older = edited(package_dir, tmp_path / "older", manifest={"tag": None})
    manifest = json.loads((older / "manifest.json").read_text())
    with caplog.at_level(logging.INFO, logger="recforge.engine"):
        Engine.load(older, device="cpu", model="content", verify=False)
    assert f"loaded {manifest['name']}:{manifest['version']} (serving content on cpu)" in caplog.messages


def test_an_item_without_events_is_in_the_popular_list(package_dir, ref, tmp_path):
    """The packaged history without any event of the last item: its popularity is 0, it still exists.
    Catches: popularity counted without minlength (the last items dropped from every popular list)."""
    copy = tmp_path / "copy"
    shutil.copytree(package_dir, copy)
    last = len(ref.item_ids) - 1
    with np.load(copy / "history.npz") as history:
        arrays = dict(history)
    keep = arrays["items"] != last
    users = np.repeat(np.arange(len(arrays["indptr"]) - 1), np.diff(arrays["indptr"]))[keep]
    arrays["indptr"] = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=len(arrays["indptr"]) - 1))])
    for key in ("items", "timestamps", "ratings"):
        arrays[key] = arrays[key][keep]
    np.savez(copy / "history.npz", **arrays)
    loaded = Engine.load(copy, device="cpu", model="content", verify=False)
    assert len(loaded.popularity) == len(ref.item_ids) and loaded.popularity[last] == 0
    answer = loaded.recommend("nobody", 100)
    assert len(answer.items) == len(ref.item_ids)
    assert (answer.items[-1].item_id, answer.items[-1].score) == (ref.item_ids[last], 0.0)


def test_models_are_loaded_with_the_packages_context(package_dir, ref, tmp_path):
    """A recommender plugin that keeps the FitContext it was loaded with.
    Catches: items, maps, embeddings, seed or device missing from what a packaged model loads with."""
    from recforge import registry

    from recforge_plugins.recommenders.popularity import Popularity

    class ContextProbe(Popularity):
        contexts: list = []

        @classmethod
        def load(cls, directory, *, context):
            ContextProbe.contexts.append(context)
            return super().load(directory, context=context)

    name = "mutation-test-context-probe"
    registry.recommenders.register(name, ContextProbe)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(package_dir, copy)
        shutil.copytree(copy / "models" / "popularity", copy / "models" / "probe")
        meta = json.loads((copy / "models" / "probe" / "meta.json").read_text())
        (copy / "models" / "probe" / "meta.json").write_text(json.dumps({**meta, "plugin": name}))
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["models"]["probe"] = name
        params = json.loads((copy / "params.json").read_text())
        (copy / "params.json").write_text(json.dumps({**params, "seed": 7}))  # not FitContext's default 0
        for key, digest in list(manifest["checksums"].items()):
            if key.startswith("models/popularity/"):
                manifest["checksums"][key.replace("/popularity/", "/probe/")] = digest
        (copy / "manifest.json").write_text(json.dumps(manifest))
        # "cuda" is taken as given (resolve_device checks only "auto"); these models never touch torch
        loaded = Engine.load(copy, device="cuda", model="probe", verify=False)
    finally:
        registry.recommenders._loaded.pop(name, None)
    (context,) = ContextProbe.contexts
    assert list(context.items["item_id"]) == ref.item_ids
    assert list(context.maps.user_ids) == ref.user_ids
    np.testing.assert_array_equal(context.embeddings("tfidf"), np.load(package_dir / "embeddings" / "tfidf.npy"))
    assert context.seed == loaded.params.seed == 7
    assert context.device == loaded.device == "cuda"


def test_the_packaged_explainer_is_loaded_with_its_options(package_dir, ref, tmp_path):
    """Catches: serve.explainer or serve.explainer_options not passed to the explainer loader."""
    from recforge import registry

    class Greeter:
        def __init__(self, greeting: str = "hello") -> None:
            self.greeting = greeting

        def explain(self, user_id, item_id, *, evidence):
            return f"{self.greeting} {user_id}"

    name = "mutation-test-greeter"
    registry.explainers.register(name, Greeter)
    try:
        copy = edited(
            package_dir,
            tmp_path / "copy",
            params={"serve.explainer": name, "serve.explainer_options": {"greeting": "hi"}},
        )
        loaded = Engine.load(copy, device="cpu", model="content", verify=False)
    finally:
        registry.explainers._loaded.pop(name, None)
    assert loaded.explainer_name == name and loaded.explainer.greeting == "hi"
    assert loaded.explain(ref.user_ids[0], ref.item_ids[1]).explanation == f"hi {ref.user_ids[0]}"


def test_prepare_without_any_ability(engine, package_dir, ref, caplog):
    """A served model with cached states and no other ability: no fold-in, similar-items or text model; the
    packaged encoder answers text. Catches: a path given a model that cannot answer it (or a StopIteration),
    the states logged under another name, the evidence embeddings not read."""
    model = StateModel()
    served = fresh(engine, models={"seq": model}, primary="seq", states={}, text_model=None, text_encoder=None)
    with caplog.at_level(logging.INFO, logger="recforge.engine"):
        _prepare(served, Package.open(package_dir, verify=False))
    assert (served.text_model, served.fold_in_model, served.similar_model) == (None, None, None)
    assert served.text_encoder is not None and "seq: cached 9 user states" in caplog.messages
    assert served.item_table.vectors is not None
    assert served.recommend_history([ref.item_ids[2]], K).model == "popularity"


def test_the_lead_of_a_served_reranker_is_the_best_single_model(package_dir):
    """With the re-ranker served, paths prefer the best single model by validation ndcg@k.
    Catches: that model chosen with another k (or none)."""
    metrics = json.loads((package_dir / "metrics.json").read_text())
    best = max(("popularity", "itemknn", "content"), key=lambda n: metrics[n]["val"]["ndcg@10"])
    loaded = Engine.load(package_dir, device="cpu", model="rerank")
    assert loaded.primary == "rerank" and loaded.fold_in_model == best
    assert loaded.reranks_sessions and loaded.rerank_note is None


def test_embeddings_are_served_as_contiguous_float32(package_dir, tmp_path):
    """Item embeddings stored as Fortran-ordered float64 are served as C-contiguous float32.
    Catches: the dtype / layout conversion of the packaged embeddings dropped."""
    copy = tmp_path / "copy"
    shutil.copytree(package_dir, copy)
    vectors = np.load(copy / "embeddings" / "tfidf.npy")
    np.save(copy / "embeddings" / "tfidf.npy", np.asfortranarray(vectors.astype(np.float64)))
    loaded = Engine.load(copy, device="cpu", model="content", verify=False)
    assert loaded.item_vectors.dtype == np.float32 and loaded.item_vectors.flags.c_contiguous
    np.testing.assert_array_equal(loaded.item_vectors, vectors.astype(np.float32))


def test_a_package_without_embeddings_explains_from_genres_and_keywords(package_dir, ref, tmp_path):
    """No encoder in the package: no item vectors, evidence by shared genres and keywords.
    Catches: an evidence encoder looked for (or its embeddings read) when the package has none."""
    copy = edited(package_dir, tmp_path / "copy", manifest={"encoders": []})
    loaded = Engine.load(copy, device="cpu", model="content", verify=False)
    assert loaded.item_vectors is None and loaded.item_table.vectors is None and loaded.text_encoder is None
    assert loaded.similar_items(ref.item_ids[0], K).model == "content"
    assert loaded.explain(ref.user_ids[0], ref.item_ids[1]).evidence["item_id"] == ref.item_ids[1]
