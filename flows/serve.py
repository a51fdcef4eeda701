"""Register and serve the recforge deployments: ``python -m flows.serve`` (what ``make prefect`` runs).

Deployments (flow/deployment):

- ``training/training``: the whole pipeline; parameters ``params_file``,
  ``overrides`` (``["rerank.enabled=true", ...]``), ``package``, ``force``;
- ``training/retrain``: the same flow on a weekly cron schedule that is OFF
  by default (switch it on in the UI or with ``prefect deployment schedule resume``);
- ``batch_recommend/batch-recommend``: top-K for every user to Parquet;
- ``continuous/continuous``: one production cycle (flows.continuous: new spans? -> ... -> bless ->
  promote) hourly, schedule OFF by default.

The served process runs flow runs as subprocesses in its own working
directory, so start it from the project root (relative paths in params.yaml).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger("recforge.flows.serve")

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00, inactive until switched on
CONTINUOUS_CRON = "0 * * * *"  # hourly, inactive until switched on


def deployments(params_file: str = "params.yaml") -> list:
    """The RunnerDeployments (entry points by module path, so Dask workers can import the tasks)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.continuous import continuous
    from flows.training import batch_recommend, training

    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["recforge"]}
    return [
        training.to_deployment(
            name="training",
            parameters={"params_file": params_file, "overrides": [], "package": False, "force": False},
            description="Run the recforge pipeline (ingest -> ... -> evaluate [-> package]).",
            **common,
        ),
        training.to_deployment(
            name="retrain",
            schedules=[Cron(RETRAIN_CRON, active=False)],
            parameters={"params_file": params_file, "overrides": [], "package": True, "force": False},
            description="Scheduled retraining (schedule off by default); unchanged stages come from the cache.",
            **common,
        ),
        batch_recommend.to_deployment(
            name="batch-recommend",
            parameters={"params_file": params_file, "k": 10},
            description="Top-K for every user from a trained model, written to Parquet.",
            **common,
        ),
        continuous.to_deployment(
            name="continuous",
            schedules=[Cron(CONTINUOUS_CRON, active=False)],
            parameters={"params_file": params_file, "overrides": [], "force": False},
            description="One production cycle: new spans -> drift gate -> train -> bless -> promote (schedule off).",
            **common,
        ),
    ]


def wait_for_api(timeout: float = 90.0) -> None:
    """Block until the Prefect API at PREFECT_API_URL answers its health check."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise SystemExit("PREFECT_API_URL is not set (make prefect sets http://127.0.0.1:4200/api)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no Prefect API at {url} after {timeout:.0f}s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="default params file of the deployments")
    parser.add_argument("--limit", type=int, default=2, help="concurrent flow runs")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wait_for_api()
    from prefect import serve

    serve(*deployments(args.params), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    sys.exit(main())
