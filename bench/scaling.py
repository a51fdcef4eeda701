"""Scaling benchmark: time and peak memory per stage at 100K, 1M and 10M synthetic interactions.

    .venv/bin/python bench/scaling.py                  # 100k and 1m
    .venv/bin/python bench/scaling.py --sizes 100k 1m 10m

    # a whole profile, every stage (each recommender its own train stage) in its own process:
    .venv/bin/python bench/scaling.py --profile configs/quality.yaml --data ../shared/data/ml-latest-small \
        --sizes ml-small 1m 1m-wide 10m

Profile mode (``--profile``): the profile's params with the data of each size:
``ml-small`` is the MovieLens directory ``--data`` (movielens-latest format),
``300k``/``1m``/``10m`` the synthetic generator with 20 events per user over
5,000 items (the issue's 1M set: 50,000 users), ``1m-wide`` 1M events over a
100,000-item catalogue. Results go to bench/results/scaling-<profile name>/.

Protocol: the synthetic generator (recforge.data.synthetic) with 20 interactions
per user on average and a fixed catalogue of 5,000 items (more users and
events, the same catalogue), so the interaction count is the one thing that
grows. Each stage runs in its own subprocess (``recforge`` stage functions, the
same the CLI, DVC and Prefect call), so the peak resident memory reported is
that stage's own high-water mark (ru_maxrss, imports included).

Stages: ingest (generate + GX gate + canonical Parquet), validate, split,
encode (tfidf item vectors + user profiles), itemknn, mf (ALS), sequential
(GRU, one epoch), candidates (the re-ranker's candidate + feature tables for
val and test users, in blocks of rerank.block_users), rerank (the whole re-rank stage: candidates, LambdaRank
fit, lists). Each model fit is the train stage's protocol: fit on train +
lists for val users, refit on train+val + lists for test users.

Cores (``--cores 1 2 4 ...``): the chosen stages again with each process pinned to the first N of the
cores this process may use (``os.sched_setaffinity``; ``threads: auto`` and ``train.workers: auto`` follow
the affinity, ``RECFORGE_THREADS`` is dropped from the stages' environment); counts above what the
machine has are skipped with a note. Writes cores.md (wall and CPU seconds per stage and core count, the
speed-up over the smallest count) and cores.png beside the size table; the size table keeps the
unpinned runs. On the workspace of an earlier run, e.g. the 1M profile's train and rerank stages:
``--profile configs/quality.yaml --sizes 1m --stages train:gru train:mf rerank --cores 1 2 4 8 16``.

Writes bench/results/scaling/{results.jsonl,scaling.md,scaling.png}; the table
gives, per stage, wall and CPU seconds and peak MiB per size, and the fitted
exponent b of CPU seconds ~ n^b (least squares on log-log over all measured
sizes). The exponent uses CPU time (user + sys, all threads) because wall time
on a shared machine measures the neighbours as much as the stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scaling"
SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
STAGES = ["ingest", "validate", "split", "encode", "itemknn", "mf", "sequential", "candidates", "rerank"]
MODELS = {"itemknn": "itemknn", "mf": "als", "sequential": "gru"}
NUM_ITEMS = 5_000
PER_USER = 20


def params_for(n: int) -> dict:
    """params.yaml of one size (every path relative to the size's working directory)."""
    return {
        "seed": 0,
        "data": {
            "format": "synthetic",
            "synthetic": {
                "num_users": n // PER_USER,
                "num_items": NUM_ITEMS,
                "num_interactions": n,
                "num_topics": 16,
                "seed": 0,
            },
        },
        "encode": {"encoders": ["tfidf"], "profiles": True},
        "recommenders": {
            "itemknn": {"neighbors": 100},
            "als": {"plugin": "mf", "algorithm": "als", "factors": 32, "iterations": 10},
            "gru": {
                "plugin": "sequential",
                "cell": "gru",
                "dim": 32,
                "max_len": 20,
                "batch_size": 256,
                "epochs": 1,
                "min_epochs": 1,
                "patience": 1,
            },
        },
        "rerank": {
            "enabled": True,
            "models": ["itemknn", "als", "gru"],
            "candidates_per_model": 10,
            "folds": 1,
            "num_boost_round": 50,
            "early_stopping_rounds": 10,
            "ablations": False,
            "sentiment": False,
        },
        "evaluate": {"list_length": 20},
    }


PROFILE_SIZES = {
    "ml-small": (None, None, None),
    "300k": (15_000, 5_000, 300_000),
    "1m": (50_000, 5_000, 1_000_000),
    "1m-wide": (50_000, 100_000, 1_000_000),
    "10m": (500_000, 5_000, 10_000_000),
}


def profile_params(profile: Path, size: str, data: Path | None) -> dict:
    """The profile's params.yaml with the data of ``size`` (paths relative to the size's working directory)."""
    params = yaml.safe_load(profile.read_text()) or {}
    users, items, events = PROFILE_SIZES[size]
    if users is None:
        if data is None:
            raise SystemExit("--data DIR (ml-latest-small) is needed for the ml-small size")
        params["data"] = {"format": "movielens-latest", "path": str(Path(data).resolve())}
    else:
        synthetic = {"num_users": users, "num_items": items, "num_interactions": events, "num_topics": 16}
        params["data"] = {"format": "synthetic", "synthetic": synthetic}
    return params


def profile_stages(params: dict) -> list[str]:
    """Every stage of the pipeline, the train stage split into one stage per recommender (``train:<name>``)."""
    return [
        "ingest",
        "validate",
        "split",
        "encode",
        *(f"train:{m}" for m in params["recommenders"]),
        "rerank",
        "evaluate",
    ]


def child(stage: str, workdir: Path) -> dict:
    """Run one stage in this process (cwd = workdir) and return its measurements."""
    os.chdir(workdir)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING)
    from recforge.params import load_params

    params = load_params("params.yaml")
    if stage.startswith("train:"):
        from recforge.stages.train import run_train

        def body() -> None:
            run_train(params, stage.split(":", 1)[1])
    elif stage in MODELS:
        from recforge.stages.train import run_train

        def body() -> None:
            run_train(params, MODELS[stage])
    elif stage == "candidates":
        from recforge.rerank import candidate_models, iter_part, training_table
        from recforge.workspace import Workspace

        def body() -> None:  # as the rerank stage does: the val table whole, the test part block by block
            workspace = Workspace(params)
            models = candidate_models(params)
            training_table(workspace, models)
            for _ in iter_part(workspace, "test", models):
                pass
    else:
        from recforge.stages import get_stage

        function = get_stage(stage)

        def body() -> None:
            function(params)

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    body()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "stage": stage,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_mib": round(after.ru_maxrss / 1024, 1),
        "baseline_mib": round(before.ru_maxrss / 1024, 1),
    }


