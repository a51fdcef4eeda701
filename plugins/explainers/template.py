"""Template explainer: names the history items closest to the recommendation and what they share.

``evidence`` is what :func:`recforge.explain.evidence` returns: ``item_title``,
``history`` (list of {title, similarity, genres}), ``shared_genres`` and
``shared_keywords``. The sentence is :func:`recforge.explain.template_explanation`,
the same one the service falls back to when no explainer plugin loads.
"""

from __future__ import annotations

from typing import Any

from recforge.explain import template_explanation


class TemplateExplainer:
    """Deterministic, always-available explanation from the evidence alone."""

    def __init__(self, max_items: int = 3, max_terms: int = 4) -> None:
        self.max_items = int(max_items)
        self.max_terms = int(max_terms)

    def explain(self, user: Any, item: Any, *, evidence: dict[str, Any]) -> str:
        if not evidence.get("item_title"):
            evidence = {**evidence, "item_title": str(item)}
        return template_explanation(evidence, max_items=self.max_items, max_terms=self.max_terms)
