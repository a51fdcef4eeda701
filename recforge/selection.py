"""Which model a package serves, and why (``serve.model``: a model name, ``rerank`` or ``auto``)."""

from __future__ import annotations

from typing import Any

from recforge.errors import RecforgeError
from recforge.online_rerank import RERANK, OnlineReranker
from recforge.packaging import Package

AUTO = "auto"  # serve.model: the re-ranker when it is best on validation and can run online, else the best model


def choose_model(
    asked: str, package: Package, models: dict[str, Any], metrics: dict[str, Any], k: int
) -> tuple[str, str, OnlineReranker | None, str | None]:
    """(served model, why, the re-ranker or None, why the re-ranker is not served or None).

    ``asked``: a model name, ``rerank``, or ``auto``: the re-ranker when its
    validation NDCG@k is the best (the rule of :func:`best_model`) and it can
    run online, else the best single model.
    """
    packaged = bool(package.manifest.get("rerank"))
    if asked not in (AUTO, RERANK):
        if asked not in models:
            raise RecforgeError(f"serve.model '{asked}' is not in the package (models: {', '.join(models)})")
        note = f"not asked for (serve.model: {asked})" if packaged else "no re-ranker in the package"
        return asked, f"serve.model: {asked}", None, note
    best_single = best_model(models, metrics, k)
    if asked == AUTO and not (packaged and best_model([*models, RERANK], metrics, k) == RERANK):
        note = (
            f"{best_single} has a better validation ndcg@{k} than the re-ranker"
            if packaged
            else "no re-ranker in the package"
        )
        return (
            best_single,
            f"auto: the best validation ndcg@{k} ({val_score(metrics, best_single, k):.4f})",
            None,
            note,
        )
    reranker, note = OnlineReranker.load(package, models)
    if reranker is None:
        if asked == RERANK:
            raise RecforgeError(
                f"serve.model '{RERANK}' cannot be served: {note} (models: {', '.join(models)})"
                if packaged
                else f"serve.model '{RERANK}' is not in the package (models: {', '.join(models)}); {note}"
            )
        why = f"auto: the re-ranker has the best validation ndcg@{k} but cannot run online ({note}); "
        return best_single, why + f"{best_single} is the best single model", None, note
    how = "known users from lists precomputed at package time" if reranker.lists is not None else "online"
    score = f"{val_score(metrics, RERANK, k):.4f} vs {best_single} {val_score(metrics, best_single, k):.4f}"
    why = "serve.model: rerank" if asked == RERANK else f"auto: the best validation ndcg@{k} ({score})"
    return RERANK, f"{why}; {how}", reranker, None


def val_score(metrics: dict[str, Any], name: str, k: int) -> float:
    """Validation NDCG@k of ``name`` (test NDCG@k when no validation figure; -inf when none)."""
    m = metrics.get(name, {})
    return float(m.get("val", {}).get(f"ndcg@{k}", m.get(f"ndcg@{k}", float("-inf"))))


def best_model(models, metrics: dict[str, Any], k: int) -> str:
    """The packaged model with the best validation NDCG@k (test NDCG@k when no validation figure)."""
    return max(models, key=lambda name: val_score(metrics, name, k))
