"""Content-based recommender: cosine between a user's profile and the item embeddings."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recforge import registry
from recforge.errors import RecforgeError
from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.profiles import ProfileSettings, blend, profile_vector, profile_vectors, user_texts
from recforge.protocols import FitContext
from recforge.ranking import history_row, top_k
from recforge.text import item_texts

log = logging.getLogger(__name__)

DEFAULT_FIELDS = ["title", "text", "genres"]


class ContentRecommender:
    """Scores item ``i`` for user ``u`` by ``cos(profile_u, embedding_i)``.

    The profile is the recency- and rating-weighted mean of the embeddings of
    the items in the user's TRAINING history (recforge.profiles), so items
    nobody has interacted with are ranked like any other (cold-start items).
    Also: ``similar_items`` (nearest embeddings), ``recommend_history``
    (fold-in of an unseen user) and ``recommend_text`` (cold start from free
    text, embedded by the same fitted encoder).

    Options: ``encoder`` (a registered encoder; its embeddings come from the
    encode stage when present), ``half_life_events`` / ``half_life_days`` /
    ``rating_weight`` (default: the encode.profile_* settings),
    ``user_text_weight`` (weight of the user's own text from the users table;
    0 by default because loaders may build that text from every review,
    test included), ``popularity_weight`` (adds ``w * log1p(count)/max`` so ties
    and weak profiles lean to popular items; 0 = pure content).
    """

    def __init__(
        self,
        encoder: str = "tfidf",
        fields: list[str] | None = None,
        half_life_events: float | None | str = "params",
        half_life_days: float | None | str = "params",
        rating_weight: float | str = "params",
        user_text_weight: float = 0.0,
        popularity_weight: float = 0.0,
        center: bool = False,
    ) -> None:
        self.encoder_name = encoder
        self.fields = fields
        self.half_life_events = half_life_events
        self.half_life_days = half_life_days
        self.rating_weight = rating_weight
        self.user_text_weight = float(user_text_weight)
        self.popularity_weight = float(popularity_weight)
        self.center = bool(center)
        self.offset: np.ndarray | None = None
        self.settings: ProfileSettings = ProfileSettings()
        self.encoder: Any = None
        self.item_vectors: np.ndarray | None = None
        self.user_vectors: np.ndarray | None = None
        self.popularity: np.ndarray | None = None
        self.seen: sp.csr_matrix | None = None
        self.profile_source = "computed"  # or "artifact": the encode stage's profiles (context.profiles)

    # ---- fitting -------------------------------------------------------------------------------------------

    def _resolve_settings(self, base: ProfileSettings | None) -> ProfileSettings:
        base = base if base is not None else ProfileSettings()
        pick = lambda value, default: default if value == "params" else value  # noqa: E731
        return ProfileSettings(
            half_life_events=pick(self.half_life_events, base.half_life_events),
            half_life_days=pick(self.half_life_days, base.half_life_days),
            rating_weight=float(pick(self.rating_weight, base.rating_weight)),
            keywords=base.keywords,
        )

    def _encoder_and_vectors(self, context: FitContext) -> tuple[Any, np.ndarray]:
        if self.fields is None and context.encoder_and_embeddings is not None:
            # the encode stage's encoder and item vectors (encoded through its cache if it made none)
            encoder, vectors = context.encoder_and_embeddings(self.encoder_name)
            return encoder, np.asarray(vectors, dtype=np.float32)
        texts = item_texts(context.items, self.fields or context.text_fields or DEFAULT_FIELDS)
        vectors = None
        if context.embeddings is not None and self.fields is None:
            try:
                vectors = np.asarray(context.embeddings(self.encoder_name), dtype=np.float32)
            except RecforgeError as exc:
                log.info("content: %s; encoding the items now", exc)
        encoder = registry.encoders.create(self.encoder_name).fit(texts)
        if vectors is None:
            vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
        return encoder, vectors

    def _artifact_profiles(self, train: Interactions, context: FitContext) -> np.ndarray | None:
        """The encode stage's profiles of ``train`` (``context.profiles``) when they are exactly what
        this model would compute: the stage's item vectors (no own ``fields``, not centred) and its
        profile weighting; None otherwise (the model computes them with the same functions)."""
        if context.profiles is None or context.encoder_and_embeddings is None or self.fields is not None:
            return None
        if self.center or self.settings.weighting != (context.profile_settings or ProfileSettings()).weighting:
            return None
        vectors = context.profiles(self.encoder_name, train)
        if vectors is None or vectors.shape != (train.n_users, self.item_vectors.shape[1]):
            return None
        return np.asarray(vectors, dtype=np.float32)

    def fit(self, train: Interactions, *, context: FitContext) -> ContentRecommender:
        self.settings = self._resolve_settings(context.profile_settings)
        self.encoder, vectors = self._encoder_and_vectors(context)
        self.offset = vectors.mean(axis=0) if self.center else np.zeros(vectors.shape[1], dtype=np.float32)
        self.item_vectors = self._centered(vectors)
        if len(self.item_vectors) != train.n_items:
            raise RecforgeError(f"content: {len(self.item_vectors)} item embeddings for {train.n_items} items")
        self.user_vectors = self._artifact_profiles(train, context)
        self.profile_source = "artifact" if self.user_vectors is not None else "computed"
        if self.user_vectors is None:
            self.user_vectors = profile_vectors(train, self.item_vectors, self.settings)
        log.info("content[%s]: user profiles %s", self.encoder_name, self.profile_source)
        if self.user_text_weight > 0 and context.users is not None and context.maps is not None:
            texts, has_text = user_texts(context.users, context.maps, context.user_fields or ["text"])
            rows = np.nonzero(has_text)[0]
            if len(rows):
                encoded = self.encoder.encode([texts[r] for r in rows])
                for row, vector in zip(rows, encoded):
                    self.user_vectors[row] = blend(self.user_vectors[row], vector, self.user_text_weight)
        counts = np.log1p(train.item_counts)
        self.popularity = (counts / counts.max() if counts.max() > 0 else counts).astype(np.float32)
        self.seen = train.csr
        return self

    def _centered(self, vectors: np.ndarray) -> np.ndarray:
        """Embeddings minus the mean item embedding, re-normalised (``center``; LLM states are anisotropic)."""
        if not self.center:
            return np.asarray(vectors, dtype=np.float32)
        shifted = np.atleast_2d(vectors).astype(np.float64) - self.offset
        norms = np.linalg.norm(shifted, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return (shifted / norms).astype(np.float32)

    # ---- scoring -------------------------------------------------------------------------------------------

    def _scores(self, vectors: np.ndarray) -> np.ndarray:
        scores = np.atleast_2d(vectors) @ self.item_vectors.T
        if self.popularity_weight:
            scores = scores + self.popularity_weight * self.popularity[None, :]
        return scores

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids, dtype=np.int64)
        seen = self.seen[user_ids] if exclude_seen else None
        return top_k(self._scores(self.user_vectors[user_ids]), k, seen=seen, candidates=candidates)

    def _history_mask(self, item_ids: np.ndarray) -> sp.csr_matrix | None:
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if not len(item_ids):
            return None
        return history_row(item_ids, len(self.item_vectors))

    def recommend_history(self, item_ids, *, k, exclude_seen=True, timestamps=None, ratings=None):
        """Top-k for a user unseen in training, from their item history in time order."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        vector = profile_vector(item_ids, self.item_vectors, self.settings, timestamps=timestamps, ratings=ratings)
        seen = self._history_mask(item_ids) if exclude_seen else None
        return top_k(self._scores(vector), k, seen=seen)

    def embed_text(self, text: str) -> np.ndarray:
        """The encoder's embedding of free text ([dim])."""
        return self._centered(np.asarray(self.encoder.encode([text]), dtype=np.float32))[0]

    def recommend_text(self, text: str, k: int, *, exclude: np.ndarray | None = None):
        """Cold start: top-k items for a free-text description of a user's taste."""
        seen = self._history_mask(exclude) if exclude is not None else None
        return top_k(self._scores(self.embed_text(text)), k, seen=seen)

    def similar_items(self, item_id: int, *, k: int):
        scores = self.item_vectors @ self.item_vectors[int(item_id)]
        seen = self._history_mask(np.array([int(item_id)]))
        return tuple(a[0] for a in top_k(scores[None, :], k, seen=seen))

    # ---- persistence ---------------------------------------------------------------------------------------

    def config(self) -> dict:
        return {
            "encoder": self.encoder_name,
            "fields": self.fields,
            "half_life_events": self.half_life_events,
            "half_life_days": self.half_life_days,
            "rating_weight": self.rating_weight,
            "user_text_weight": self.user_text_weight,
            "popularity_weight": self.popularity_weight,
            "center": self.center,
        }

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        np.savez(
            directory / "content.npz",
            item_vectors=self.item_vectors,
            user_vectors=self.user_vectors,
            popularity=self.popularity,
            offset=self.offset,
            **csr_to_arrays(self.seen, "seen"),
        )
        (directory / "config.json").write_text(
            json.dumps({"config": self.config(), "settings": self.settings.to_dict()}, indent=2)
        )
        self.encoder.save(directory / "encoder")

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> ContentRecommender:
        directory = Path(directory)
        state = json.loads((directory / "config.json").read_text())
        model = cls(**state["config"])
        model.settings = ProfileSettings(**state["settings"])
        with np.load(directory / "content.npz", allow_pickle=False) as data:
            model.item_vectors = data["item_vectors"]
            model.user_vectors = data["user_vectors"]
            model.popularity = data["popularity"]
            model.offset = data["offset"]
            model.seen = csr_from_arrays(data, "seen")
        model.encoder = registry.encoders.get(model.encoder_name).load(directory / "encoder")
        return model
