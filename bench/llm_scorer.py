"""Throughput of the listwise LLM re-rank feature (recforge.llm_scorer) on a trained workspace.

Builds the validation candidate table of ``--users`` users of a workspace that
ran the train stage (e.g. the --out of bench/rerank.py), then scores every
user's top ``rerank.llm_candidates`` candidates with an empty disk cache, for
each batch size asked, and prints users/s, candidates/s and prompt tokens/s.
The model loads before the clock starts; torch uses every core it is given.

    .venv/bin/python bench/llm_scorer.py --workspace /tmp/rerank-ml \
        --config configs/movielens-latest-small-rerank.yaml --users 120 --batch-sizes 1,8,16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, help="a bench/rerank.py --out (the train stage has run)")
    parser.add_argument("--config", default="configs/quality.yaml")
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--batch-sizes", default="8")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from recforge import rerank
    from recforge.llm import load_causal_lm
    from recforge.llm_scorer import LLMScorer
    from recforge.params import load_params, paths_under
    from recforge.workspace import Workspace, resolve_device

    params = load_params(args.config, paths_under(Path(args.workspace)) + args.overrides)
    workspace = Workspace(params)
    models = rerank.candidate_models(params)
    data = rerank.part_data(workspace, "val", models)
    frame = next(rerank.iter_part(workspace, "val", models, block_users=args.users))
    device = resolve_device(params.device)
    tokenizer, _ = load_causal_lm(params.rerank.llm_model, device=device)
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        with tempfile.TemporaryDirectory() as cache:
            scorer = LLMScorer(params.model_copy(deep=True))
            scorer.cache_path = Path(cache) / "scores.json"
            scorer.cache = {}
            scorer.batch_size = batch_size
            _, texts = scorer.prompts(frame, data)
            tokens = sum(len(tokenizer(scorer._chat(tokenizer, t))["input_ids"]) for t in texts)
            started = time.perf_counter()
            values = scorer(frame, data)
            seconds = time.perf_counter() - started
        scored = int(np.isfinite(values).sum())
        rows.append((batch_size, len(texts), scored, tokens / max(len(texts), 1), seconds))
    sys.stdout.write(
        f"device {device}, torch threads {torch.get_num_threads()}, model {params.rerank.llm_model or 'SmolLM2-135M'},"
        f" {params.rerank.llm_candidates} candidates and {params.rerank.llm_history} history titles per prompt\n\n"
        "| batch | users | candidates | tokens/prompt | seconds | users/s | candidates/s | prompt tokens/s |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    for batch_size, users, scored, tokens, seconds in rows:
        sys.stdout.write(
            f"| {batch_size} | {users} | {scored} | {tokens:.0f} | {seconds:.1f} | {users / seconds:.2f} |"
            f" {scored / seconds:.1f} | {users * tokens / seconds:.0f} |\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
