"""recforge.selection (which model a package serves, and why) and recforge.explanation_cache (the service's
bounded LRU of explanations): fast, each test names the bug it catches. The served re-ranker cases read the
tiny two-stage package of tests/unit/rerank_package.py (built once, cached on disk)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from recforge.errors import RecforgeError
from recforge.explanation_cache import EXPLANATION_CACHE_SIZE, ExplanationCache
from recforge.packaging import Package
from recforge.selection import AUTO, best_model, choose_model, val_score
from tests.unit.rerank_package import one_openmp_thread, open_with_models, rerank_package

MODELS = {"popularity": object(), "itemknn": object()}  # choose_model reads only the names of these
# itemknn is the best single model on validation; popularity is better on test (the rule reads validation)
SINGLES = {
    "popularity": {"ndcg@10": 0.9, "val": {"ndcg@10": 0.2}},
    "itemknn": {"ndcg@10": 0.1, "val": {"ndcg@10": 0.3}},
}
RERANK_BEST = {**SINGLES, "rerank": {"ndcg@10": 0.0, "val": {"ndcg@10": 0.41234}}}
RERANK_WORSE = {**SINGLES, "rerank": {"ndcg@10": 0.99, "val": {"ndcg@10": 0.25}}}


def _package(tmp_path, *, rerank: bool, meta: dict | None = None) -> Package:
    """A package folder with only what choose_model reads before the re-ranker loads (and its rerank/meta.json)."""
    if meta is not None:
        (tmp_path / "rerank").mkdir()
        (tmp_path / "rerank" / "meta.json").write_text(json.dumps(meta))
    return Package(directory=tmp_path, manifest={"rerank": rerank}, params=None)


# ---- val_score and best_model -------------------------------------------------------------------------------


def test_val_score_reads_validation_then_test_then_minus_infinity():
    # catches the wrong metric key or k (ndcg@k), the test figure read before the validation one, and a
    # missing model scoring anything but -inf (it would then beat a real model)
    metrics = {"a": {"ndcg@5": 0.7, "ndcg@10": 0.6, "val": {"ndcg@5": 0.4, "ndcg@10": 0.3}}, "b": {"ndcg@10": 0.5}}
    assert val_score(metrics, "a", 10) == 0.3
    assert val_score(metrics, "a", 5) == 0.4
    assert val_score(metrics, "b", 10) == 0.5  # no validation figure: the test one
    assert val_score(metrics, "b", 5) == -math.inf
    assert val_score(metrics, "c", 10) == -math.inf
    assert val_score({"a": {"val": {"ndcg@10": 1}}}, "a", 10) == 1.0 and isinstance(val_score(metrics, "b", 10), float)


def test_best_model_takes_the_best_validation_score():
    # catches min for max, or the test figure ranking the models (popularity has the better test NDCG)
    assert best_model(MODELS, SINGLES, 10) == "itemknn"
    assert best_model(["popularity", "itemknn", "rerank"], RERANK_BEST, 10) == "rerank"
    assert best_model(["popularity", "missing"], SINGLES, 10) == "popularity"


# ---- a model asked for by name ------------------------------------------------------------------------------


def test_a_named_model_not_in_the_package_is_refused_with_the_packaged_names(tmp_path):
    # catches the membership test inverted (a typo served as a KeyError later) and the one-line message losing
    # the name or the packaged models
    with pytest.raises(RecforgeError) as info:
        choose_model("gru", _package(tmp_path, rerank=True), MODELS, SINGLES, 10)
    assert str(info.value) == "serve.model 'gru' is not in the package (models: popularity, itemknn)"


@pytest.mark.parametrize(
    ("rerank", "note"),
    [(True, "not asked for (serve.model: popularity)"), (False, "no re-ranker in the package")],
)
def test_a_named_model_is_served_as_asked(tmp_path, rerank, note):
    # catches a named model replaced by the best one (popularity is not the best on validation), a re-ranker
    # loaded although not asked for, the manifest's `rerank` flag misread (the note says why none is served)
    package = _package(tmp_path, rerank=rerank, meta={"fallback": None, "models": ["nope"], "features": []})
    assert choose_model("popularity", package, MODELS, RERANK_BEST, 10) == (
        "popularity",
        "serve.model: popularity",
        None,
        note,
    )


# ---- auto and rerank when the re-ranker cannot be served --------------------------------------------------


def test_auto_without_a_packaged_reranker_serves_the_best_single_model(tmp_path):
    # catches auto serving a model other than the best on validation, the reason losing k or the score (4
    # decimals), and a re-ranker loaded although the manifest has none (the metrics even rank it first)
    assert choose_model(AUTO, _package(tmp_path, rerank=False), MODELS, RERANK_BEST, 10) == (
        "itemknn",
        "auto: the best validation ndcg@10 (0.3000)",
        None,
        "no re-ranker in the package",
    )


def test_auto_serves_the_best_single_model_when_it_beats_the_reranker(tmp_path):
    # catches the re-ranker served (or loaded: its folder is missing here, which would say another note) when a
    # single model beats it on validation, and the note not naming that model and k
    package = _package(tmp_path, rerank=True)
    assert choose_model(AUTO, package, MODELS, RERANK_WORSE, 10) == (
        "itemknn",
        "auto: the best validation ndcg@10 (0.3000)",
        None,
        "itemknn has a better validation ndcg@10 than the re-ranker",
    )
    # with k=5 the figures are missing: every model scores -inf and the first single model wins (max is stable)
    chosen = choose_model(AUTO, package, MODELS, RERANK_WORSE, 5)
    assert chosen[0] == "popularity" and chosen[1] == "auto: the best validation ndcg@5 (-inf)"
    assert chosen[3] == "popularity has a better validation ndcg@5 than the re-ranker"


def test_auto_falls_back_to_the_best_single_model_when_the_reranker_cannot_run_online(tmp_path):
    # catches auto raising (as rerank does) instead of falling back, and the reason losing why the re-ranker
    # cannot run (the note of OnlineReranker.load) or which single model is served instead
    package = _package(tmp_path, rerank=True, meta={"fallback": "popularity", "checksums": {}})
    note = "no re-ranker was trained (the lists used popularity)"
    assert choose_model(AUTO, package, MODELS, RERANK_BEST, 10) == (
        "itemknn",
        f"auto: the re-ranker has the best validation ndcg@10 but cannot run online ({note}); "
        "itemknn is the best single model",
        None,
        note,
    )


def test_rerank_asked_but_not_servable_is_refused(tmp_path):
    # catches serve.model=rerank silently serving another model, and each message losing the reason or names
    package = _package(tmp_path, rerank=True, meta={"fallback": "popularity", "checksums": {}})
    with pytest.raises(RecforgeError) as info:
        choose_model("rerank", package, MODELS, RERANK_WORSE, 10)  # asked for: served even when not the best
    assert str(info.value) == (
        "serve.model 'rerank' cannot be served: no re-ranker was trained (the lists used popularity) "
        "(models: popularity, itemknn)"
    )
    with pytest.raises(RecforgeError) as info:
        choose_model("rerank", _package(tmp_path / "none", rerank=False), MODELS, RERANK_BEST, 10)
    assert str(info.value) == (
        "serve.model 'rerank' is not in the package (models: popularity, itemknn); no re-ranker in the package"
    )


# ---- the re-ranker served -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    """(the tiny two-stage package, its models) opened once per module, LightGBM on one OpenMP thread."""
    with one_openmp_thread():
        yield open_with_models(rerank_package())


def test_rerank_asked_is_served_from_the_precomputed_lists(served):
    # catches the loaded re-ranker dropped (None served as rerank), a note where none is due, and the reason
    # not saying the known users' lists are precomputed
    package, models = served
    name, why, reranker, note = choose_model("rerank", package, models, SINGLES, 10)
    assert (name, why, note) == (
        "rerank",
        "serve.model: rerank; known users from lists precomputed at package time",
        None,
    )
    assert reranker is not None and reranker.lists is not None and reranker.models == ["popularity", "itemknn"]


def test_auto_serves_the_reranker_when_best_and_says_by_how_much(served):
    # catches the re-ranker's and the best single model's figures swapped, mis-rounded or unnamed
    package, models = served
    name, why, reranker, note = choose_model(AUTO, package, models, RERANK_BEST, 10)
    assert name == "rerank" and reranker is not None and note is None
    assert (
        why
        == "auto: the best validation ndcg@10 (0.4123 vs itemknn 0.3000); known users from lists precomputed at package time"
    )


def test_a_reranker_without_precomputed_lists_says_it_ranks_online(served, tmp_path):
    # catches the reason saying 'precomputed' when the package carries no lists (every user is ranked online)
    package, models = served
    folder = tmp_path / "package"
    shutil.copytree(package.directory, folder)
    (folder / "rerank_lists.npz").unlink()
    bare = Package(directory=folder, manifest=package.manifest, params=package.params, verify=False)
    name, why, reranker, _ = choose_model("rerank", bare, models, SINGLES, 10)
    assert (name, why) == ("rerank", "serve.model: rerank; online") and reranker.lists is None


# ---- the explanation cache ----------------------------------------------------------------------------------


def test_explanation_cache_counts_hits_and_misses():
    # catches a miss counted as a hit (or not at all), a stored text not returned, and the default size changed
    cache = ExplanationCache()
    assert cache.size == EXPLANATION_CACHE_SIZE == 10_000
    assert cache.get((0, 1)) is None
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put((0, 1), "because")
    assert cache.get((0, 1)) == "because"
    assert cache.get((1, 0)) is None  # the key is the ordered (user, item) pair
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 1)
    cache.put((0, 1), "again")  # a put replaces, and does not grow the cache
    assert cache.get((0, 1)) == "again" and len(cache) == 1
    assert (cache.hits, cache.misses) == (2, 2)  # counted up, not set


def test_explanation_cache_evicts_the_least_recently_used_entry():
    # catches the newest entry evicted instead of the oldest, a hit not refreshing recency, a put of a cached key
    # not refreshing it, and an off-by-one in the bound (the cache holds exactly `size` entries)
    cache = ExplanationCache(size=2)
    cache.put((0, 0), "a")
    cache.put((0, 1), "b")
    assert len(cache) == 2
    assert cache.get((0, 0)) == "a"  # (0, 0) is now the most recent
    cache.put((0, 2), "c")
    assert len(cache) == 2
    assert cache.get((0, 1)) is None and cache.get((0, 0)) == "a" and cache.get((0, 2)) == "c"
    cache.put((0, 0), "a2")  # a put refreshes an existing key as well: (0, 2) is now the oldest
    cache.put((0, 3), "d")
    assert cache.get((0, 2)) is None and cache.get((0, 0)) == "a2" and cache.get((0, 3)) == "d"


def test_explanation_cache_of_size_zero_keeps_nothing():
    # catches size 0 storing entries (an explicit 0 disables the cache), and a negative or float size not
    # clamped to a non-negative int
    cache = ExplanationCache(size=0)
    cache.put((0, 0), "a")
    assert len(cache) == 0 and cache.get((0, 0)) is None
    assert ExplanationCache(size=-3).size == 0
    one = ExplanationCache(size=1.9)
    assert one.size == 1
    one.put((0, 0), "a")
    one.put((0, 1), "b")
    assert len(one) == 1 and one.get((0, 1)) == "b"
