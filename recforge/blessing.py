"""Blessing: the candidate is promoted only when it is not worse than production on the same new data.

The protocol (docs/lifecycle.md):

- **Evaluation data**: the held-out spans (``data.spans_held_out``, default the
  newest one; recforge.spans). Ingest never reads them, so the candidate was
  not trained on them, and production, trained before they arrived (the
  registry records its spans), was not either.
- **Lists**: each model's package is loaded as the service loads it
  (:class:`recforge.engine.Engine`) and asked for the top ``k`` of every user
  with an event in the evaluation data, excluding what that package saw;
  a user a model does not know gets its popular list, as it would online.
- **Metric**: ``promote.metric`` (``ndcg@10`` by default) per user against the
  user's evaluation events (:func:`recforge.metrics.ranking_metrics_per_row`),
  averaged; 95 % intervals from ``promote.bootstrap`` resamples of the users,
  the same resamples for both models and their difference.
- **Decision**: ``blessed`` when the candidate's figure is at least
  ``promote.floor`` and at least production's plus ``promote.min_delta``; the
  first model (no production) by the floor alone. With no held-out span the
  first model is scored on its own test split; a later one is rejected (no
  data that neither model has seen).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.artifacts import read_json, write_json, write_text
from recforge.errors import RecforgeError
from recforge.metrics import padded_truth, ranking_metrics_per_row
from recforge.params import Params
from recforge.reports import markdown_table

log = logging.getLogger(__name__)

MAX_EVALUATION_USERS = 200_000


def evaluation_data(params: Params) -> tuple[pd.DataFrame | None, list[str]]:
    """The held-out spans' events (user_id, item_id) and their names; (None, []) when there are none."""
    from recforge.spans import partition, read_span

    _, held = partition(params)
    if not held:
        return None, []
    frame = pd.concat([read_span(path, params)[["user_id", "item_id"]] for path in held], ignore_index=True)
    return frame.drop_duplicates(), [path.name for path in held]


