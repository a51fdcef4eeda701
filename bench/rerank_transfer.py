"""Is the re-ranker's validation-to-test drop a transfer failure? A diagnostic on finished workspaces.

    .venv/bin/python bench/rerank_transfer.py --config configs/quality.yaml --workspace /tmp/q6-s0 /tmp/q6-s1

For each workspace (a finished ``bench/rerank.py`` run: its lists and canonical
data are read, nothing is retrained) it builds the validation and test
candidate tables exactly as the rerank stage does and fits the configured
re-ranker three ways:

- ``val -> test``: trained on the validation users, scored on the test users
  (what the pipeline does);
- ``val out-of-fold``: the same fit's honest out-of-fold NDCG@10 on validation;
- ``test out-of-fold``: trained on the test part's own labels, each test user
  scored by fold models that never saw them. A DIAGNOSTIC ONLY, never part of
  the pipeline: it says what a re-ranker fitted to test-like rows could reach.

If ``test out-of-fold`` were far above ``val -> test``, the features would mean
different things in the two parts (models refitted on train + val, one more
event of history) and the fix would be in the transfer. If the two agree, the
validation part is simply easier and the re-ranker's test gain is what the
features and candidates carry. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def ndcg_at(frame, labels, scores, users: int, k: int) -> float:
    """NDCG@k over ``users`` users with one target each (a target outside the candidates counts 0)."""
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"user": frame["user"].to_numpy(), "item": frame["item"].to_numpy(), "score": scores})
    table["label"] = labels
    table = table.sort_values(["user", "score", "item"], ascending=[True, False, True], kind="stable")
    rank = table.groupby("user").cumcount().to_numpy() + 1
    hits = (table["label"].to_numpy() > 0) & (rank <= k)
    return float((1.0 / np.log2(rank[hits] + 1)).sum() / users)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quality.yaml")
    parser.add_argument("--workspace", nargs="+", required=True, help="bench/rerank.py --out folders")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from recforge.features import group_sizes, labels_for
    from recforge.params import load_params, paths_under
    from recforge.reports import markdown_table
    from recforge.rerank import build_part, candidate_models, make_reranker, positive_users
    from recforge.workspace import Workspace

    rows = []
    for folder in args.workspace:
        params = load_params(args.config, paths_under(Path(folder)) + ["rerank.enabled=true", *args.overrides])
        workspace = Workspace(params)
        models = candidate_models(params)
        k = params.evaluate.k
        parts = {}
        for part in ("val", "test"):
            frame = build_part(workspace, part, models)
            labels = labels_for(frame, workspace.frame(part))
            parts[part] = (frame, labels, group_sizes(frame), workspace.frame(part)["user_id"].nunique())
        figures = {}
        for part in ("val", "test"):
            frame, labels, groups, users = parts[part]
            reranker = make_reranker(params, None, positive_users(labels, groups))
            reranker.fit(frame, labels, groups)
            figures[f"{part} out-of-fold"] = ndcg_at(frame, labels, reranker.oof_scores, users, k)
            if part == "val":
                test_frame, test_labels, _, test_users = parts["test"]
                figures["val -> test"] = ndcg_at(test_frame, test_labels, reranker.rerank(test_frame), test_users, k)
        for part in ("val", "test"):
            frame, labels, _, users = parts[part]
            figures[f"seqknn {part}"] = (
                ndcg_at(frame, labels, -frame["seqknn_rank"].fillna(1e9).to_numpy(), users, k)
                if "seqknn_rank" in frame
                else float("nan")
            )
        rows.append({"workspace": folder, **{name: round(value, 4) for name, value in figures.items()}})
    import pandas as pd

    print(markdown_table(pd.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
