"""The language-model paths with the real SmolLM2 (installed by `make models`): the LLM scorer's
feature, the LLM explainer's generation (not its template fallback). Short prompts, few tokens."""

from __future__ import annotations

import time

import numpy as np
import pytest

# skipped without the model, failed under CI=true (tests/conftest.py); the check never fetches it
pytestmark = pytest.mark.smollm2

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


def _turn(history: str, options: list[str]) -> str:
    from recforge.llm_scorer import user_prompt

    return user_prompt(history.split("; "), options)


def test_llm_scorer_scores_every_option_of_a_real_prompt(scorer):
    # catches the wrong answer position (padding side), letters not matched to options, or a score that
    # is not a distribution over the options
    turns = [_turn(h, [a, b, "Heat"]) for h, a, b in MATCHING[:2]] + [_turn(MATCHING[2][0], ["Heat", "Alien"])]
    scores = scorer.score(turns)
    assert [len(s) for s in scores] == [3, 3, 2]
    for s in scores:
        assert np.logaddexp.reduce(s) == pytest.approx(0.0, abs=1e-4)  # log-probabilities among the options
    assert len({round(s[0], 5) for s in scores}) == 3, "each prompt gets its own scores"
    # batched (left-padded) scoring equals one prompt at a time
    alone = scorer.score(turns[2:])
    assert alone[0] == pytest.approx(scores[2], abs=1e-3)


@pytest.mark.xfail(
    strict=True,
    reason="SmolLM2-135M does not prefer the matching option: with the position prior removed (each pair "
    "asked in both orders) it prefers the matching title in 1 of 4 pairs, the unrelated one in 1, and "
    "ties within 0.02 in 2 (measured, not assumed)",
)
def test_llm_scorer_prefers_a_matching_candidate_over_an_unrelated_one(scorer):
    turns = [_turn(h, order) for h, a, b in MATCHING for order in ([a, b], [b, a])]
    scores = np.asarray(scorer.score(turns)).reshape(len(MATCHING), 2, 2)
    # matching minus unrelated, at the same letter: A in the first order vs A in the second, same for B
    margin = (scores[:, 0, 0] - scores[:, 1, 0]) + (scores[:, 1, 1] - scores[:, 0, 1])
    assert (margin > 0.1).all(), margin.round(3).tolist()


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
