"""The second stage online: every known user's precomputed list, and the packaged re-ranker for the rest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recforge import registry
from recforge.artifacts import load_model_dir, read_meta
from recforge.interactions import IdMaps
from recforge.packaging import Package
from recforge.protocols import CompiledScoring

log = logging.getLogger(__name__)

RERANK = "rerank"  # the served name of the second stage, and its folder in a package


@dataclass
class OnlineReranker:
    """The packaged re-ranker, one user at a time.

    Exactly the offline test-part protocol: the candidate models' top
    ``per_model`` lists for the user (the packaged models are the train+val
    refits), the features of :class:`recforge.features.FeatureContext` over
    the packaged train+val history (built once at load: O(users + items +
    events)), then the mean LambdaRank score of the fold models; ties go to the
    lower item index, as in ``recforge.rerank.ranked_lists``.

    A known user with no new events gets exactly the rerank stage's test-part
    list, so the package carries it (``rerank_lists.npz``, written by
    :func:`recforge.packaging.build_package` for every known user):
    :meth:`precomputed` is a lookup. The online path answers what the lists
    cannot: ``exclude_seen=False`` and ``k`` above the list length.
    """

    model: Any
    context: Any
    models: list[str]
    per_model: int
    maps: IdMaps
    features: list[str]  # the re-ranker's feature columns, in its order
    # CSR over dense users: indptr [n_users + 1], items (dense, best first), scores; and the list length
    lists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    length: int = 0

    @classmethod
    def load(cls, package: Package, models: dict[str, Any]) -> tuple[OnlineReranker | None, str | None]:
        """(the re-ranker, None), or (None, why it cannot be served) when the package's re-ranker cannot run online."""
        from recforge.features import LLM_PREFIXES, SENTIMENT_PREFIXES, FeatureContext, PartData
        from recforge.profiles import settings_from_params

        folder = package.directory / RERANK
        if not package.manifest.get("rerank") or not (folder / "meta.json").exists():
            return None, "no re-ranker in the package"
        meta = read_meta(folder)
        if meta.get("fallback"):
            return None, f"no re-ranker was trained (the lists used {meta['fallback']})"
        missing = [m for m in meta["models"] if m not in models]
        offline_only = [f for f in meta["features"] if f.startswith(LLM_PREFIXES + SENTIMENT_PREFIXES)]
        if missing:
            return None, f"candidate models {missing} are not in the package"
        if offline_only:
            return None, f"features {offline_only} are computed offline only (LLM scorer, review sentiment)"
        history = package.events()
        if not history.timestamps.any() and len(history):
            return None, "the package's history has no timestamps (packaged by an older recforge)"
        params = package.params
        data = PartData(
            part="full",
            history=history,
            maps=package.maps,
            items=package.items,
            lists={},
            embeddings={name: package.embeddings(name) for name in meta["encoders"]},
            text_fields=params.encode.fields,
            profile_settings=settings_from_params(params),
            profiles=package.profiles(list(meta["encoders"])),  # as the rerank stage reads them offline
        )
        model, _ = load_model_dir(folder, registry.rerankers, meta=meta)
        if isinstance(model, CompiledScoring):  # native trees for the per-request scoring (same scores)
            from recforge.llm import models_dir

            compiled = model.compile_for_serving(folder, models_dir() / "compiled-rerankers")
            log.info("online re-ranker: %s", "compiled trees" if compiled else "LightGBM trees")
        stored = package.rerank_lists()
        if stored is not None and len(stored[0]) != len(package.maps.user_ids) + 1:
            return None, "the precomputed lists do not cover the package's users; repackage"
        return cls(
            model=model,
            context=FeatureContext(data),
            models=list(meta["models"]),
            per_model=int(meta["candidates_per_model"]),
            maps=package.maps,
            features=list(meta["features"]),
            lists=stored[:3] if stored is not None else None,
            length=stored[3] if stored is not None else 0,
        ), None

    def precomputed(self, user: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Dense ``user``'s stored top-``k`` (items, scores), or None when the stored list cannot answer ``k``.

        A stored list shorter than the list length is the user's whole candidate union: it answers any ``k``.
        """
        if self.lists is None:
            return None
        indptr, items, scores = self.lists
        lo, hi = int(indptr[user]), int(indptr[user + 1])
        if k > self.length and hi - lo >= self.length:
            return None
        hi = min(hi, lo + k)
        return items[lo:hi], scores[lo:hi]

    def rows(self, user: int, lists: dict[str, tuple[np.ndarray, np.ndarray]], context: Any = None) -> dict | None:
        """The candidate rows the model scores for dense ``user`` of ``context`` (the package's users by
        default, a session's for :meth:`rank_history`): the columns of ``FeatureContext.add`` over
        ``dense_candidate_frame`` as arrays, without ids (the pandas frames cost about 1.5 ms of a 30-item
        session's 14 ms). None when no model proposed a valid item."""
        from recforge.candidates import dense_candidate_columns

        dense = {}
        for name, (items, scores) in lists.items():
            items, scores = np.ravel(items), np.ravel(scores)
            keep = (items >= 0) & np.isfinite(scores)
            items, scores = items[keep][: self.per_model], scores[keep][: self.per_model]
            ranks = np.arange(1, len(items) + 1, dtype=np.float32)
            dense[name] = (np.full(len(items), user, dtype=np.int64), items.astype(np.int64), scores, ranks)
        if not any(len(block[1]) for block in dense.values()):
            return None
        rows = dense_candidate_columns(dense, len(self.maps.item_ids))
        ranks = np.column_stack([values for name, values in rows.items() if name.endswith("_rank")])
        context = context if context is not None else self.context
        rows.update(context.columns(rows["user"], rows["item"], ranks.astype(np.float64)))
        return rows

    def rank(
        self,
        user: int,
        lists: dict[str, tuple[np.ndarray, np.ndarray]],
        k: int,
        *,
        context: Any = None,
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (dense items, scores) from each candidate model's (items, scores) for dense ``user``
        (of ``context``, see :meth:`rows`). ``timings``: seconds spent building the features and scoring are
        added to it (bench/serve.py)."""
        started = time.perf_counter()
        rows = self.rows(user, lists, context)
        if rows is None:
            return np.zeros(0, np.int64), np.zeros(0)
        missing = [name for name in self.features if name not in rows]
        if missing:
            raise ValueError(f"candidate rows lack feature columns {missing}")
        featured = time.perf_counter()
        scores = np.asarray(self.model.rerank(np.column_stack([rows[name] for name in self.features])), np.float64)
        items = rows["item"]
        order = np.lexsort((items, -scores))[:k]
        if timings is not None:
            timings["features"] = timings.get("features", 0.0) + featured - started
            timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - featured
        return items[order], scores[order]

    def rank_history(
        self,
        history: np.ndarray,
        lists: dict[str, tuple[np.ndarray, np.ndarray]],
        k: int,
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for an anonymous session: dense ``history`` items (time order) and each candidate
        model's fold-in (items, scores) for it; the features of a user with exactly that history
        (:meth:`recforge.features.FeatureContext.for_history`), then the fold models' mean score."""
        started = time.perf_counter()
        context = self.context.for_history(history)
        if timings is not None:
            timings["features"] = timings.get("features", 0.0) + time.perf_counter() - started
        return self.rank(0, lists, k, context=context, timings=timings)
