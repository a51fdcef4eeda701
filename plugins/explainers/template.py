"""Template explainer: names the history items closest to the recommendation and what they share.

``evidence`` is what :func:`recforge.features.explanation_evidence` returns:
``item_title``, ``history`` (list of {title, similarity, genres}),
``shared_genres`` and ``shared_keywords``.
"""

from __future__ import annotations

from typing import Any


def _quoted(titles: list[str]) -> str:
    titles = [f'"{t}"' for t in titles]
    if len(titles) <= 1:
        return "".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]


class TemplateExplainer:
    """Deterministic, always-available explanation from the evidence alone."""

    def __init__(self, max_items: int = 3, max_terms: int = 4) -> None:
        self.max_items = int(max_items)
        self.max_terms = int(max_terms)

    def explain(self, user: Any, item: Any, *, evidence: dict[str, Any]) -> str:
        title = evidence.get("item_title") or str(item)
        history = [h["title"] for h in evidence.get("history", [])][: self.max_items]
        genres = list(evidence.get("shared_genres", []))[: self.max_terms]
        keywords = list(evidence.get("shared_keywords", []))[: self.max_terms]
        if not history:
            return f'"{title}" is recommended because it is popular with users whose tastes resemble yours.'
        sentence = f'"{title}" is recommended because you enjoyed {_quoted(history)}.'
        shared = []
        if genres:
            shared.append("the genres " + ", ".join(genres))
        if keywords:
            shared.append("themes like " + ", ".join(keywords))
        if shared:
            sentence += " They share " + " and ".join(shared) + "."
        return sentence
