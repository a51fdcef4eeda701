"""evaluate: metrics for every model's lists, the test top-K files and plots."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recforge.artifacts import atomic_path, write_json, write_parquet
from recforge.errors import RecforgeError
from recforge.metrics import evaluate
from recforge.params import Params
from recforge.workspace import Workspace

log = logging.getLogger(__name__)


def model_names(params: Params) -> list[str]:
    """Configured recommenders, plus ``rerank`` when the second stage is enabled."""
    return list(params.recommenders) + (["rerank"] if params.rerank.enabled else [])


def run_evaluate(params: Params, variant: str | None = None) -> dict[str, dict]:
    """Write metrics.json ({model: test metrics + "val": {...}}), recs/<model>.parquet and plots."""
    workspace = Workspace(params)
    n_items = len(workspace.items)
    val_truth, test_truth = workspace.frame("val"), workspace.frame("test")
    top_k = max(params.evaluate.ks)
    results: dict[str, dict] = {}
    for name in model_names(params):
        lists = Path(params.paths.lists_dir) / name
        if not (lists / "test.parquet").exists():
            raise RecforgeError(f"{lists / 'test.parquet'}: not found; run `recforge stage train` (or rerank)")
        test_lists = pd.read_parquet(lists / "test.parquet")
        val_lists = pd.read_parquet(lists / "val.parquet")
        results[name] = evaluate(test_lists, test_truth, params.evaluate.ks, n_items)
        results[name]["val"] = evaluate(val_lists, val_truth, params.evaluate.ks, n_items)
        write_parquet(test_lists[test_lists["rank"] <= top_k], Path(params.paths.recs_dir) / f"{name}.parquet")
    write_json(results, params.paths.metrics_file)
    write_plots(results, params)
    return results


def write_plots(results: dict[str, dict], params: Params) -> None:
    """plots/ndcg_at_k.{csv,png}: test NDCG@K per model (a DVC plot and a picture)."""
    plots = Path(params.paths.plots_dir)
    rows = [
        {"model": name, "k": k, "ndcg": metrics[f"ndcg@{k}"], "recall": metrics[f"recall@{k}"]}
        for name, metrics in results.items()
        for k in params.evaluate.ks
    ]
    table = pd.DataFrame(rows)
    with atomic_path(plots / "ndcg_at_k.csv") as tmp:
        table.to_csv(tmp, index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, block in table.groupby("model", sort=False):
        ax.plot(block["k"], block["ndcg"], marker="o", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("test NDCG@K")
    ax.set_title("NDCG@K per model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(plots / "ndcg_at_k.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
