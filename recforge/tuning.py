"""Hyper-parameter search on the VALIDATION split (never on test).

A model's options in params.yaml may carry a ``tune:`` grid::

    recommenders:
      itemknn:
        neighbors: 100
        tune:                  # option -> values to try
          shrink: [0, 10, 50]
          weighting: [none, bm25]
        tune_trials: 4         # optional: random search over that many grid points
        tune_metric: ndcg@10   # optional: ndcg@K | recall@K | mrr@K

Each trial fits the model on train (with the validation events in the context,
so models that early-stop can use them) and scores the validation users' held-
out items with full ranking, history excluded. The best trial's options replace
the configured ones; the train stage records every trial in the model's
meta.json (``tuning``) and ``recforge models`` shows them.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recforge import registry
from recforge.interactions import Interactions
from recforge.metrics import padded_truth, ranking_metrics
from recforge.protocols import FitContext, Refittable
from recforge.ranking import batched

log = logging.getLogger(__name__)

TUNE_KEYS = ("tune", "tune_trials", "tune_metric")


@dataclass
class TuningResult:
    """The chosen options, the metric they reached and every trial."""

    options: dict[str, Any]
    metric: str
    best_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best_score": self.best_score, "chosen": self.options, "trials": self.trials}


def grid_points(grid: dict[str, list[Any]], trials: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every combination of ``grid`` (or ``trials`` of them, drawn without replacement)."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError("tune: expected a mapping option -> list of values")
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    points = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if trials and trials < len(points):
        chosen = np.random.default_rng(seed).choice(len(points), trials, replace=False)
        points = [points[i] for i in sorted(chosen)]
    return points


def validation_metrics(model: Any, train: Interactions, validation: Interactions, k: int = 10) -> dict[str, float]:
    """NDCG@k, Recall@k and MRR@k of ``model`` on the validation events (one or more per user)."""
    users = np.unique(validation.user_ids)
    truth = padded_truth(np.searchsorted(users, validation.user_ids), validation.item_ids, len(users))
    top = np.full((len(users), k), -1, dtype=np.int64)
    for part in batched(len(users), 1024):
        top[part] = model.recommend(users[part], k=k, exclude_seen=True)[0]
    return ranking_metrics(top, truth, k, metrics=("ndcg", "recall", "mrr"))


def tune_model(
    plugin: str, options: dict[str, Any], train: Interactions, context: FitContext
) -> tuple[Any, dict[str, Any], TuningResult]:
    """Search ``options['tune']`` on ``context.validation``; return the best fitted
    model, its options (without the tune keys) and the trials."""
    validation = context.validation
    if validation is None or not len(validation):
        raise ValueError("tuning needs validation events (the train stage passes the val split)")
    base = {key: value for key, value in options.items() if key not in TUNE_KEYS}
    metric = str(options.get("tune_metric", "ndcg@10"))
    k = int(metric.split("@")[1]) if "@" in metric else 10
    points = grid_points(options["tune"], options.get("tune_trials"), seed=context.seed)
    best_model, best_options, best_score, trials = None, base, -np.inf, []
    for number, point in enumerate(points, 1):
        trial_options = {**base, **point}
        started = time.perf_counter()
        model = registry.recommenders.create(plugin, **trial_options).fit(train, context=context)
        seconds = time.perf_counter() - started
        scores = validation_metrics(model, train, validation, k=k)
        record = {
            "options": point,
            **{key: round(value, 5) for key, value in scores.items()},
            "fit_seconds": round(seconds, 2),
        }
        if isinstance(model, Refittable):
            record["refit_options"] = model.refit_options()
        trials.append(record)
        log.info("tune %s trial %d/%d %s -> %s=%.4f", plugin, number, len(points), point, metric, scores[metric])
        if scores[metric] > best_score:
            best_model, best_options, best_score = model, trial_options, scores[metric]
        else:
            del model
    result = TuningResult(options=best_options, metric=metric, best_score=round(float(best_score), 5), trials=trials)
    log.info("tune %s: chose %s (%s=%.4f)", plugin, {k: best_options[k] for k in points[0]}, metric, best_score)
    return best_model, best_options, result
