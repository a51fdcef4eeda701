"""Candidate-model benchmark through the real pipeline path.

    .venv/bin/python bench/models.py --data ../shared/data/ml-latest-small -p configs/movielens-latest-small.yaml
    .venv/bin/python bench/models.py --synthetic 100000            # params.yaml models
    .venv/bin/python bench/models.py --synthetic 1000000 --models popularity,itemknn,als

For one dataset it runs ingest, validate, split and encode, then the TRAIN
STAGE for each configured model (``recforge.stages.train.train_model``: tuning
on validation where a ``tune:`` grid is given, the val fit, the train+val
refit and the candidate lists), each model in its own process so its peak
memory (max RSS of that process, Python and libraries included) can be read,
and finally the EVALUATE stage. The numbers are therefore what ``recforge run``
gives with the same params. Reported per model: val/test NDCG@10, Recall@10,
MRR@10, fit time (val fit incl. tuning + refit), recommendation throughput
(users/s of ``recommend(k=10)`` over every test user with the full model) and
peak memory. Everything is written under ``--out`` (default
/tmp/recforge-bench/models/<dataset>), never into the project's own outputs.
The table is printed (markdown) and saved to bench/results/models-<dataset>.{md,json}.
Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_overrides(n: int) -> list[str]:
    """A synthetic dataset of about ``n`` interactions (users and items scale with it)."""
    users = max(200, n // 30)
    items = max(100, min(20_000, n // 60))
    return [
        "data.format=synthetic",
        f"data.synthetic.num_interactions={n}",
        f"data.synthetic.num_users={users}",
        f"data.synthetic.num_items={items}",
        "data.synthetic.num_topics=16",
    ]


def _train_one(params_file: str | None, overrides: list[str], name: str, queue) -> None:
    """Child process: the train stage for one model, then throughput of the full model."""
    import logging

    from recforge.params import load_params
    from recforge.stages.train import load_model, train_model
    from recforge.workspace import Workspace

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        params = load_params(params_file, overrides)
        workspace = Workspace(params)
        # load data and import the plugin first so fit times measure fitting only
        from recforge import registry

        workspace.events("train"), workspace.events("val"), workspace.context()
        registry.recommenders.get(params.plugin_of(name))
        meta = train_model(workspace, name)
        model = load_model(params, name, "full", workspace.context())
        users = workspace.maps.user_index(workspace.frame("test")["user_id"].unique())
        users = users[users >= 0]
        started = time.perf_counter()
        for start in range(0, len(users), 1024):
            model.recommend(users[start : start + 1024], k=10, exclude_seen=True)
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(
            {
                "name": name,
                "fit_s": meta["fit_seconds"]["val"] + meta["fit_seconds"]["full"],
                "fit_seconds": meta["fit_seconds"],
                "users_per_s": len(users) / max(seconds, 1e-9),
                "peak_mb": peak_mb,
                "options": meta["options"],
                "refit_options": meta["refit_options"],
                "tuning": meta.get("tuning"),
            }
        )
    except Exception as exc:  # reported in the table, the other models still run
        logging.exception("model %s failed", name)
        queue.put({"name": name, "error": f"{type(exc).__name__}: {exc}"})


def run(params_file: str | None, overrides: list[str], models: list[str] | None, label: str) -> list[dict]:
    from recforge.params import load_params
    from recforge.stages import get_stage
    from recforge.stages.evaluate import run_evaluate

    params = load_params(params_file, overrides)
    names = models or list(params.recommenders)
    if models:  # keep only the chosen models so evaluate does not ask for the others' lists
        missing = set(models) - set(params.recommenders)
        if missing:
            raise SystemExit(f"not configured: {sorted(missing)}")
        params = params.model_copy(update={"recommenders": {n: params.recommenders[n] for n in models}})
    for stage in ("ingest", "validate", "split", "encode"):
        started = time.perf_counter()
        get_stage(stage)(params)
        print(f"[{label}] {stage}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)

    context = mp.get_context("spawn")
    rows = []
    for name in names:
        queue = context.Queue()
        child = context.Process(target=_train_one, args=(params_file, overrides, name, queue))
        child.start()
        result = queue.get()
        child.join()
        print(
            f"[{label}] {name}: {json.dumps({k: v for k, v in result.items() if k != 'tuning'}, default=str)}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(result)

    trained = [row["name"] for row in rows if "error" not in row]
    # candidate models only: the re-ranker has its own benchmark (bench/rerank.py)
    params = params.model_copy(
        update={
            "recommenders": {n: params.recommenders[n] for n in trained},
            "rerank": params.rerank.model_copy(update={"enabled": False}),
        }
    )
    metrics = run_evaluate(params) if trained else {}
    for row in rows:
        found = metrics.get(row["name"])
        if found:
            row["test"] = {m: found[f"{m}@10"] for m in ("ndcg", "recall", "mrr")}
            row["val"] = {m: found["val"][f"{m}@10"] for m in ("ndcg", "recall", "mrr")}
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| model | val NDCG@10 | val Recall@10 | val MRR@10 | test NDCG@10 | test Recall@10 | test MRR@10 | fit s (val+refit) | users/s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | failed: {row['error']} |||||||||")
            continue
        v, t = row.get("val", {}), row.get("test", {})
        cells = [f"{d.get(m, float('nan')):.4f}" for d in (v, t) for m in ("ndcg", "recall", "mrr")]
        lines.append(
            f"| {row['name']} | "
            + " | ".join(cells)
            + f" | {row['fit_s']:.1f} | {row['users_per_s']:,.0f} | {row['peak_mb']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    from recforge.params import paths_under

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset path (e.g. ../shared/data/ml-latest-small)")
    parser.add_argument("--format", default="movielens-latest", help="data.format for --data")
    parser.add_argument(
        "--synthetic", type=int, action="append", default=[], help="synthetic interactions (repeatable)"
    )
    parser.add_argument("-p", "--params", default=str(ROOT / "params.yaml"), help="params file (models to bench)")
    parser.add_argument("--models", help="comma-separated subset of the configured models")
    parser.add_argument("--out", default="/tmp/recforge-bench/models", help="private output root")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="extra params override")
    parser.add_argument("--label", help="name for the results (default: the dataset's)")
    args = parser.parse_args()

    datasets: list[tuple[str, list[str]]] = []
    if args.data:
        datasets.append((Path(args.data).name, [f"data.format={args.format}", f"data.path={args.data}"]))
    for n in args.synthetic:
        datasets.append((f"synthetic-{n // 1000}k", synthetic_overrides(n)))
    if not datasets:
        parser.error("give --data and/or --synthetic N")
    models = args.models.split(",") if args.models else None
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for label, data_overrides in datasets:
        label = args.label or label
        out = Path(args.out) / label
        overrides = data_overrides + paths_under(out) + args.overrides
        started = time.perf_counter()
        rows = run(args.params, overrides, models, label)
        title = f"{label} ({Path(args.params).name}; {time.perf_counter() - started:.0f}s wall)"
        table = markdown(rows, title)
        print(table, flush=True)
        (results_dir / f"models-{label}.md").write_text(table + "\n")
        (results_dir / f"models-{label}.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
