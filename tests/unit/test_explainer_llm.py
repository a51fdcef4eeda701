"""The LLM explainer: its strict grounding check on crafted texts, its prompt and length rules, and one
explanation with the real SmolLM2 (skipped when the model is not cached, failed then under CI=true; nothing downloads)."""

from __future__ import annotations

import re

import pytest

from recforge_plugins.explainers.llm import LLMExplainer, display_title

EVIDENCE = {
    "item_id": 3,
    "item_title": "Toy Story 3 (2010)",
    "item_genres": ["Animation", "Comedy"],
    "history": [
        {"item_id": 1, "title": "Toy Story (1995)", "similarity": 0.9, "genres": ["Animation"]},
        {"item_id": 2, "title": "Lord of the Rings: The Two Towers, The (2002)", "similarity": 0.5, "genres": []},
        {"item_id": 4, "title": "Shawshank Redemption, The (1994)", "similarity": 0.4, "genres": ["Drama"]},
    ],
    "shared_genres": ["Animation", "Comedy", "Sci-Fi"],
    "shared_keywords": ["toys"],
    "user_keywords": ["pixar", "friendship"],
    "history_length": 20,
}

GROUNDED = [
    'You may like "Toy Story 3" because, like "Toy Story", it is a funny animated film about toys.',
    'You may like "Toy Story 3 (2010)" because you enjoyed "Toy Story (1995)".',
    "Toy Story 3 continues the story you loved in Toy Story. Like The Shawshank Redemption, it is about friendship.",
    'Fans of "The Lord of the Rings: The Two Towers" and Toy Story will enjoy Toy Story 3, a Sci-Fi tinged comedy.',
    'If Toy Story made you laugh, "Toy Story 3" will too; it shares the "toys" theme.',
    'You may like "Shawshank Redemption" as much as Toy Story 3 and Lord of the Rings.',
]
HALLUCINATED = [
    ('You may like "Toy Story 3" because, like "Finding Nemo", it is a Pixar film.', "Finding Nemo"),
    ("You may like Toy Story 3 because you liked Finding Nemo and Toy Story.", "Finding Nemo"),
    ('You may like "Toy Story 3" because you enjoyed "Toy Story (1999)".', "(1999)"),  # wrong year
    ("Finding Nemo fans will enjoy Toy Story 3.", "Finding Nemo"),
    ('Like "The Lion King", "Toy Story 3" is a classic.', "The Lion King"),
    ("You may like Toy Story 3 because it is like The Incredible Hulk.", "Incredible Hulk"),
    ("You will enjoy this film because you liked Toy Story.", "recommended item"),  # the item is not named
]


@pytest.mark.parametrize("text", GROUNDED)
def test_grounding_accepts_evidence_titles_only(text):
    explainer = LLMExplainer()
    assert explainer.grounding_errors(text, EVIDENCE) == []
    assert explainer.grounded(text, EVIDENCE)


@pytest.mark.parametrize(("text", "culprit"), HALLUCINATED)
def test_grounding_rejects_any_other_title(text, culprit):
    errors = LLMExplainer().grounding_errors(text, EVIDENCE)
    assert errors, text
    assert any(culprit.lower() in e.lower() for e in errors), errors


def test_rejected_text_falls_back_to_the_template():
    class Scripted(LLMExplainer):  # the real explainer with a scripted generation (no model involved)
        def __init__(self, answer: str, sentences: int = 1) -> None:
            super().__init__(sentences=sentences)
            self.answer = answer

        def _load(self):
            return None, None

        def generate(self, text: str, primer: str = "") -> str:
            return self.answer

    template = LLMExplainer().fallback.explain("u", 3, evidence=EVIDENCE)
    bad = Scripted(HALLUCINATED[0][0])
    assert bad.explain("u", 3, evidence=EVIDENCE) == template and bad.last_source == "template"
    good = Scripted(GROUNDED[0] + " It is fun. And a third sentence.")
    assert good.explain("u", 3, evidence=EVIDENCE) == GROUNDED[0] and good.last_source == "llm"
    two = Scripted(GROUNDED[0] + " It is fun. And a third sentence.", sentences=2)
    assert two.explain("u", 3, evidence=EVIDENCE) == GROUNDED[0] + " It is fun." and two.last_source == "llm"


def test_display_titles_and_a_short_prompt_with_profile_keywords():
    assert display_title("Shawshank Redemption, The (1994)") == "The Shawshank Redemption"
    assert display_title("Seven (a.k.a. Se7en) (1995)") == "Seven"
    long = "Lord of the Rings: The Return of the King, The (2003)"
    assert display_title(long) == "The Lord of the Rings"
    assert display_title("Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)") == "Amelie"
    explainer = LLMExplainer()
    prompt = explainer.prompt(EVIDENCE)
    assert '"Toy Story 3"' in prompt and '"The Shawshank Redemption"' in prompt and "(19" not in prompt
    assert "Likes: pixar, friendship." in prompt
    assert len(prompt) < 300
    assert explainer.primer(EVIDENCE) == 'You may like "Toy Story 3" because, like "Toy Story", it'
    assert LLMExplainer(prime=False).primer(EVIDENCE) == ""


@pytest.mark.smollm2  # skipped without the model, failed under CI=true (tests/conftest.py)
def test_real_smollm2_explanation_is_short_and_grounded_or_the_template():
    explainer = LLMExplainer(time_budget_s=60.0)
    text = explainer.explain("u1", 3, evidence=EVIDENCE)
    assert text and explainer.last_tokens > 0, "the model generated"
    if explainer.last_source == "llm":
        assert explainer.grounded(text, EVIDENCE), text
        assert len(re.findall(r"[.!?](?:\s|$)", text)) <= 2, text
        assert text.startswith('You may like "Toy Story 3"')
        assert explainer.last_tokens <= explainer.max_new_tokens
    else:
        assert text == explainer.fallback.explain("u1", 3, evidence=EVIDENCE)
