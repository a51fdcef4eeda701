"""Online recommendations: the framework-free core behind the BentoML service.

``Engine.load`` (:mod:`recforge.engine_load`) opens a package
(:class:`recforge.packaging.Package`: every checksum verified), loads every
model once through the plugin registry and caches what requests reuse (normalised item embeddings, popularity, histories,
the item table explanations read, user states of models with the
:class:`recforge.protocols.UserStates` ability). With the re-ranker served,
a known user's list was precomputed at package time (a lookup); every other
request is computed online from the loaded models.

Which model answers what is chosen by ability (the optional protocols of
:mod:`recforge.protocols`), never by plugin name. The service in ``service/``
is a thin HTTP layer over :class:`Engine`; its answers are the pydantic models
of :mod:`recforge.schemas`. What a known user's feedback leaves out of their
list is :mod:`recforge.exclusions`; explanation texts are kept in
:mod:`recforge.explanation_cache`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge import explain
from recforge.artifacts import plain
from recforge.engine_load import load_engine
from recforge.exclusions import asked_for, dense_feedback, leave_out
from recforge.explanation_cache import ExplanationCache
from recforge.interactions import IdMaps
from recforge.online_rerank import RERANK, OnlineReranker
from recforge.params import Params
from recforge.ranking import history_row, top_k
from recforge.schemas import (
    EXPLAIN_BUDGET_S,
    MAX_ECHOED_IDS,
    MAX_EXPLAINED,
    MAX_HISTORY,
    MAX_K,
    BadRequestError,
    Explanation,
    FeedbackAck,
    NotFoundError,
    Recommendations,
    RecommendedItem,
)


@dataclass
class Engine:
    """Everything a request needs, loaded once from a package directory."""

    directory: Path
    manifest: dict[str, Any]
    params: Params
    metrics: dict[str, Any]
    items: pd.DataFrame
    maps: IdMaps
    models: dict[str, Any]
    primary: str
    history_indptr: np.ndarray
    history_items: np.ndarray
    popularity: np.ndarray
    device: str = "cpu"
    titles: list[str] = field(default_factory=list)
    item_table: explain.ItemTable | None = None  # what explanations read
    item_vectors: np.ndarray | None = None
    text_model: str | None = None
    text_encoder: Any = None
    fold_in_model: str | None = None
    similar_model: str | None = None
    explainer: Any = None
    explainer_name: str = "builtin"
    profiles: Any = None  # the packaged user profiles (keywords, genres) explanations read; None: none packaged
    explanations: ExplanationCache = field(default_factory=ExplanationCache)
    # models with cached user states (UserStates): name -> states [n_users, dim]
    states: dict[str, np.ndarray] = field(default_factory=dict)
    reranker: OnlineReranker | None = None
    rerank_note: str | None = None  # why the packaged re-ranker is not served, if it is not
    model_reason: str = ""  # why ``primary`` is served (/metadata)
    # /recommend?explain=true explains at most this many items within this many seconds (an explainer may
    # run a generative model: without bounds one request could take minutes and nothing cancels it)
    max_explained: int = MAX_EXPLAINED
    explain_budget_s: float = EXPLAIN_BUDGET_S
    # the feedback store's exclusion sets (recforge.exclusions.Exclusions; None: no store, /feedback refused)
    feedback: Any = None
    popular_order: np.ndarray | None = None  # item indices by popularity, ties by index (set at load)

    @property
    def user_states(self) -> np.ndarray | None:
        """The served model's cached user states (None when it has none)."""
        return self.states.get(self.primary)

    # loading a package, choosing a model per path and warming up: recforge.engine_load
    load = classmethod(load_engine)

    # ---- helpers -------------------------------------------------------------------------------------------

    def top(self, name: str, user: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Model ``name``'s top-``k`` for one known user (cached states when the model has them)."""
        model = self.models[name]
        users = np.array([user])
        if name in self.states:
            return model.recommend_states(users, self.states[name][users], k=k, exclude_seen=exclude_seen)
        return model.recommend(users, k=k, exclude_seen=exclude_seen)

    def _history(self, user: int) -> np.ndarray:
        return self.history_items[self.history_indptr[user] : self.history_indptr[user + 1]]

    def _item_id(self, index: int) -> Any:
        return plain(self.maps.item_ids[index])

    def _rows(self, items: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
        return [(int(i), float(s)) for i, s in zip(np.ravel(items), np.ravel(scores)) if i >= 0 and np.isfinite(s)]

    def _popular(self, k: int, exclude: np.ndarray | None = None) -> list[tuple[int, float]]:
        order = self.popular_order
        if exclude is not None and len(exclude):
            order = order[~np.isin(order, exclude)]
        order = order[:k]
        return [(int(i), float(self.popularity[i])) for i in order]

    def _answer(
        self,
        rows,
        model: str,
        *,
        fallback: str | None = None,
        user: int | None = None,
        user_id: Any = None,
        explain: bool = False,
        unknown: list[Any] | tuple = (),
    ) -> Recommendations:
        items, unexplained = [], 0
        explaining = explain and user is not None
        deadline = time.monotonic() + self.explain_budget_s
        for index, score in rows:
            explanation = None
            if explaining:
                # checked before each item: the budget is overrun by at most one explainer call
                if len(items) < self.max_explained and time.monotonic() < deadline:
                    explanation = self._explain(user, index)["explanation"]
                else:
                    unexplained += 1
            items.append(
                RecommendedItem(
                    item_id=self._item_id(index), title=self.titles[index], score=score, explanation=explanation
                )
            )
        return Recommendations(
            items=items,
            model=model,
            fallback=fallback,
            user_id=user_id,
            unknown_item_ids=list(unknown[:MAX_ECHOED_IDS]),
            unknown_item_count=len(unknown),
            unexplained=unexplained,
        )

    @staticmethod
    def _check_k(k: int) -> int:
        if not 1 <= int(k) <= MAX_K:
            raise BadRequestError(f"k must be between 1 and {MAX_K}, got {k}")
        return int(k)

    # ---- requests ------------------------------------------------------------------------------------------

    def recommend(
        self, user_id: Any, k: int = 10, *, exclude_seen: bool = True, explain: bool = False
    ) -> Recommendations:
        """Top-k for a known user (original id, str or int); unknown users get the popular list."""
        k = self._check_k(k)
        user = self.maps.lookup_user(user_id)
        if user < 0:
            return self._answer(self._popular(k), "popularity", fallback="popular", user_id=user_id)
        # items the user bought, rated or disliked through /feedback since training: asked for k + as many, left out
        excluded, liked = dense_feedback(self.feedback, self.maps, user) if exclude_seen else (None, None)
        want = asked_for(k, excluded, len(self.titles))
        model = self.primary
        if liked is not None and self.fold_in_model is not None:
            # feedback.foldin: the user's new interests join their trained history, folded in as a session is
            history = np.concatenate([self._history(user), liked])[-MAX_HISTORY:]
            items, scores, model = self._fold_in(history, want)
        elif self.primary == RERANK:
            # a known user with no new events: the rerank stage's own list, precomputed at package time
            stored = self.reranker.precomputed(user, want) if exclude_seen else None
            if stored is not None:
                items, scores = stored
            else:
                lists = {
                    name: self.top(name, user, self.reranker.per_model, exclude_seen) for name in self.reranker.models
                }
                items, scores = self.reranker.rank(user, lists, want)
        else:
            items, scores = self.top(self.primary, user, want, exclude_seen)
        items, scores = leave_out(items, scores, excluded, k)
        return self._answer(
            self._rows(items, scores), model, user=user, user_id=plain(self.maps.user_ids[user]), explain=explain
        )

    def _fold_in(self, known: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-``k`` (items, scores, model) for a history of dense items: the session path of /recommend/history."""
        if self.reranks_sessions:
            # the second stage for a session: each candidate model folds the history in, then the features
            # of a user with exactly this history (recforge.online_rerank.OnlineReranker.rank_history)
            per_model = self.reranker.per_model
            lists = {
                name: self.models[name].recommend_history(known, k=per_model, exclude_seen=True)
                for name in self.reranker.models
            }
            items, scores = self.reranker.rank_history(known, lists, k)
            return items, scores, RERANK
        items, scores = self.models[self.fold_in_model].recommend_history(known, k=k, exclude_seen=True)
        return items, scores, self.fold_in_model

    def record_feedback(self, events: list[dict[str, Any]]) -> FeedbackAck:
        """Store a batch of feedback events (recforge.feedback checks them); answered after the commit."""
        if self.feedback is None:
            raise BadRequestError("this service has no feedback store (feedback.enabled: false)")
        result = self.feedback.store.add(events)
        self.feedback.forget(str(event.get("user_id")) for event in events)  # this worker sees them at once
        return FeedbackAck(received=result.received, stored=result.stored, duplicates=result.duplicates)

    def recommend_text(self, text: str, k: int = 10) -> Recommendations:
        """Cold start from a free-text description of a user's taste."""
        k = self._check_k(k)
        if not text or not text.strip():
            raise BadRequestError("text must not be empty")
        if self.text_model is not None:
            items, scores = self.models[self.text_model].recommend_text(text, k)
            return self._answer(self._rows(items, scores), self.text_model)
        if self.text_encoder is not None and self.item_vectors is not None:
            vector = np.asarray(self.text_encoder.encode([text]), dtype=np.float32)
            if np.any(vector):
                items, scores = top_k(vector @ self.item_vectors.T, k)
                return self._answer(self._rows(items, scores), f"text:{self.manifest['encoders'][0]}")
        return self._answer(self._popular(k), "popularity", fallback="popular")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts`` with the served text encoder ([n, dim] float32)."""
        encoder = self.text_encoder
        if encoder is None and self.text_model is not None:
            encoder = self.models[self.text_model].encoder
        if encoder is None:
            raise BadRequestError("this package has no text encoder (add one to encode.encoders and a content model)")
        return np.asarray(encoder.encode(list(texts)), dtype=np.float32)

    def recommend_history(self, item_ids: list[Any], k: int = 10) -> Recommendations:
        """An anonymous session: fold in an item history (time order); unknown items are ignored and listed."""
        k = self._check_k(k)
        indices = [self.maps.lookup_item(i) for i in item_ids]
        unknown = [i for i, index in zip(item_ids, indices) if index < 0]
        known = np.array([i for i in indices if i >= 0], dtype=np.int64)
        if not len(known) or self.fold_in_model is None:
            return self._answer(self._popular(k, exclude=known), "popularity", fallback="popular", unknown=unknown)
        items, scores, model = self._fold_in(known, k)
        return self._answer(self._rows(items, scores), model, unknown=unknown)

    def similar_items(self, item_id: Any, k: int = 10) -> Recommendations:
        k = self._check_k(k)
        index = self.maps.lookup_item(item_id)
        if index < 0:
            raise NotFoundError(f"unknown item_id {item_id!r}")
        if self.similar_model is not None:
            items, scores = self.models[self.similar_model].similar_items(index, k=k)
            return self._answer(self._rows(items, scores), self.similar_model)
        if self.item_vectors is not None:
            scores = self.item_vectors @ self.item_vectors[index]
            seen = history_row([index], len(scores))
            items, top = top_k(scores[None, :], k, seen=seen)
            return self._answer(self._rows(items, top), f"embeddings:{self.manifest['encoders'][0]}")
        return self._answer(self._popular(k, exclude=np.array([index])), "popularity", fallback="popular")

    def explain(self, user_id: Any, item_id: Any) -> Explanation:
        user = self.maps.lookup_user(user_id)
        if user < 0:
            raise NotFoundError(f"unknown user_id {user_id!r}")
        index = self.maps.lookup_item(item_id)
        if index < 0:
            raise NotFoundError(f"unknown item_id {item_id!r}")
        result = self._explain(user, index)
        return Explanation(
            user_id=plain(self.maps.user_ids[user]),
            item_id=self._item_id(index),
            title=self.titles[index],
            explanation=result["explanation"],
            evidence=result["evidence"],
        )

    @property
    def reranks_sessions(self) -> bool:
        """Whether /recommend/history runs the second stage (the re-ranker is served and models fold in)."""
        return self.primary == RERANK and self.reranker is not None and self.fold_in_model is not None

    def evidence(self, user: int, index: int) -> dict[str, Any]:
        """:func:`recforge.explain.evidence` for dense ``user`` and item ``index`` over the packaged history
        and the packaged profile keywords."""
        keywords = explain.profile_keywords(self.profiles, user, self.maps.user_ids[user])
        return explain.evidence(self.item_table, self._history(user), index, user_keywords=keywords)

    def _explain(self, user: int, index: int) -> dict[str, Any]:
        """Evidence and explanation; the text comes from the explanation cache when this (user, item)
        was explained before (the explainer runs once per pair while the pair stays cached)."""
        found = self.evidence(user, index)
        text = self.explanations.get((user, index))
        if text is None:
            text = explain.explain_text(
                self.explainer, plain(self.maps.user_ids[user]), self._item_id(index), found, name=self.explainer_name
            )
            self.explanations.put((user, index), text)
        return {"explanation": text, "evidence": found}

    def metadata(self) -> dict[str, Any]:
        k = self.params.evaluate.k
        # the exact model-store tag (content hash included) the package records; older packages: name:version
        version = self.manifest.get("tag") or f"{self.manifest['name']}:{self.manifest['version']}"
        return {
            "model_tag": version,
            "model_version": version,  # what X-Recforge-Model-Version names (recforge.follow)
            "data_hash": self.manifest["data_hash"],
            "params_hash": self.manifest["params_hash"],
            "created": self.manifest["created"],
            "model": self.primary,
            "model_reason": self.model_reason,
            "models": self.manifest["models"],
            "text_path": self.text_model
            or (f"text:{self.manifest['encoders'][0]}" if self.text_encoder is not None else "popularity"),
            "history_path": RERANK if self.reranks_sessions else self.fold_in_model or "popularity",
            "similar_items_path": self.similar_model
            or ("embeddings" if self.item_vectors is not None else "popularity"),
            "explainer": self.explainer_name,
            "rerank_packaged": bool(self.manifest.get("rerank")),
            "rerank_served": self.primary == RERANK,
            "rerank_precomputed": self.reranker is not None and self.reranker.lists is not None,
            "rerank_note": self.rerank_note,
            "device": self.device,
            "cached_user_states": self.user_states is not None,
            "metrics": {
                name: {key: value for key, value in m.items() if key.endswith(f"@{k}")}
                for name, m in self.metrics.items()
            },
            "counts": self.manifest["counts"],
            "example_user_id": self.manifest["example_user_id"],
            "feedback": None
            if self.feedback is None
            else {"store": repr(self.feedback.store), "staleness_s": self.feedback.staleness_s, "worker": os.getpid()},
        }
