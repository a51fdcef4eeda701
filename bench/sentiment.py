"""Review sentiment in training: test metrics with and without sentiment weighting.

    .venv/bin/python bench/sentiment.py --out /tmp/bench-sentiment

Generates synthetic data with review text (``data.synthetic.reviews=true``:
a share of the events are bad experiences with negative reviews, see
recforge/data/synthetic.py), runs ingest .. encode once into ``<out>/shared``,
then train, rerank and evaluate twice, with ``train.sentiment_weighting`` off
and on (``<out>/off``, ``<out>/on``), and prints a markdown table of test
NDCG@k / Recall@k per model and for the re-ranker (with ``--seeds``, the mean
over seeds, each seed its own data, split and models, and on how many seeds
the weighting did better, the same, worse). Both arms use the same
data, split, embeddings and seeds; only the training weights differ (the
re-ranker's sentiment features are in both). Models that ignore the weights
(sequential, content) should score the same in both arms. Extra
``-S key=value`` overrides go to the params (e.g. ``-S train.sentiment_strength=2``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = ("canonical_dir", "split_dir", "embeddings_dir", "profiles_dir", "cache_dir")
PER_ARM = ("models_dir", "lists_dir", "recs_dir", "reports_dir", "metrics_file", "plots_dir")


def arm_overrides(out: Path, arm: str, seed: int) -> list[str]:
    """Paths: the data, split and embeddings shared by both arms; models, lists and reports per arm."""
    from recforge.params import PathsParams

    defaults = PathsParams().model_dump()
    shared = [f"paths.{key}={out / 'shared' / defaults[key]}" for key in SHARED]
    own = [f"paths.{key}={out / arm / defaults[key]}" for key in PER_ARM]
    return shared + own + [f"train.sentiment_weighting={arm == 'on'}", f"seed={seed}"]


def table(runs: list[dict[str, dict]], k: int) -> str:
    """Mean test metric per model and arm over the runs (one per seed), the change, and the seeds won."""
    import numpy as np
    import pandas as pd

    from recforge.reports import markdown_table

    columns, rows = ["model"], []
    for model in runs[0]["off"]:
        row: list[object] = [model]
        for metric, name in ((f"ndcg@{k}", f"NDCG@{k}"), (f"recall@{k}", f"Recall@{k}")):
            off = np.array([run["off"][model][metric] for run in runs])
            on = np.array([run["on"][model][metric] for run in runs])
            change = f"{(on - off).mean():+.4f}".replace("+0.0000", "0.0000").replace("-0.0000", "0.0000")
            row += [off.mean(), on.mean(), change]
            if not rows:
                columns += [f"{name} off", f"{name} on", f"{name} change"]
            if len(runs) > 1:  # seeds where weighting did better / the same / worse
                row.append(f"{(on > off).sum()}/{(on == off).sum()}/{(on < off).sum()}")
                if len(rows) == 0:
                    columns.append(f"{name} seeds +/=/-")
        rows.append(row)
    return markdown_table(pd.DataFrame(rows, columns=columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--out", default="/tmp/bench-sentiment")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--interactions", type=int, default=30_000)
    parser.add_argument("--bad-experiences", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (data, split, models)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from recforge.params import load_params
    from recforge.pipeline import run_pipeline

    out = Path(args.out)
    data = [
        "data.format=synthetic",
        "data.synthetic.reviews=true",
        f"data.synthetic.bad_experiences={args.bad_experiences}",
        f"data.synthetic.num_users={args.users}",
        f"data.synthetic.num_items={args.items}",
        f"data.synthetic.num_interactions={args.interactions}",
        "rerank.enabled=true",
    ]
    runs: list[dict[str, dict]] = []
    timings: dict[str, float] = {}
    for seed in args.seeds:
        metrics: dict[str, dict] = {}
        for arm in ("off", "on"):
            overrides = data + arm_overrides(out / f"seed{seed}", arm, seed) + args.overrides
            params = load_params(args.config, overrides)
            stages = ["train", "rerank", "evaluate"]
            if arm == "off":
                stages = ["ingest", "validate", "split", "encode", *stages]
            for stage, seconds in run_pipeline(params, stages).items():
                timings[f"{stage} ({arm})"] = timings.get(f"{stage} ({arm})", 0.0) + seconds / len(args.seeds)
            metrics[arm] = json.loads(Path(params.paths.metrics_file).read_text())
        runs.append(metrics)
    k = params.evaluate.k
    text = (
        f"## Review sentiment weighting (synthetic, {args.users} users, {args.interactions} interactions, "
        f"bad experiences {args.bad_experiences:.0%}; test, {params.split.method}; "
        f"seeds {', '.join(map(str, args.seeds))})\n\n"
        + table(runs, k)
        + "\nMean stage seconds per seed: "
        + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in timings.items())
        + "\n"
    )
    (out / "sentiment_table.md").write_text(
        f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python bench/sentiment.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + " -->\n"
        + text
    )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
