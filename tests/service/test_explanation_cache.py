"""The engine's explanation cache: a repeated /explain or /recommend?explain=true does not run the explainer
again, and the cache is bounded (LRU). Packaged profile keywords reach the evidence."""

from __future__ import annotations

import threading

import pytest

from recforge.engine import Engine
from recforge.explanation_cache import ExplanationCache
from recforge.packaging import build_package
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from tests.conftest import TINY, tmp_overrides

from recforge_plugins.explainers.template import TemplateExplainer


class CountingExplainer(TemplateExplainer):
    """The real template explainer, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self._lock = threading.Lock()

    def explain(self, user, item, *, evidence):
        with self._lock:
            self.calls += 1
        return super().explain(user, item, evidence=evidence)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-cache")
    params = load_params(
        None,
        tmp_overrides(root)
        + TINY
        + ["recommenders={popularity: {}}", "encode.encoders=[tfidf]", "rerank.enabled=false"],
    )
    run_pipeline(params, stages=["ingest", "validate", "split", "encode", "train", "evaluate"])
    build_package(params, root / "package")
    return Engine.load(root / "package", device="cpu")


def test_repeated_explanations_are_served_from_the_cache(engine):
    counting = CountingExplainer()
    engine.explainer, engine.explanations = counting, ExplanationCache(100)
    user = engine.manifest["example_user_id"]
    first = engine.recommend(user, 3, explain=True)
    assert counting.calls == 3 and all(item.explanation for item in first.items)
    again = engine.recommend(user, 3, explain=True)
    assert counting.calls == 3, "the second request did not regenerate"
    assert [i.explanation for i in again.items] == [i.explanation for i in first.items]
    single = engine.explain(user, first.items[0].item_id)
    assert counting.calls == 3 and single.explanation == first.items[0].explanation
    assert engine.explanations.hits == 4 and len(engine.explanations) == 3


def test_the_cache_is_bounded_and_least_recently_used():
    cache = ExplanationCache(2)
    cache.put((0, 1), "a")
    cache.put((0, 2), "b")
    assert cache.get((0, 1)) == "a"  # (0, 2) is now the least recently used
    cache.put((0, 3), "c")
    assert len(cache) == 2 and cache.get((0, 2)) is None and cache.get((0, 1)) == "a"
    off = ExplanationCache(0)
    off.put((0, 1), "a")
    assert len(off) == 0 and off.get((0, 1)) is None


def test_engine_cache_evicts_beyond_its_size(engine):
    counting = CountingExplainer()
    engine.explainer, engine.explanations = counting, ExplanationCache(2)
    user = engine.manifest["example_user_id"]
    items = [i.item_id for i in engine.recommend(user, 3).items]
    for item in items:
        engine.explain(user, item)
    assert len(engine.explanations) == 2 and counting.calls == 3
    engine.explain(user, items[0])  # evicted: explained again
    assert counting.calls == 4


def test_evidence_carries_the_packaged_profile_keywords(engine):
    from recforge.profiles import UserProfiles

    profiles = UserProfiles.load(engine.directory / "profiles", [])
    user = engine.manifest["example_user_id"]
    dense = engine.maps.lookup_user(user)
    found = engine.explain(user, engine.recommend(user, 1).items[0].item_id).evidence
    assert found["user_keywords"] and found["user_keywords"] == profiles.keywords[dense][: len(found["user_keywords"])]
