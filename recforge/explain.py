"""Explanations: the one home of the evidence and of the template sentence.

Offline (``recforge explain``, :func:`explain_recommendation` over the
workspace) and online (:class:`recforge.engine.Engine` over a package) build
the same :class:`ItemTable` from the same items table and the same embeddings
(:func:`explanation_encoders`), and call the same :func:`evidence` on the
user's train + val history, so both give the same evidence for a user and an
item. Explainer plugins turn evidence into text; :func:`template_explanation`
is the deterministic sentence the ``template`` plugin writes and the service
falls back to when no explainer plugin loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge import registry
from recforge.artifacts import plain
from recforge.errors import RecforgeError
from recforge.params import Params
from recforge.text import item_titles

log = logging.getLogger(__name__)

EVIDENCE_ITEMS = 3  # history items named as evidence
MAX_KEYWORDS = 8
MAX_USER_KEYWORDS = 6  # the profile's top keywords carried as evidence


@dataclass
class ItemTable:
    """What evidence reads per item, computed once: ids, titles, genres, keywords, embeddings."""

    item_ids: np.ndarray
    titles: list[str]
    genres: list[list[str]]
    keywords: list[list[str]]
    vectors: np.ndarray | None = None  # L2-normalised item embeddings; None: similarity from shared terms

    @classmethod
    def build(cls, items: pd.DataFrame, text_fields: Sequence[str], vectors: np.ndarray | None = None) -> ItemTable:
        from recforge.features import item_keywords
        from recforge.profiles import item_genres

        return cls(
            item_ids=items["item_id"].to_numpy(),
            titles=item_titles(items),
            genres=item_genres(items),
            keywords=item_keywords(items, text_fields),
            vectors=None if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32),
        )


def explanation_encoders(params: Params) -> list[str]:
    """Encoders whose embeddings measure similarity for evidence, in order of preference (the
    re-rank feature encoders: ``rerank.encoders``, else ``encode.encoders``); the first one
    with embeddings is used, else similarity comes from shared genres and keywords."""
    from recforge.rerank import feature_encoders

    return feature_encoders(params)


def profile_keywords(profiles: Any, user: int, user_id: Any) -> list[str]:
    """Dense ``user``'s top profile keywords from loaded :class:`recforge.profiles.UserProfiles`
    (``[]`` when there are none, or the profiles are of other users)."""
    if profiles is None or not profiles.keywords or not 0 <= user < len(profiles.user_ids):
        return []
    if str(profiles.user_ids[user]) != str(user_id):  # rows follow the dense user index of the same maps
        return []
    return [str(w) for w in profiles.keywords[user][:MAX_USER_KEYWORDS]]


def read_profiles(directory: str | Path) -> Any:
    """The profiles (keywords and genres only, no vectors) in ``directory``, or None when it has none."""
    from recforge.profiles import UserProfiles

    try:
        return UserProfiles.load_optional(Path(directory), [])
    except (RecforgeError, ValueError, KeyError) as exc:
        log.warning("%s: profiles unreadable (%s); explanations go without profile keywords", directory, exc)
        return None


def evidence(
    table: ItemTable,
    history: np.ndarray,
    item: int,
    *,
    k: int = EVIDENCE_ITEMS,
    user_keywords: Sequence[str] = (),
) -> dict[str, Any]:
    """Grounding for an explanation of dense ``item`` for a user with dense item ``history``.

    The ``k`` history items most similar to the item (cosine over
    ``table.vectors`` when present, else the share of the item's genres and
    keywords they have; ties to the lower index), the genres they share with
    it, the keywords they share with it that are not genre words, and the
    user's profile keywords as given (:func:`profile_keywords`). JSON-friendly.
    """
    history = np.asarray(history)
    sequence = np.unique(history)
    sequence = sequence[sequence != item]
    terms = set(table.genres[item]) | set(table.keywords[item])
    if not len(sequence):
        similarity = np.zeros(0)
    elif table.vectors is not None:
        similarity = table.vectors[sequence] @ table.vectors[item]
    else:
        similarity = np.array(
            [len(terms & (set(table.genres[h]) | set(table.keywords[h]))) / max(len(terms), 1) for h in sequence]
        )
    order = np.lexsort((sequence, -similarity))[:k] if len(sequence) else np.zeros(0, dtype=np.int64)
    chosen = sequence[order]
    shared_genres = sorted({g for h in chosen for g in table.genres[h]} & set(table.genres[item]))
    genre_words = {g.lower() for g in shared_genres}
    shared_keywords = sorted(({w for h in chosen for w in table.keywords[h]} & set(table.keywords[item])) - genre_words)
    return {
        "item_id": plain(table.item_ids[item]),
        "item_title": table.titles[item],
        "item_genres": table.genres[item],
        "history": [
            {
                "item_id": plain(table.item_ids[h]),
                "title": table.titles[h],
                "similarity": round(float(similarity[o]), 4),
                "genres": table.genres[h],
            }
            for h, o in zip(chosen, order, strict=True)
        ],
        "shared_genres": shared_genres,
        "shared_keywords": shared_keywords[:MAX_KEYWORDS],
        "user_keywords": [str(w) for w in user_keywords][:MAX_USER_KEYWORDS],
        "history_length": int(len(history)),
    }


def _quoted(titles: list[str]) -> str:
    titles = [f'"{t}"' for t in titles]
    if len(titles) <= 1:
        return "".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def template_explanation(evidence: dict[str, Any], *, max_items: int = 3, max_terms: int = 4) -> str:
    """The deterministic sentence: the closest history items and what they share with the item."""
    title = evidence.get("item_title") or str(evidence.get("item_id"))
    history = [h["title"] for h in evidence.get("history", [])][:max_items]
    genres = list(evidence.get("shared_genres", []))[:max_terms]
    keywords = list(evidence.get("shared_keywords", []))[:max_terms]
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


def explain_text(
    explainer: Any, user_id: Any, item_id: Any, evidence: dict[str, Any], *, name: str = "explainer"
) -> str:
    """``explainer``'s text for the evidence; the template sentence when there is none or it fails."""
    if explainer is not None:
        try:
            text = explainer.explain(user_id, item_id, evidence=evidence)
            if text:
                return str(text)
        except Exception as exc:  # an explainer failure must not fail the recommendation
            log.warning("explainer %s failed: %s", name, exc)
    return template_explanation(evidence)


