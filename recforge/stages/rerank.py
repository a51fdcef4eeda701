"""rerank: the second stage (LightGBM LambdaRank over candidate features).

Leakage-free protocol (no stage ever trains on a test target):

1. The train stage fits every candidate model on **train** and writes its
   lists for the validation users (``lists/<model>/val.parquet``); it refits
   on **train + val** and writes lists for the test users (``test.parquet``).
2. Re-ranker training rows = the union of the ``val`` lists; features use the
   train events only; label 1 = the user's validation event. The test split
   is not read while training.
3. The re-ranker is a set of LambdaRank models over user-disjoint folds of the
   validation users (each early-stops on its own held-out fold); validation
   lists for ``rerank`` use each user's out-of-fold score.
4. Test rows = the union of the ``test`` lists with features from train + val
   events, scored by the average of the fold models. Test targets are read
   only to report metrics (candidate recall, ablations, evaluate stage).

Outputs: ``lists/rerank/{val,test}.parquet`` (the evaluate stage reports
``rerank`` like any model), ``models/rerank/`` (the re-ranker's files +
``meta.json``), ``reports/candidate_recall.*``, ``reports/feature_importance.*``,
``plots/feature_importance.png`` and ``reports/rerank_ablation.*``.

With ``rerank.enabled: false`` the stage writes an empty ``models/rerank/``.
The candidate tables live in ``recforge.rerank``, the reports in
``recforge.rerank_reports``, the LLM feature in ``recforge.llm_scorer``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.artifacts import atomic_dir, write_meta, write_parquet
from recforge.candidates import labels_for
from recforge.metrics import evaluate
from recforge.params import Params
from recforge.rerank import (
    HISTORY,
    NAME,
    candidate_models,
    feature_encoders,
    iter_part,
    list_batches,
    list_paths,
    make_reranker,
    positive_users,
    ranked_lists,
)
from recforge.rerank_reports import CandidateRecall, ablations, write_importance, write_table
from recforge.rerank_rows import ValRows, collect_val_rows, positive_val_users, sample_training_users
from recforge.workspace import Workspace

log = logging.getLogger(__name__)


def run_rerank(params: Params, variant: str | None = None) -> dict[str, Any] | None:
    """Build candidates and features, train the re-ranker on val, write lists, model and reports."""
    if not params.rerank.enabled:
        log.info("rerank disabled (rerank.enabled: false)")
        Path(params.paths.models_dir, NAME).mkdir(parents=True, exist_ok=True)  # dvc.yaml's out, empty
        return None
    started = time.perf_counter()
    workspace = Workspace(params)
    models = candidate_models(params)
    scorer = None
    if params.rerank.llm_scorer:
        from recforge.llm_scorer import LLMScorer

        scorer = LLMScorer(params)

    # the training users are chosen from the lists and validation events alone, before any feature is built
    truths = {"val": workspace.frame("val"), "test": workspace.frame("test")}
    per_model = params.rerank.candidates_per_model
    batches = (rows for path in list_paths(params, models, "val").values() for rows in list_batches(path, per_model))
    positive = positive_val_users(batches, truths["val"], workspace.maps, per_model)
    train_users = sample_training_users(positive, params.rerank.max_train_users, params.seed)

    # everything reading the test targets below does so for reporting only
    recall = CandidateRecall(truths, models, params.rerank.candidates_per_model)
    keep_tables = bool(params.rerank.ablations)  # the ablations retrain on the whole tables
    kept_val: list[pd.DataFrame] = []

    def each(block: pd.DataFrame) -> None:
        recall.add("val", block)
        if keep_tables:
            kept_val.append(block)

    blocks = iter_part(workspace, "val", models, scorer)  # each list file read a batch at a time
    rows = collect_val_rows(blocks, truths["val"], train_users, workspace.maps, each=each)
    blocks = None  # the validation part's feature state is not needed any more
    features, labels, groups = rows.features, rows.labels, rows.groups
    log.info(
        "rerank: %d training rows (%d of %d users with a positive candidate), %d other val rows on disk, "
        "%d features in %.1fs",
        len(labels),
        len(groups),
        len(positive),
        rows.rest_rows,
        len(features),
        time.perf_counter() - started,
    )
    reranker, train_scores = _fit(params, rows)
    score = reranker.rerank if reranker is not None else (lambda X: X[:, features.index("rrf")])
    val_lists = rows.lists(train_scores, score, params.evaluate.list_length)
    rows.close()
    del train_scores
    keep_tables = keep_tables and reranker is not None
    test_lists, kept, test_rows = _score_test(workspace, models, scorer, reranker, recall, keep=keep_tables)
    write_parquet(val_lists, Path(params.paths.lists_dir) / NAME / "val.parquet")
    write_parquet(test_lists, Path(params.paths.lists_dir) / NAME / "test.parquet")

    recall_table = recall.table()
    reports = Path(params.paths.reports_dir)
    write_table(recall_table, reports, "candidate_recall", f"Candidate recall@{params.rerank.candidates_per_model}")
    if reranker is not None:
        write_importance(reranker.feature_importance(), params)
    full = _summary(params, val_lists, test_lists, truths, started)
    if keep_tables:
        val_frame = pd.concat(kept_val, ignore_index=True)
        val_labels = labels_for(val_frame, truths["val"])
        test_frame = pd.concat(kept, ignore_index=True)
        table = ablations(params, val_frame, val_labels, test_frame, models, truths, full)
        write_table(table, reports, "rerank_ablation", "Re-ranker ablations (val = out-of-fold)")

    meta = _meta(params, models, features, labels, groups, test_rows, reranker, started)
    meta["training"].update({"positive_users": int(len(positive)), "val_rows_scored_from_disk": int(rows.rest_rows)})
    with atomic_dir(Path(params.paths.models_dir) / NAME) as staging:
        if reranker is not None:
            reranker.save(staging)
        meta = write_meta(staging, meta)
    k = params.evaluate.k
    log.info(
        "rerank: val ndcg@%d %.4f (out-of-fold), test ndcg@%d %.4f in %.1fs",
        k,
        full[f"val_ndcg@{k}"],
        k,
        full[f"test_ndcg@{k}"],
        meta["seconds"],
    )
    return {**meta, "metrics": full, "candidate_recall": recall_table.to_dict("records")}


def _fit(params: Params, rows: ValRows):
    """(re-ranker, out-of-fold scores of the training rows); (None, RRF) when validation has too little signal."""
    try:
        reranker = make_reranker(params, rows.features, positive_users(rows.labels, rows.groups))
        reranker.fit(rows.X, rows.labels, rows.groups)
        return reranker, reranker.oof_scores
    except ValueError as exc:  # too little validation signal (tiny data): fall back to rank fusion
        log.warning("rerank: %s; ranking by reciprocal-rank fusion instead", exc)
        return None, rows.X[:, rows.features.index("rrf")].astype(np.float64)


def _score_test(workspace: Workspace, models, scorer, reranker, recall: CandidateRecall, *, keep: bool):
    """Build, score and cut each block of test users to its top list; keep the blocks only for ablations."""
    length = workspace.params.evaluate.list_length
    lists, kept, rows = [], [], 0
    for block in iter_part(workspace, "test", models, scorer):
        scores = reranker.rerank(block) if reranker is not None else block["rrf"].to_numpy()
        lists.append(ranked_lists(block, scores, length))
        recall.add("test", block)
        rows += len(block)
        if keep:
            kept.append(block)
    return pd.concat(lists, ignore_index=True), kept, rows


def _summary(params: Params, val_lists, test_lists, truths, started: float) -> dict[str, float]:
    k = params.evaluate.k
    val_metrics = evaluate(val_lists, truths["val"], [k], 0)
    test_metrics = evaluate(test_lists, truths["test"], [k], 0)
    return {
        f"val_ndcg@{k}": val_metrics[f"ndcg@{k}"],
        f"test_ndcg@{k}": test_metrics[f"ndcg@{k}"],
        f"test_recall@{k}": test_metrics[f"recall@{k}"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _meta(params, models, features, labels, groups, test_rows, reranker, started: float) -> dict[str, Any]:
    cfg = params.rerank
    return {
        "name": NAME,
        "plugin": cfg.plugin,
        "models": models,
        "encoders": feature_encoders(params),
        "features": features,
        "candidates_per_model": cfg.candidates_per_model,
        "training": {
            "part": "val",
            "history": HISTORY["val"],
            "rows": int(len(labels)),
            "users": int(len(groups)),
            "positives": int(labels.sum()),
        },
        "scoring": {"part": "test", "history": HISTORY["test"], "rows": test_rows},
        "llm_scorer": bool(cfg.llm_scorer),
        "fallback": None if reranker is not None else "rrf",
        "seconds": round(time.perf_counter() - started, 1),
    }
