"""Generated explanations: latency and grounding of the LLM explainer on real (user, recommended item) pairs.

    .venv/bin/python bench/explain.py                                   # synthetic data, temp workspace
    .venv/bin/python bench/explain.py --path ../shared/data/ml-latest-small --format movielens-latest

Builds a small workspace (ingest .. train: tfidf embeddings, user profiles,
one itemknn model) in ``--out`` (default: a temporary directory), packages it
and loads it with :class:`recforge.engine.Engine`, exactly as the service
does. For ``--n`` users spread over the user index it takes each user's top
recommendation, the engine's evidence for it (history items, shared terms,
the packaged profile keywords) and times ``LLMExplainer.explain`` with the
real SmolLM2 on CPU (``--threads`` torch threads; model loading and one
warm-up call are not timed). Prints a markdown table: latency p50 / p99 /
mean, the grounding rate (share of generated texts that passed the strict
check), the template fallback share and tokens generated, then a few
examples. The machine's load average is printed with it: timings on a
shared machine are noisy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_engine(args: argparse.Namespace, out: Path):
    from recforge.engine import Engine
    from recforge.packaging import build_package
    from recforge.params import load_params, paths_under
    from recforge.pipeline import run_pipeline

    overrides = paths_under(out) + [
        "encode.encoders=[tfidf]",
        "encode.profiles=true",
        "recommenders={itemknn: {neighbors: 50}}",
        "rerank.enabled=false",
        "serve.explainer=builtin",
    ]
    if args.path:
        overrides += [f"data.format={args.format}", f"data.path={args.path}"]
    else:
        overrides += ["data.format=synthetic"]
    params = load_params(None, overrides + args.overrides)
    if not (out / "package" / "manifest.json").exists():
        run_pipeline(params, ["ingest", "validate", "split", "encode", "train"])
        build_package(params, out / "package")
    return Engine.load(out / "package", device="cpu")


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="'synthetic' or a dataset path (same as --path)")
    parser.add_argument("--path", default=None, help="dataset path, e.g. ../shared/data/ml-latest-small")
    parser.add_argument("--format", default="movielens-latest", help="data.format for --path")
    parser.add_argument("--n", type=int, default=50, help="explanations to generate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=1, help="stop after this many sentences")
    parser.add_argument("--no-prime", action="store_true", help="let the model start the answer itself")
    parser.add_argument("--out", default=None, help="workspace directory (default: a temporary one)")
    parser.add_argument("--examples", type=int, default=5, help="generated texts to print")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if args.path is None and args.data != "synthetic":
        args.path = args.data
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    import numpy as np
    import torch

    from recforge.artifacts import plain
    from recforge.reports import markdown_table

    from recforge_plugins.explainers.llm import LLMExplainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        engine = build_engine(args, out)
        setup_s = time.perf_counter() - started

        explainer = LLMExplainer(
            max_new_tokens=args.max_new_tokens, prime=not args.no_prime, sentences=args.sentences, time_budget_s=60.0
        )
        started = time.perf_counter()
        explainer._load()
        load_s = time.perf_counter() - started
        users = np.unique(np.linspace(0, len(engine.maps.user_ids) - 1, num=args.n).astype(int))
        pairs = []
        for user in users:
            top = engine.recommend(plain(engine.maps.user_ids[user]), 1).items
            if top:
                pairs.append((int(user), engine.maps.lookup_item(top[0].item_id)))
        warm = engine.evidence(*pairs[0])
        explainer.explain("warm-up", warm["item_id"], evidence=warm)

        latencies, sources, tokens, examples, rejected = [], [], [], [], []
        with_keywords = 0
        load_before = os.getloadavg()[0]
        for user, index in pairs:
            found = engine.evidence(user, index)
            with_keywords += bool(found["user_keywords"])
            t0 = time.perf_counter()
            text = explainer.explain(plain(engine.maps.user_ids[user]), found["item_id"], evidence=found)
            latencies.append(time.perf_counter() - t0)
            sources.append(explainer.last_source)
            tokens.append(explainer.last_tokens)
            if explainer.last_source == "llm":
                examples.append(text)
            elif found["history"] and len(rejected) < args.examples:
                raw = explainer.clean(explainer.generate(explainer.prompt(found), explainer.primer(found)))
                rejected.append((raw, explainer.grounding_errors(raw, found)))
        load_after = os.getloadavg()[0]

    n = len(latencies)
    generated = sum(t > 0 for t in tokens)
    row = {
        "explanations": n,
        "p50 s": round(percentile(latencies, 50), 2),
        "p99 s": round(percentile(latencies, 99), 2),
        "mean s": round(float(np.mean(latencies)), 2),
        "grounding rate": round(sources.count("llm") / max(generated, 1), 3),
        "template fallback": round(sources.count("template") / max(n, 1), 3),
        "tokens (mean)": round(float(np.mean([t for t in tokens if t] or [0])), 1),
        "with profile keywords": round(with_keywords / max(n, 1), 3),
    }
    dataset = Path(args.path).name if args.path else "synthetic"
    text = (
        f"## Generated explanations ({dataset}, SmolLM2-135M-Instruct, CPU, {args.threads} torch threads)\n\n"
        + markdown_table([row], floatfmt=None)
        + f"\nworkspace + package {setup_s:.0f}s, model load {load_s:.1f}s; "
        f"load average {load_before:.2f} before, {load_after:.2f} after the timed loop "
        f"({os.cpu_count()} cores)\n\nExamples (generated, grounded):\n\n"
        + "".join(f"- {t}\n" for t in examples[: args.examples])
    )
    if rejected:
        text += "\nRejected (regenerated here to show why):\n\n" + "".join(
            f"- {t!r}: {'; '.join(e) or 'empty or over budget'}\n" for t, e in rejected[: args.examples]
        )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