def package_lists(package_dir: str | Path, users: np.ndarray, k: int) -> pd.DataFrame:
    """Each user's top ``k`` from a package, as the service answers (user_id, item_id, rank)."""
    from recforge.engine import Engine

    engine = Engine.load(package_dir, device="cpu")
    rows = []
    for user in users:
        answer = engine.recommend(user.item() if isinstance(user, np.generic) else user, k)
        rows += [(user, item.item_id, rank) for rank, item in enumerate(answer.items, start=1)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


def per_user(lists: pd.DataFrame, truth: pd.DataFrame, users: pd.Index, metric: str) -> np.ndarray:
    """``metric`` (``ndcg@10``) of each of ``users`` (every one has a truth event) from ``lists``."""
    name, k = metric.split("@")
    k = int(k)
    codes, _ = pd.factorize(pd.concat([truth["item_id"], lists["item_id"]], ignore_index=True))
    truth_codes, list_codes = codes[: len(truth)], codes[len(truth) :]
    top = np.full((len(users), k), -1, dtype=np.int64)
    rows = users.get_indexer(lists["user_id"])
    keep = (rows >= 0) & (lists["rank"].to_numpy() <= k)
    top[rows[keep], lists["rank"].to_numpy()[keep] - 1] = list_codes[keep]
    held = padded_truth(users.get_indexer(truth["user_id"]), truth_codes, len(users))
    return ranking_metrics_per_row(top, held, k)[name]


def bootstrap(values: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, list[float]]:
    """95 % percentile intervals of each mean, the users resampled together (paired)."""
    n = len(next(iter(values.values())))
    if resamples == 0 or n == 0:
        return {name: [float("nan"), float("nan")] for name in values}
    rng = np.random.default_rng(seed)
    means: dict[str, list[np.ndarray]] = {name: [] for name in values}
    for start in range(0, resamples, 100):
        index = rng.integers(0, n, size=(min(100, resamples - start), n))
        for name, array in values.items():
            means[name].append(array[index].mean(axis=1))
    return {name: np.quantile(np.concatenate(m), [0.025, 0.975]).round(6).tolist() for name, m in means.items()}


def decide(params: Params, candidate: float, production: float | None, same: bool) -> tuple[str, str]:
    promote = params.promote
    metric = promote.metric
    if same:
        return "rejected", "the candidate was trained on production's data with production's params"
    if candidate < promote.floor:
        return "rejected", f"{metric} {candidate:.4f} is below the floor {promote.floor}"
    if production is None:
        return "blessed", f"first model: {metric} {candidate:.4f} >= floor {promote.floor}"
    delta = candidate - production
    if delta >= promote.min_delta:
        return (
            "blessed",
            f"{metric} {candidate:.4f} vs production {production:.4f}: {delta:+.4f} >= {promote.min_delta}",
        )
    return "rejected", f"{metric} {candidate:.4f} vs production {production:.4f}: {delta:+.4f} < {promote.min_delta}"


def bless(params: Params, candidate_tag: str, candidate_dir: str | Path) -> dict[str, Any]:
    """Score the candidate and production on the evaluation data; the report (also written to reports/)."""
    from recforge import production as registry

    current = registry.current(params)
    truth, names = evaluation_data(params)
    metric = params.promote.metric
    k = int(metric.split("@")[1])
    report: dict[str, Any] = {"metric": metric, "min_delta": params.promote.min_delta, "floor": params.promote.floor}
    if truth is None:
        if current is not None:
            report.update(candidate={"tag": candidate_tag}, production={"tag": current.tag}, evaluation=None)
            report.update(decision="rejected", reason="no held-out span: no data that neither model was trained on")
            return _write(params, report)
        from recforge.workspace import Workspace

        truth, names = Workspace(params).frame("test")[["user_id", "item_id"]], ["test split"]
    users = pd.Index(truth["user_id"].unique())
    if len(users) > MAX_EVALUATION_USERS:
        raise RecforgeError(f"evaluation data: {len(users):,} users, more than {MAX_EVALUATION_USERS:,}")
    scores = {"candidate": per_user(package_lists(candidate_dir, users.to_numpy(), k), truth, users, metric)}
    # the same data and params as production (a tag differs only in its content hash): nothing new to bless
    same = current is not None and current.tag.rsplit("-c", 1)[0] == candidate_tag.rsplit("-c", 1)[0]
    if current is not None and not same:
        scores["production"] = per_user(package_lists(current.package_path, users.to_numpy(), k), truth, users, metric)
        scores["delta"] = scores["candidate"] - scores["production"]
    intervals = bootstrap(scores, params.promote.bootstrap, params.seed)
    value = {name: round(float(array.mean()), 6) for name, array in scores.items()}
    decision, reason = decide(params, value["candidate"], value.get("production"), same)
    report.update(
        candidate={"tag": candidate_tag, "value": value["candidate"], "ci95": intervals["candidate"]},
        production=None
        if current is None
        else {"tag": current.tag, "value": value.get("production"), "ci95": intervals.get("production")},
        delta=None if "delta" not in value else {"value": value["delta"], "ci95": intervals["delta"]},
        evaluation={"data": names, "users": int(len(users)), "events": int(len(truth))},
        decision=decision,
        reason=reason,
    )
    return _write(params, report)


def _write(params: Params, report: dict[str, Any]) -> dict[str, Any]:
    reports = Path(params.paths.reports_dir)
    write_json(report, reports / "blessing.json")
    rows = []
    for role in ("candidate", "production", "delta"):
        entry = report.get(role) or {}
        if entry:
            ci = entry.get("ci95") or [None, None]
            rows.append({"": role, "tag": entry.get("tag", ""), report["metric"]: entry.get("value"), "95% CI": ci})
    evaluation = report.get("evaluation") or {}
    text = (
        f"# Blessing: {report['decision'].upper()}\n\n{report['reason']}\n\n"
        f"Evaluation data: {', '.join(evaluation.get('data', [])) or 'none'} "
        f"({evaluation.get('users', 0)} users, {evaluation.get('events', 0)} events); "
        f"min_delta {report['min_delta']}, floor {report['floor']}.\n\n{markdown_table(rows, floatfmt=None)}\n"
    )
    write_text(text, reports / "blessing.md")
    log.info("blessing: %s (%s)", report["decision"], report["reason"])
    return report


def read_blessing(params: Params) -> dict[str, Any]:
    path = Path(params.paths.reports_dir) / "blessing.json"
    if not path.exists():
        raise RecforgeError(f"{path}: no blessing yet; run `recforge stage bless`")
    return read_json(path)
