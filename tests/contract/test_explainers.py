"""Contract tests for every registered explainer (built-in or third party)."""

from __future__ import annotations

import pytest

from recforge import registry
from recforge.protocols import Explainer

EVIDENCE = {
    "item_id": 7,
    "item_title": "Space Robots (1999)",
    "item_genres": ["Sci-Fi", "Action"],
    "history": [
        {"item_id": 1, "title": "Robot Wars (1995)", "similarity": 0.91, "genres": ["Sci-Fi"]},
        {"item_id": 2, "title": "Star Fleet (1997)", "similarity": 0.84, "genres": ["Sci-Fi", "Action"]},
    ],
    "shared_genres": ["Action", "Sci-Fi"],
    "shared_keywords": ["robots", "space"],
    "history_length": 12,
}
EMPTY = {
    "item_id": 7,
    "item_title": "Space Robots (1999)",
    "item_genres": [],
    "history": [],
    "shared_genres": [],
    "shared_keywords": [],
    "history_length": 0,
}

# options that keep model-backed explainers cheap and offline in tests: a model path that does
# not exist makes the llm explainer exercise its fallback without loading anything
OPTIONS = {"llm": {"model": "/nonexistent/local-model", "time_budget_s": 5}}


@pytest.fixture(params=registry.explainers.names())
def explainer(request):
    return request.param, registry.explainers.create(request.param, **OPTIONS.get(request.param, {}))


def test_satisfies_protocol_and_returns_grounded_text(explainer):
    name, instance = explainer
    assert isinstance(instance, Explainer)
    text = instance.explain("u1", 7, evidence=EVIDENCE)
    assert isinstance(text, str) and 0 < len(text) <= 600
    assert "Robot Wars" in text or "Star Fleet" in text, f"{name} does not name the history evidence"


def test_handles_a_user_without_history(explainer):
    _, instance = explainer
    text = instance.explain("new", 7, evidence=EMPTY)
    assert isinstance(text, str) and "Space Robots" in text


def test_template_names_items_and_shared_terms():
    text = registry.explainers.create("template").explain("u1", 7, evidence=EVIDENCE)
    assert '"Robot Wars (1995)"' in text and '"Star Fleet (1997)"' in text
    assert "Action" in text and "robots" in text


def test_llm_falls_back_to_template_when_generation_fails():
    llm = registry.explainers.create("llm", model="/nonexistent/local-model")
    template = registry.explainers.create("template")
    assert llm.explain("u1", 7, evidence=EVIDENCE) == template.explain("u1", 7, evidence=EVIDENCE)
    assert llm.last_source == "template"


def test_llm_output_is_capped_and_grounding_checked():
    llm = registry.explainers.create("llm", max_chars=60, sentences=2)
    long = "You will love Space Robots because Robot Wars was great. It has robots. And more. " * 3
    cleaned = llm.clean(long)
    assert len(cleaned) <= 63 and cleaned.endswith("...")
    two = registry.explainers.create("llm", max_chars=1000, sentences=2).clean(long)
    assert two == "You will love Space Robots because Robot Wars was great. It has robots."
    one = registry.explainers.create("llm", max_chars=1000).clean(long)  # default: one sentence
    assert one == "You will love Space Robots because Robot Wars was great."
    assert llm.grounded("Like Robot Wars, Space Robots is fun.", EVIDENCE)
    assert not llm.grounded("A fine film for everyone.", EVIDENCE)
    # strict: the recommended item must be named, and no title outside the evidence
    assert not llm.grounded("Like Robot Wars, this is fun.", EVIDENCE)
    assert not llm.grounded('Like "Robot Wars" and "Alien Planet", Space Robots is fun.', EVIDENCE)