def pinned_cores(counts: list[int]) -> dict[int, list[int]]:
    """Each count's CPU set (the first N of this process's affinity); counts the machine lacks are left out."""
    if any(c < 1 for c in counts):  # argparse gave whole numbers
        raise SystemExit(f"--cores takes positive whole numbers, got {counts}")
    mine = sorted(os.sched_getaffinity(0))
    for count in counts:
        if count > len(mine):
            print(f"--cores {count}: skipped, this process may use {len(mine)} cores", flush=True)
    return {c: mine[:c] for c in dict.fromkeys(counts) if c <= len(mine)}


def run_size(
    label: str,
    n: int,
    stages: list[str],
    timeout: float,
    params: dict | None = None,
    cpus: list[int] | None = None,
) -> list[dict]:
    """Run ``stages`` of size ``label`` one process each (pinned to ``cpus`` when given); append the rows."""
    workdir = RESULTS / label
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params or params_for(n), sort_keys=False))
    if "encode" in stages:  # a cached embedding from an earlier pass would time a file read, not the encoder
        from recforge.encoding import embedding_cache_dir
        from recforge.params import load_params

        shutil.rmtree(workdir / embedding_cache_dir(load_params(workdir / "params.yaml")), ignore_errors=True)
    env = dict(os.environ)
    if cpus is not None:
        env.pop("RECFORGE_THREADS", None)  # the stage's share follows its pinned affinity, not an inherited budget
    rows = []
    for stage in stages:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--child", stage, "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
        )
        if done.returncode != 0:
            row = {
                "stage": stage,
                "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
            }
        else:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(size=label, interactions=n, wall_seconds=round(time.perf_counter() - started, 1))
        if cpus is not None:
            row["cores"] = len(cpus)
        rows.append(row)
        with open(RESULTS / "results.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        if "error" in row:
            break  # later stages need this one's outputs
    return rows


def fit_exponent(ns: list[float], values: list[float]) -> float | None:
    import numpy as np

    if len(ns) < 2:
        return None
    slope, _ = np.polyfit(np.log(ns), np.log(np.maximum(values, 1e-3)), 1)
    return float(slope)


def report(rows: list[dict]) -> str:
    """Markdown table + log-log plot from the latest measurement of each (size, stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[tuple[str, str], dict] = {}
    for row in rows:
        if "error" not in row and "cores" not in row:
            latest[(row["size"], row["stage"])] = row
    if not latest:
        return ""
    sizes = [s for s in SIZES if any(key[0] == s for key in latest)]
    header = (
        "| stage | "
        + " | ".join(f"{s} wall / CPU s | {s} peak MiB" for s in sizes)
        + " | exponent (CPU, all sizes) | slope (CPU, two largest) |"
    )
    lines = [header, "|" + "---|" * (2 * len(sizes) + 3)]
    fig, ax = plt.subplots(figsize=(7, 5))
    totals: dict[str, float] = {}
    walls: dict[str, float] = {}
    for stage in STAGES:
        cells, ns, secs = [], [], []
        if not any((size, stage) in latest for size in sizes):
            continue
        for size in sizes:
            row = latest.get((size, stage))
            if row:
                cells += [
                    f"{row['seconds']:.1f} / {row.get('cpu_seconds', float('nan')):.1f}",
                    f"{row['peak_mib']:.0f}",
                ]
                ns.append(SIZES[size])
                secs.append(row.get("cpu_seconds", row["seconds"]))
                totals[size] = totals.get(size, 0.0) + row.get("cpu_seconds", row["seconds"])
                walls[size] = walls.get(size, 0.0) + row["seconds"]
            else:
                cells += ["-", "-"]
        exponent = fit_exponent(ns, secs)
        last = fit_exponent(ns[-2:], secs[-2:])
        lines.append(
            f"| {stage} | " + " | ".join(cells) + f" | {'' if exponent is None else f'{exponent:.2f}'}"
            f" | {'' if last is None or len(ns) < 3 else f'{last:.2f}'} |"
        )
        if len(ns) >= 2:
            ax.loglog(ns, secs, marker="o", label=f"{stage} (b={exponent:.2f})")
    stages_seen = [st for st in STAGES if any((s, st) in latest for s in sizes)]
    complete = [s for s in sizes if all((s, st) in latest for st in stages_seen)]
    total_exp = fit_exponent([SIZES[s] for s in complete], [totals[s] for s in complete])

    def total_cell(size: str) -> str:
        peak = max((latest[(size, st)]["peak_mib"] for st in STAGES if (size, st) in latest), default=0)
        partial = "" if size in complete else " (partial)"
        return f"{walls.get(size, 0):.1f} / {totals.get(size, 0):.1f}{partial} | {peak:.0f}"

    lines.append(
        "| **all stages** | "
        + " | ".join(total_cell(s) for s in sizes)
        + f" | {'' if total_exp is None else f'{total_exp:.2f}'} (complete sizes) | |"
    )
    if len(complete) >= 2:
        ax.loglog(
            [SIZES[s] for s in complete],
            [totals[s] for s in complete],
            "k--",
            marker="s",
            label=f"all stages (b={total_exp:.2f})",
        )
    ax.set_xlabel("interactions")
    ax.set_ylabel("CPU seconds (user + sys)")
    ax.set_title("recforge stage time vs data size (log-log, b = fitted exponent)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=100)
    plt.close(fig)
    table = "\n".join(lines)
    (RESULTS / "scaling.md").write_text(
        "# recforge scaling: wall / CPU seconds and peak RSS per stage; exponent b of CPU seconds ~ n^b\n\n"
        + table
        + "\n"
    )
    return table


def cores_report(rows: list[dict]) -> str:
    """cores.md / cores.png: the latest pinned run of each (size, stage, cores), speed-up over the fewest cores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[tuple[str, str, int], dict] = {}
    for row in rows:
        if "error" not in row and "cores" in row:
            latest[(row["size"], row["stage"], row["cores"])] = row
    if not latest:
        return ""
    counts = sorted({key[2] for key in latest})
    lines = [
        "| size | stage | "
        + " | ".join(f"{c} core{'s' * (c > 1)} wall / CPU s" for c in counts)
        + " | speed-up at the most cores |",
        "|" + "---|" * (len(counts) + 3),
    ]
    fig, ax = plt.subplots(figsize=(9, 5))
    pairs = list(dict.fromkeys((size, stage) for size, stage, _ in latest))
    for size, stage in pairs:
        measured = [(c, latest[(size, stage, c)]) for c in counts if (size, stage, c) in latest]
        cells = [
            f"{latest[(size, stage, c)]['seconds']:.1f} / {latest[(size, stage, c)]['cpu_seconds']:.1f}"
            if (size, stage, c) in latest
            else "-"
            for c in counts
        ]
        first, last = measured[0], measured[-1]
        speedup = first[1]["seconds"] / max(last[1]["seconds"], 1e-9)
        lines.append(
            f"| {size} | {stage} | " + " | ".join(cells) + f" | {speedup:.2f}x ({first[0]} -> {last[0]} cores) |"
        )
        if len(measured) >= 2:
            drawn = len(ax.get_lines())  # 20 colours, then the line style changes: no two stages look alike
            ax.plot(
                [c for c, _ in measured],
                [r["seconds"] for _, r in measured],
                marker="o",
                color=plt.cm.tab20(drawn % 20),
                linestyle=("-", "--", ":")[drawn // 20 % 3],
                label=f"{size} {stage}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("cores (process pinned)")
    ax.set_ylabel("wall seconds")
    ax.set_title("recforge stage time vs cores (a halving per doubling is perfect scaling)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(RESULTS / "cores.png", dpi=100)
    plt.close(fig)
    table = "\n".join(lines)
    (RESULTS / "cores.md").write_text(
        "# recforge: wall / CPU seconds per stage, each process pinned to N cores\n\n" + table + "\n"
    )
    return table


def main() -> None:
    global RESULTS, SIZES, STAGES
    parser = argparse.ArgumentParser(description="time and peak memory per stage vs data size")
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted({*SIZES, *PROFILE_SIZES}))
    parser.add_argument("--stages", nargs="+", default=None, help="default: every stage")
    parser.add_argument("--profile", type=Path, help="a params file (e.g. configs/quality.yaml): its whole pipeline")
    parser.add_argument("--data", type=Path, help="the ml-latest-small directory, for the ml-small size")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per stage")
    parser.add_argument(
        "--cores", nargs="+", type=int, help="run the stages again pinned to each count of cores (e.g. 1 2 4 8 16)"
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir)))
        return
    if args.profile is not None:
        RESULTS = RESULTS.parent / f"scaling-{args.profile.stem}"
        sizes = args.sizes or ["ml-small", "1m"]
        SIZES = {s: PROFILE_SIZES[s][2] or 100_836 for s in PROFILE_SIZES}  # ml-latest-small: 100,836 ratings
        plans = {s: profile_params(args.profile, s, args.data) for s in sizes}
        STAGES = list(dict.fromkeys(st for p in plans.values() for st in profile_stages(p)))
    else:
        sizes = args.sizes or ["100k", "1m"]
        plans = dict.fromkeys(sizes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    pins = pinned_cores(args.cores) if args.cores else {None: None}
    if not args.report_only:
        for label in sizes:
            stages = args.stages or (profile_stages(plans[label]) if plans[label] else STAGES)
            for cpus in pins.values():
                run_size(label, SIZES[label], stages, args.timeout, plans[label], cpus)
    rows = [json.loads(line) for line in (RESULTS / "results.jsonl").read_text().splitlines() if line.strip()]
    print(report(rows))
    print(cores_report(rows))


if __name__ == "__main__":
    main()
