"""The training flow under each task runner: wall time, CPU time (flow process and its workers) and test NDCG@10.

    .venv/bin/python bench/flow_runners.py --config configs/quality.yaml \\
        --path ../shared/data/ml-latest-small --runners local dask:1 dask:2 --out /tmp/bench-runners
    .venv/bin/python bench/flow_runners.py --format synthetic --runners dask:2 -S data.synthetic.num_users=50000 ...

Each runner gets a fresh workspace under ``--out/<runner>`` (its own params.yaml:
the config, the dataset, every path under that folder, ``orchestration.runner``
and, for ``dask:N``, a LocalCluster of N worker processes) and one run of the
Prefect ``training`` flow in a child process against a temporary Prefect server
that the flow and the Dask workers share,
so the CPU time counts the flow process, the server and every worker it
started. The flow's output goes to ``--out/<runner>/flow.log``. Prints one
markdown row per runner.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One temporary Prefect server (SQLite) for the run, as a deployment has one: its address reaches the Dask
# workers through the flow's context. In ephemeral mode (no server) every worker process would start and
# report to a throwaway server of its own (about 10 CPU s each here), which a real deployment does not pay.
CHILD = (
    "from prefect.testing.utilities import prefect_test_harness\n"
    "from flows.training import training\n"
    "with prefect_test_harness(server_startup_timeout=120):\n"
    "    training('params.yaml')"
)


def runner_settings(label: str) -> dict:
    """``local`` or ``dask:N`` as the params' orchestration section."""
    if label == "local":
        return {"runner": "local"}
    name, _, workers = label.partition(":")
    if name != "dask" or not workers.isdigit() or int(workers) < 1:
        raise argparse.ArgumentTypeError(f"a runner is 'local' or 'dask:N' (N workers), got {label!r}")
    return {"runner": "dask", "dask_workers": int(workers)}


def workspace(
    out: Path, config: Path, data_format: str, path: str | None, orchestration: dict, sets: list[str] | None = None
) -> Path:
    from recforge.params import load_params, paths_under

    out.mkdir(parents=True, exist_ok=True)
    overrides = paths_under(out.resolve()) + [f"data.format={data_format}"] + list(sets or [])
    if path:
        overrides.append(f"data.path={Path(path).resolve()}")
    params = load_params(config, overrides).to_dict()
    params["orchestration"] = {**params.get("orchestration", {}), **orchestration}
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/quality.yaml"))
    parser.add_argument("--format", default="movielens-latest")
    parser.add_argument("--path", default=None, help="dataset path (not needed for synthetic)")
    parser.add_argument("--runners", nargs="+", default=["local", "dask:2"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-runners"))
    parser.add_argument("-S", "--set", dest="sets", action="append", default=[], help="a params override, as -S")
    args = parser.parse_args()
    runners = {label: runner_settings(label) for label in args.runners}

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("PREFECT_HOME", str(args.out.resolve() / "prefect-home"))
    rows = ["| runner | wall s | CPU s | test NDCG@10 (rerank) |", "|---|---:|---:|---:|"]
    for label, orchestration in runners.items():
        directory = workspace(
            args.out / label.replace(":", "-"), args.config, args.format, args.path, orchestration, args.sets
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        log = directory / "flow.log"
        with log.open("w") as out:
            done = subprocess.run([sys.executable, "-c", CHILD], cwd=directory, env=env, stdout=out, stderr=out)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            sys.exit(f"{label}: the flow failed (exit {done.returncode}); its output is in {log}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        params = yaml.safe_load((directory / "params.yaml").read_text())
        metrics = json.loads(Path(params["paths"]["metrics_file"]).read_text())
        ndcg = metrics.get("rerank", {}).get("ndcg@10")
        rows.append(f"| {label} | {wall:.1f} | {cpu:.1f} | {'-' if ndcg is None else f'{ndcg:.4f}'} |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
