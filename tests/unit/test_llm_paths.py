"""The language-model paths with the real SmolLM2 (installed by `make models`): the LLM scorer's
feature, the LLM explainer's generation (not its template fallback). Short prompts, few tokens."""

from __future__ import annotations

import time

import pytest

from recforge.llm import gguf_path, resolve_model_path

try:
    resolve_model_path(None)
    HAVE_SMOLLM2 = gguf_path().exists()
except Exception:  # noqa: BLE001 - any reason the model is not there
    HAVE_SMOLLM2 = False

pytestmark = pytest.mark.skipif(not HAVE_SMOLLM2, reason="SmolLM2 is not installed (make models)")

# (history, a candidate that matches it, an unrelated candidate)
MATCHING = [
    ("Toy Story; Toy Story 2", "Toy Story 3", "Schindler's List"),
    ("Star Wars: A New Hope; The Empire Strikes Back", "Return of the Jedi", "Pretty Woman"),
    ("Love in Paris; A Wedding Kiss; Romance by the Sea", "Love Letters", "Chainsaw Massacre"),
    ("Space Rockets; Moon Landing; Astronauts of Mars", "Journey to the Stars", "Cooking Pasta"),
]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from recforge.llm_scorer import LLMScorer
    from recforge.params import load_params
    from tests.conftest import tmp_overrides

    return LLMScorer(load_params(None, tmp_overrides(tmp_path_factory.mktemp("llm-scorer"))))


def _prompt(history: str, candidate: str) -> str:
    # the scorer's own prompt (LLMScorer.prompts) for these titles
    return f'A user recently watched: {history}.\nWill this user enjoy "{candidate}"? Answer Yes or No.'


def test_llm_scorer_scores_real_prompts(scorer):
    texts = [_prompt(h, c) for h, a, b in MATCHING[:2] for c in (a, b)]
    scores = scorer.score(texts)
    assert scores.shape == (4,) and all(abs(s) < 50 for s in scores)
    assert len(set(scores.round(6))) == 4, "each prompt gets its own log P(Yes) - log P(No)"
    # batched scoring equals one prompt at a time (left padding must not change a score)
    alone = scorer.score(texts[:1])
    assert alone[0] == pytest.approx(scores[0], abs=1e-3)


@pytest.mark.xfail(
    strict=True,
    reason="SmolLM2-135M does not rank the matching candidate higher: on these four pairs its "
    "log P(Yes) - log P(No) prefers the unrelated title in two and ties in the others (measured, not assumed)",
)
def test_llm_scorer_ranks_a_matching_candidate_above_an_unrelated_one(scorer):
    texts = [_prompt(h, c) for h, a, b in MATCHING for c in (a, b)]
    scores = scorer.score(texts).reshape(-1, 2)
    assert (scores[:, 0] > scores[:, 1] + 0.05).all(), scores.round(3).tolist()


EVIDENCE = {
    "item_title": "Toy Story 3",
    "history": [{"title": "Toy Story"}, {"title": "Toy Story 2"}],
    "shared_genres": ["animation", "comedy"],
    "shared_keywords": ["toys", "friendship"],
}


def test_llm_explainer_generates_grounded_text_within_its_budget():
    from recforge.llm import load_causal_lm

    from recforge_plugins.explainers.llm import LLMExplainer

    explainer = LLMExplainer(max_new_tokens=24, max_chars=200, time_budget_s=20.0)
    load_causal_lm()  # loading (once per process) is outside the budget, as in explain()
    started = time.perf_counter()
    text = explainer.explain("u1", "i3", evidence=EVIDENCE)
    elapsed = time.perf_counter() - started
    assert explainer.last_source == "llm", f"fell back to the template after {elapsed:.1f}s: {text!r}"
    assert text != explainer.fallback.explain("u1", "i3", evidence=EVIDENCE)
    # within its budget: the character cap, and the time the explainer itself allows (budget + 10%)
    assert 0 < len(text) <= 200 and elapsed <= explainer.time_budget_s * 1.1
    assert "toy story" in text.lower(), text  # grounded: it names the evidence
