"""The re-ranker's learning curve: test NDCG@10 when it learns from a share of the validation users.

Reads a workspace whose train stage has run (e.g. the --out of bench/rerank.py),
builds the validation and test candidate tables once, then for each share trains
the configured re-ranker on that many randomly drawn validation users (``--draws``
draws each; all users once) and scores the test users' full candidate lists.
It tells whether more positive examples would lift the re-ranker.

    .venv/bin/python bench/rerank_curve.py --workspace /tmp/q3-s0 --config configs/quality.yaml --shares 0.5,0.75,1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, help="a bench/rerank.py --out (the train stage has run)")
    parser.add_argument("--config", default="configs/quality.yaml")
    parser.add_argument("--shares", default="0.5,0.75,1")
    parser.add_argument("--draws", type=int, default=3, help="random user draws per share below 1")
    parser.add_argument("--format", default="movielens-latest")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    import numpy as np

    from recforge import rerank
    from recforge.candidates import feature_columns, group_sizes
    from recforge.metrics import evaluate
    from recforge.params import load_params, paths_under
    from recforge.workspace import Workspace

    shares = [float(share) for share in args.shares.split(",")]
    if not shares or any(not 0 < share <= 1 for share in shares) or not 1 <= args.draws <= 100:
        parser.error("--shares must be numbers in (0, 1]; --draws in [1, 100]")
    params = load_params(args.config, paths_under(args.workspace) + [f"data.format={args.format}", *args.overrides])
    workspace = Workspace(params)
    models = rerank.candidate_models(params)
    val, labels, _ = rerank.training_table(workspace, models)
    test = rerank.build_part(workspace, "test", models)
    features, users = feature_columns(val), val["user_id"].unique()
    truth, n_items, k = workspace.frame("test"), len(workspace.maps.item_ids), params.evaluate.k
    print(f"| share of validation users | users | test NDCG@{k} per draw | mean |")
    print("|---|---|---|---|")
    for share in shares:
        scores = []
        for draw in range(args.draws if share < 1 else 1):
            chosen = np.random.default_rng(draw).choice(users, int(round(len(users) * share)), replace=False)
            keep = val["user_id"].isin(chosen).to_numpy()
            part, part_labels = val[keep], labels[keep]
            groups = group_sizes(part)
            reranker = rerank.make_reranker(params, features, rerank.positive_users(part_labels, groups))
            reranker.fit(part, part_labels, groups)
            lists = rerank.ranked_lists(test, reranker.rerank(test), params.evaluate.list_length)
            scores.append(evaluate(lists, truth, [k], n_items)[f"ndcg@{k}"])
        shown = ", ".join(f"{score:.4f}" for score in scores)
        print(f"| {share:g} | {len(chosen)} | {shown} | {np.mean(scores):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
