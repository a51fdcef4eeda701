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


def part_ndcg(workspace, part: str, frame, scores) -> float:
    """NDCG@k of the lists these row scores give, against the part's targets, as the evaluate stage scores lists."""
    from recforge.metrics import evaluate
    from recforge.rerank import ranked_lists

    k = workspace.params.evaluate.k
    lists = ranked_lists(frame, scores, workspace.params.evaluate.list_length)
    return evaluate(lists, workspace.frame(part), [k], 0)[f"ndcg@{k}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quality.yaml")
    parser.add_argument("--workspace", nargs="+", required=True, help="bench/rerank.py --out folders")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from recforge.candidates import group_sizes, labels_for
    from recforge.params import load_params, paths_under
    from recforge.reports import markdown_table
    from recforge.rerank import build_part, candidate_models, make_reranker, positive_users
    from recforge.workspace import Workspace

    rows = []
    for folder in args.workspace:
        params = load_params(args.config, paths_under(Path(folder)) + ["rerank.enabled=true", *args.overrides])
        workspace = Workspace(params)
        models = candidate_models(params)
        parts = {}
        for part in ("val", "test"):
            frame = build_part(workspace, part, models)
            labels = labels_for(frame, workspace.frame(part))
            parts[part] = (frame, labels, group_sizes(frame))
        figures = {}
        for part in ("val", "test"):
            frame, labels, groups = parts[part]
            reranker = make_reranker(params, None, positive_users(labels, groups))
            reranker.fit(frame, labels, groups)
            figures[f"{part} out-of-fold"] = part_ndcg(workspace, part, frame, reranker.oof_scores)
            if part == "val":
                test_frame = parts["test"][0]
                figures["val -> test"] = part_ndcg(workspace, "test", test_frame, reranker.rerank(test_frame))
        for part in ("val", "test"):
            frame = parts[part][0]
            figures[f"seqknn {part}"] = (
                part_ndcg(workspace, part, frame, -frame["seqknn_rank"].fillna(1e9).to_numpy())
                if "seqknn_rank" in frame
                else float("nan")
            )
        rows.append({"workspace": folder, **{name: round(value, 4) for name, value in figures.items()}})
    import pandas as pd

    print(markdown_table(pd.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
