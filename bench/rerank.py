"""The full two-stage table for a dataset: every candidate model, the union's
candidate recall@N, ``rerank`` and the ablations.

    .venv/bin/python bench/rerank.py --path ../shared/data/ml-latest-small --out /tmp/bench-rerank
    .venv/bin/python bench/rerank.py --config params.yaml --format synthetic --out /tmp/bench-rerank-syn

Runs the pipeline stages (ingest .. train) into ``--out`` unless their
outputs are already there (``--retrain`` forces them), then the rerank stage
with ablations and the evaluate stage, and writes
``<out>/rerank_table.{md,csv}`` plus ``bench/results/rerank_<dataset>.md``.
Extra ``-S key=value`` overrides go to the params. Timings on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def table(params, metrics: dict, out: Path) -> str:
    import pandas as pd

    from recforge.reports import markdown_table

    k = params.evaluate.k
    reports = Path(params.paths.reports_dir)
    recall = pd.read_csv(reports / "candidate_recall.csv")
    test_recall = recall[recall["part"] == "test"].set_index("candidates")["recall"]
    rows = []
    for name, values in metrics.items():
        rows.append(
            {
                "model": name,
                f"test NDCG@{k}": values[f"ndcg@{k}"],
                f"test Recall@{k}": values[f"recall@{k}"],
                f"val NDCG@{k}": values["val"][f"ndcg@{k}"],
                f"candidate recall@{params.rerank.candidates_per_model}": test_recall.get(name, float("nan")),
            }
        )
    rows.append(
        {"model": "union of candidates", f"candidate recall@{params.rerank.candidates_per_model}": test_recall["union"]}
    )
    main = pd.DataFrame(rows)
    singles = [m for m in metrics if m != "rerank"]
    best = max(singles, key=lambda m: metrics[m][f"ndcg@{k}"])
    ratio = metrics["rerank"][f"ndcg@{k}"] / max(metrics[best][f"ndcg@{k}"], 1e-12)
    text = (
        f"## Two-stage table ({params.data.format}, {params.split.method}, full ranking, history excluded)\n\n"
        + markdown_table(main)
        + f"\nrerank / best single model ({best}): {ratio:.3f}x\n"
    )
    ablation_path = reports / "rerank_ablation.csv"
    if ablation_path.exists():
        text += "\n## Ablations (val = out-of-fold NDCG on validation users)\n\n" + markdown_table(
            pd.read_csv(ablation_path)
        )
    importance = pd.read_csv(reports / "feature_importance.csv").head(15)
    text += "\n## Top features (gain share)\n\n" + markdown_table(importance[["feature", "gain_share"]])
    main.to_csv(out / "rerank_table.csv", index=False)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/movielens-latest-small.yaml")
    parser.add_argument("--format", default="movielens-latest")
    parser.add_argument("--path", default=None, help="dataset path (not needed for synthetic)")
    parser.add_argument("--out", default="/tmp/bench-rerank")
    parser.add_argument("--retrain", action="store_true", help="re-run ingest .. train even if lists exist")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the results file (bench/results/rerank_<data><tag>.md)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from recforge.params import load_params, paths_under
    from recforge.pipeline import run_pipeline

    out = Path(args.out)
    overrides = paths_under(out)
    overrides += [f"data.format={args.format}", "rerank.enabled=true", f"rerank.ablations={not args.no_ablations}"]
    if args.path:
        overrides.append(f"data.path={args.path}")
    params = load_params(args.config, overrides + args.overrides)
    lists = Path(params.paths.lists_dir)
    missing = [m for m in params.recommenders if not (lists / m / "test.parquet").exists()]
    timings: dict[str, float] = {}
    if args.retrain or missing:
        timings.update(run_pipeline(params, ["ingest", "validate", "split", "encode", "train"]))
    timings.update(run_pipeline(params, ["rerank", "evaluate"]))
    metrics = json.loads(Path(params.paths.metrics_file).read_text())
    text = table(params, metrics, out)
    text += "\n## Stage seconds\n\n" + " | ".join(f"{k}: {v:.1f}" for k, v in timings.items()) + "\n"
    (out / "rerank_table.md").write_text(text)
    name = Path(args.path).name if args.path else args.format
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"rerank_{name}{args.tag}.md").write_text(
        f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/rerank.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + " -->\n"
        + text
    )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
