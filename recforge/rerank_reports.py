"""The re-rank stage's reports: candidate recall, ablations, feature importance.

Everything here reads the test targets for reporting only; nothing here
feeds training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.artifacts import atomic_path, write_text
from recforge.candidates import feature_columns, group_sizes, labels_for, model_columns, safe_name, truth_keys
from recforge.features import LLM_PREFIXES, SENTIMENT_PREFIXES, TEXT_PREFIXES, TIMELINE_FEATURES
from recforge.metrics import evaluate
from recforge.params import Params
from recforge.ranking import reciprocal_rank_fusion
from recforge.reports import markdown_table
from recforge.rerank import make_reranker, positive_users, ranked_lists

log = logging.getLogger(__name__)


def write_table(table: pd.DataFrame, reports: Path, name: str, title: str) -> None:
    """``<reports>/<name>.csv`` and ``<name>.md`` (a markdown table under ``title``)."""
    with atomic_path(reports / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text(f"# {title}\n\n" + markdown_table(table), reports / f"{name}.md")


class CandidateRecall:
    """Share of users whose held-out item is among the candidates, per model and for the union.

    Fed block by block (``add``), so the test part never has to be held whole.
    """

    def __init__(self, truths: dict[str, pd.DataFrame], models: Sequence[str], n: int) -> None:
        self.truths, self.models, self.n = truths, list(models), n
        self.keys = {part: truth_keys(truth) for part, truth in truths.items()}  # once, not per block
        self.hits: dict[tuple[str, str], int] = {}
        self.rows: dict[tuple[str, str], int] = {}

    def add(self, part: str, frame: pd.DataFrame) -> None:
        labels = labels_for(frame, self.keys[part]).astype(bool)
        for name in [*self.models, "union"]:
            proposed = (
                np.ones(len(frame), bool) if name == "union" else frame[f"{safe_name(name)}_rank"].notna().to_numpy()
            )
            key = (part, name)
            self.hits[key] = self.hits.get(key, 0) + frame.loc[labels & proposed, "user_id"].nunique()
            self.rows[key] = self.rows.get(key, 0) + int(proposed.sum())

    def table(self) -> pd.DataFrame:
        rows = []
        for (part, name), hits in self.hits.items():
            n_users = max(self.truths[part]["user_id"].nunique(), 1)
            rows.append(
                {
                    "part": part,
                    "candidates": name,
                    "recall": hits / n_users,
                    "rows_per_user": self.rows[(part, name)] / n_users,
                }
            )
        table = pd.DataFrame(rows, columns=["part", "candidates", "recall", "rows_per_user"])
        table["n"] = self.n
        return table


def _fit_and_score(params, val_frame, labels, groups, test_frame, features):
    reranker = make_reranker(params, features, positive_users(labels, groups))
    reranker.fit(val_frame, labels, groups)
    return reranker, reranker.oof_scores, reranker.rerank(test_frame)


def ablations(
    params: Params,
    val_frame: pd.DataFrame,
    labels: np.ndarray,
    test_frame: pd.DataFrame,
    models: Sequence[str],
    truths: dict[str, pd.DataFrame],
    full: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Validation (out-of-fold) and test NDCG/Recall@K without feature groups and without each recommender."""
    k = params.evaluate.k
    length = params.evaluate.list_length
    features = feature_columns(val_frame)
    variants: list[tuple[str, list[str], str | None]] = []
    text = [f for f in features if f.startswith(TEXT_PREFIXES)]
    llm = [f for f in features if f.startswith(LLM_PREFIXES)]
    profile = [f for f in features if f.startswith(TEXT_PREFIXES) and f.endswith("_profile")]  # sim_<enc>_profile
    sentiment = [f for f in features if f.startswith(SENTIMENT_PREFIXES)]
    timeline = [f for f in features if f in TIMELINE_FEATURES]
    groups = [
        ("without text/LLM features", text + llm),
        ("without LLM features", llm),
        ("without text similarity features", text),
        ("without profile features", profile),
        ("without sentiment features", sentiment),
        ("without timeline features", timeline),
    ]
    for label, drop in groups:
        if drop and (label != "without text/LLM features" or (text and llm)):
            variants.append((label, [f for f in features if f not in drop], None))
    if len(models) > 1:
        for name in models:
            drop = set(model_columns(val_frame, name))
            variants.append((f"without {name}", [f for f in features if f not in drop], name))
    rows = []
    if full is not None:
        rows.append({"variant": "all features and candidates", **full})
    for label, columns, dropped in variants:
        started = time.perf_counter()
        val_part, test_part, val_labels = val_frame, test_frame, labels
        if dropped is not None:
            rank_cols = [c for c in val_frame.columns if c.endswith("_rank") and c != f"{safe_name(dropped)}_rank"]
            keep_val = val_frame[rank_cols].notna().any(axis=1).to_numpy()
            keep_test = test_frame[rank_cols].notna().any(axis=1).to_numpy()
            val_part, test_part, val_labels = val_frame[keep_val], test_frame[keep_test], labels[keep_val]
            # n_models / rrf must not count the dropped model either
            val_part, test_part = _recount(val_part, dropped), _recount(test_part, dropped)
        try:
            _, val_scores, test_scores = _fit_and_score(
                params, val_part, val_labels, group_sizes(val_part), test_part, columns
            )
        except ValueError as exc:
            log.warning("ablation %s skipped: %s", label, exc)
            continue
        val_metrics = evaluate(ranked_lists(val_part, val_scores, length), truths["val"], [k], 0)
        test_metrics = evaluate(ranked_lists(test_part, test_scores, length), truths["test"], [k], 0)
        rows.append(
            {
                "variant": label,
                f"val_ndcg@{k}": val_metrics[f"ndcg@{k}"],
                f"test_ndcg@{k}": test_metrics[f"ndcg@{k}"],
                f"test_recall@{k}": test_metrics[f"recall@{k}"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return pd.DataFrame(rows)


def _recount(frame: pd.DataFrame, dropped: str) -> pd.DataFrame:
    frame = frame.copy()
    ranks = frame[[c for c in frame.columns if c.endswith("_rank") and c != f"{safe_name(dropped)}_rank"]].to_numpy(
        np.float64
    )
    frame["n_models"] = np.isfinite(ranks).sum(axis=1).astype(np.float64)
    frame["rrf"] = reciprocal_rank_fusion(ranks)
    return frame


def write_importance(table: pd.DataFrame, params: Params) -> None:
    reports, plots = Path(params.paths.reports_dir), Path(params.paths.plots_dir)
    write_table(table, reports, "feature_importance", "Re-ranker feature importance (gain, mean over folds)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = table.head(25).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(top) + 1)))
    ax.barh(top["feature"], top["gain_share"])
    ax.set_xlabel("share of total gain")
    ax.set_title("re-ranker feature importance")
    fig.tight_layout()
    with atomic_path(plots / "feature_importance.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
