"""A served deployment triggered with `prefect deployment run` runs the real pipeline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.flows.conftest import PROJECT_ROOT, bin_path


def _deployments(api_url: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return {f"{(await client.read_flow(d.flow_id)).name}/{d.name}": d for d in await client.read_deployments()}

    return asyncio.run(read())


def test_served_deployment_runs_the_pipeline(prefect_server: str, project: Path) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log = open(project / "serve.log", "w")  # noqa: SIM115 - the server writes to it until the fixture ends
    served = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        found: dict[str, object] = {}
        while time.monotonic() < deadline and served.poll() is None:
            found = _deployments(prefect_server)
            if {"training/training", "training/retrain", "batch_recommend/batch-recommend"} <= set(found):
                break
            time.sleep(1)
        assert served.poll() is None, (project / "serve.log").read_text()
        assert "training/training" in found, f"deployments: {sorted(found)}\n{(project / 'serve.log').read_text()}"
        # the retrain schedule exists and is off by default
        retrain = found["training/retrain"]
        assert retrain.schedules and not any(s.active for s in retrain.schedules)

        done = subprocess.run(
            [bin_path("prefect"), "deployment", "run", "training/training", "--watch", "--watch-timeout", "300"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=360,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output + (project / "serve.log").read_text()
        assert "Completed" in output, output
        metrics = json.loads((project / "metrics/metrics.json").read_text())
        assert {"popularity", "pop_b"} <= set(metrics)
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait()
        log.close()