def load_explainer(name: str | None, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(explainer plugin, its name), or (None, "builtin") when ``name`` is builtin or cannot be loaded."""
    if name and name != "builtin" and name in registry.explainers.names():
        try:
            return registry.explainers.create(name, **dict(options or {})), name
        except Exception as exc:
            log.warning("explainer %s unavailable (%s); using the built-in one", name, exc)
    return None, "builtin"


def workspace_evidence(params: Params, user_id: Any, item_id: Any, *, part: str = "full") -> dict[str, Any]:
    """Evidence for original ``user_id`` / ``item_id`` from the workspace.

    The history is train + val (``part='full'``, what is served) or train
    (``'val'``); similarity uses the embeddings of the first of :func:`explanation_encoders` that has them;
    the user's keywords come from the profiles of the same part (``<profiles_dir>/full`` or ``/val``).
    """
    from recforge.workspace import Workspace

    workspace = Workspace(params)
    maps = workspace.maps
    user, item = maps.lookup_user(user_id), maps.lookup_item(item_id)
    if item < 0:
        raise RecforgeError(f"unknown item {item_id!r}")
    if user < 0:
        raise RecforgeError(f"unknown user {user_id!r}")
    history = workspace.events("train+val" if part == "full" else "train")
    vectors = None
    for name in explanation_encoders(params):
        try:
            vectors = workspace.embeddings(name)
            break
        except RecforgeError:  # not encoded: the next one, else shared terms
            continue
    table = ItemTable.build(workspace.items, params.encode.fields, vectors)
    profiles = read_profiles(Path(params.paths.profiles_dir) / part)
    keywords = profile_keywords(profiles, user, maps.user_ids[user])
    return evidence(table, history.sequences[user], item, user_keywords=keywords)


def explain_recommendation(
    params: Params,
    user_id: Any,
    item_id: Any,
    explainers: Sequence[str] | None = None,
    *,
    part: str = "full",
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evidence and one explanation per explainer (default: every registered one) for original
    ``user_id`` / ``item_id`` (``recforge explain``)."""
    found = workspace_evidence(params, user_id, item_id, part=part)
    texts: dict[str, str] = {}
    for name in explainers if explainers is not None else list(registry.explainers.view()):
        explainer = registry.explainers.create(name, **(options or {}).get(name, {}))
        started = time.perf_counter()
        texts[name] = explainer.explain(user_id, item_id, evidence=found)
        log.info("explainer %s: %.1fs", name, time.perf_counter() - started)
    return {"user_id": user_id, "item_id": item_id, "evidence": found, "explanations": texts}
