"""user-kNN's pool: seconds and validation NDCG/Recall@10 for a sample of validation users, per pool size.

    .venv/bin/python bench/userknn_pool.py --workspace bench/results/scaling-quality/10m \\
        --users 5000 --pools all 200000 50000 10000

Reads a workspace the pipeline has split (its params.yaml, data/split/): fits
user-kNN (50 neighbours) on the train part once per pool size, with the
workspace's seed, and lists 100 items for ``--users`` validation users drawn
with ``--sample-seed`` through the train stage's ``recommend_frame``. Prints one
markdown row per pool size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pool_value(text: str) -> int | None:
    return None if text == "all" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a directory holding params.yaml")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--pools", nargs="+", type=pool_value, default=[None, 50_000])
    parser.add_argument("--neighbors", type=int, default=50)
    parser.add_argument("--sample-seed", type=int, default=1)
    args = parser.parse_args()
    if not (args.workspace / "params.yaml").is_file():
        parser.error(f"no params.yaml in {args.workspace}")
    os.chdir(args.workspace)

    from recforge import registry
    from recforge.metrics import evaluate
    from recforge.params import load_params
    from recforge.stages.train import recommend_frame, training_events
    from recforge.workspace import Workspace

    workspace = Workspace(load_params("params.yaml"))
    train, val = training_events(workspace, "train"), workspace.frame("val")
    users = val["user_id"].unique()
    rng = np.random.default_rng(args.sample_seed)
    sample = users[np.sort(rng.choice(len(users), size=min(args.users, len(users)), replace=False))]
    truth = val[val["user_id"].isin(sample)]
    context = workspace.context(validation=workspace.events("val"))
    print(f"{train.n_users:,} training users, {len(sample):,} validation users listed\n")
    print("| pool | seconds | val NDCG@10 | val Recall@10 |\n|---|---:|---:|---:|")
    for pool in args.pools:
        model = registry.recommenders.create("userknn", neighbors=args.neighbors, pool=pool).fit(train, context=context)
        started = time.perf_counter()
        lists = recommend_frame(model, sample, workspace.maps, 100, label="userknn")
        seconds = time.perf_counter() - started
        metrics = evaluate(lists, truth, [10], 0)
        label = "every user" if pool is None else f"{pool:,}"
        print(f"| {label} | {seconds:.1f} | {metrics['ndcg@10']:.4f} | {metrics['recall@10']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
