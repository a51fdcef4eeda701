"""Loading a package into an :class:`recforge.engine.Engine`, once per worker.

``Engine.load`` opens a package (:class:`recforge.packaging.Package`: every checksum verified),
loads every model once through the plugin registry, chooses the served model
(:func:`recforge.selection.choose_model`) and, per request path, the model that answers it by
ability (the optional protocols of :mod:`recforge.protocols`, never a plugin name); it caches what
requests reuse (normalised item embeddings, popularity order, the item table explanations read,
user states of models with the :class:`recforge.protocols.UserStates` ability) and runs every path
once so the first request is not the slow one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recforge import explain
from recforge.artifacts import plain
from recforge.errors import RecforgeError
from recforge.online_rerank import RERANK
from recforge.packaging import Package
from recforge.protocols import FitContext, FoldIn, SimilarItems, TextQuery, UserStates
from recforge.schemas import EXPLAIN_BUDGET_S, MAX_EXPLAINED
from recforge.selection import AUTO, best_model, choose_model
from recforge.text import item_titles

if TYPE_CHECKING:
    from recforge.engine import Engine

log = logging.getLogger("recforge.engine")


def load_engine(
    cls: type[Engine],
    directory: str | Path,
    *,
    device: str = "auto",
    model: str | None = None,
    verify: bool = True,
    max_explained: int = MAX_EXPLAINED,
    explain_budget_s: float = EXPLAIN_BUDGET_S,
    feedback_url: str | None = None,
    feedback_staleness_s: float = 1.0,
    feedback_foldin: bool = False,
) -> Engine:
    """Load a package; ``model`` overrides the served model (default: serve.model, then best validation NDCG).

    ``max_explained`` and ``explain_budget_s`` bound the explanations of one /recommend request.
    ``feedback_url`` opens the feedback store (recforge.feedback): /feedback records events there and a
    known user's /recommend leaves out what they bought, rated or disliked, at most
    ``feedback_staleness_s`` late; with ``feedback_foldin`` the items they viewed, clicked, bought or rated
    well since training are folded into their history (as a session is) when a model can fold in.
    """
    from recforge.workspace import resolve_device

    package = Package.open(directory, verify=verify)
    params, manifest = package.params, package.manifest
    device = resolve_device(device)
    indptr, history = package.history()
    context = FitContext(
        items=package.items, maps=package.maps, embeddings=package.embeddings, seed=params.seed, device=device
    )
    models = package.load_models(context)
    if not models:
        raise RecforgeError(f"{package.directory}: the package holds no models")
    metrics = package.metrics
    asked = model or params.serve.model or AUTO
    primary, reason, reranker, rerank_note = choose_model(asked, package, models, metrics, params.evaluate.k)

    engine = cls(
        directory=package.directory,
        manifest=manifest,
        params=params,
        metrics=metrics,
        items=package.items,
        maps=package.maps,
        models=models,
        primary=primary,
        history_indptr=indptr,
        history_items=history,
        popularity=np.bincount(history, minlength=len(package.items)).astype(np.float64),
        device=device,
        reranker=reranker,
        rerank_note=rerank_note,
        model_reason=reason,
        max_explained=max_explained,
        explain_budget_s=explain_budget_s,
    )
    if feedback_url:
        from recforge.exclusions import Exclusions
        from recforge.feedback import FeedbackStore

        engine.feedback = Exclusions(FeedbackStore(feedback_url), feedback_staleness_s, interests=feedback_foldin)
    _prepare(engine, package)
    tag = manifest.get("tag") or f"{manifest['name']}:{manifest['version']}"
    log.info("loaded %s (serving %s on %s)", tag, primary, device)
    return engine


def _prepare(engine: Engine, package: Package) -> None:
    """Choose a model per path by ability, cache what requests reuse, warm every path up."""
    engine.titles = item_titles(engine.items)
    # popular list once: ties by index, like top_k
    engine.popular_order = np.lexsort((np.arange(len(engine.popularity)), -engine.popularity))
    encoders = package.encoders
    if encoders:
        engine.item_vectors = np.ascontiguousarray(package.embeddings(encoders[0]), dtype=np.float32)
    evidence_encoder = next((name for name in explain.explanation_encoders(engine.params) if name in encoders), None)
    vectors = package.embeddings(evidence_encoder) if evidence_encoder is not None else None
    engine.item_table = explain.ItemTable.build(engine.items, engine.params.encode.fields, vectors)
    engine.profiles = explain.read_profiles(package.profiles_dir)  # the encode stage's, as packaged
    models = engine.models
    lead = engine.primary if engine.primary in models else best_model(models, engine.metrics, engine.params.evaluate.k)
    ordered = [lead] + [n for n in models if n != lead]
    engine.text_model = next((n for n in ordered if isinstance(models[n], TextQuery)), None)
    if engine.text_model is None and encoders:
        engine.text_encoder = package.load_encoder(encoders[0])
    # a model that scores from a state of the ordered history folds a session in the same way: first choice
    stateful = [n for n in ordered if isinstance(models[n], UserStates)]
    engine.fold_in_model = next((n for n in stateful + ordered if isinstance(models[n], FoldIn)), None)
    engine.similar_model = next((n for n in ordered if isinstance(models[n], SimilarItems)), None)
    engine.explainer, engine.explainer_name = explain.load_explainer(
        engine.params.serve.explainer, engine.params.serve.explainer_options
    )
    candidates = engine.reranker.models if engine.primary == RERANK else [engine.primary]
    for name in candidates:
        states = cached_user_states(models[name], name)
        if states is not None:
            engine.states[name] = states
    warm_up(engine, candidates)


def warm_up(engine: Engine, candidates: list[str]) -> None:
    """Run every path once so the first request is not the slow one."""
    for name in {*candidates, engine.fold_in_model} - {None}:
        try:
            if name in candidates:
                engine.top(name, 0, 10, True)
            else:
                engine.models[name].recommend_history(np.array([0]), k=10)
        except Exception as exc:  # a warm-up failure shows up on the real request with its message
            log.warning("warm-up of %s failed: %s", name, exc)
    if engine.primary == RERANK and engine.maps.user_ids.size:
        try:
            engine.recommend(plain(engine.maps.user_ids[0]), 10)
            engine.recommend(plain(engine.maps.user_ids[0]), 10, exclude_seen=False)  # the online path
        except Exception as exc:
            log.warning("warm-up of the re-ranker failed: %s", exc)
    if engine.text_model or engine.text_encoder is not None:
        try:
            engine.recommend_text("warm up", 10)
        except Exception as exc:
            log.warning("warm-up of the text path failed: %s", exc)


def cached_user_states(model, name: str) -> np.ndarray | None:
    """The user states of ``model`` (named ``name``) when it has the UserStates ability, computed once here.

    Each request then scores with ``recommend_states``: one small product
    instead of, for a sequential model, a recurrent pass over its history.
    Checked against the model's own ``recommend`` on a few users; any
    mismatch disables it.
    """
    if not isinstance(model, UserStates):
        return None
    try:
        states = np.ascontiguousarray(model.user_states(), dtype=np.float32)
        probe = np.linspace(0, len(states) - 1, num=min(5, len(states))).astype(int)
        for user in probe:
            expected, _ = model.recommend(np.array([user]), k=10)
            got, _ = model.recommend_states(np.array([user]), states[[user]], k=10)
            if not np.array_equal(expected, got):
                log.warning("%s: cached user states disagree with recommend(); scoring online", name)
                return None
        log.info("%s: cached %d user states", name, len(states))
        return states
    except Exception as exc:  # any surprise: the model's own recommend() still works
        log.warning("%s: no cached user states (%s)", name, exc)
        return None
