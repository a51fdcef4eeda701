"""A stage killed with SIGKILL mid-write leaves the previous output in place; a rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd

from flows.cache import hash_paths
from tests.flows.conftest import bin_path

BIG = [
    "-S",
    "data.synthetic.num_users=10000",
    "-S",
    "data.synthetic.num_items=1000",
    "-S",
    "data.synthetic.num_interactions=300000",
]


def _ingest(project: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen(
        [bin_path("recforge"), "stage", "ingest", *extra],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkill_mid_stage_leaves_no_partial_output(project: Path) -> None:
    canonical = project / "data/canonical"
    assert _ingest(project, []).wait(timeout=300) == 0
    before = hash_paths([canonical])
    before_rows = len(pd.read_parquet(canonical / "interactions.parquet"))
    before_names = sorted(p.name for p in canonical.iterdir())

    # kill -9 the moment the stage starts writing its staging directory (beside the output)
    process = _ingest(project, BIG)
    caught = False
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if any(canonical.parent.glob(".canonical.*.tmp")) or any(canonical.glob(".*.tmp")):
            process.send_signal(signal.SIGKILL)
            caught = True
            break
        time.sleep(0.002)
    process.wait(timeout=60)
    assert caught, "the stage finished before it could be killed mid-write"
    assert process.returncode == -signal.SIGKILL

    # the output in place is exactly the previous one, complete and readable
    assert hash_paths([canonical]) == before
    assert len(pd.read_parquet(canonical / "interactions.parquet")) == before_rows
    # the half-written output is the killed run's staging directory beside the output, never inside it
    names = sorted(p.name for p in canonical.iterdir())
    assert names == before_names, names
    staged = [p for p in canonical.parent.iterdir() if p.name.startswith(".canonical.")]
    assert staged and all(p.name.endswith(".tmp") and p.is_dir() for p in staged), staged

    # a rerun completes and swaps the new output in; the previous output is not left behind
    assert _ingest(project, BIG).wait(timeout=300) == 0
    left = {p for p in canonical.parent.iterdir() if p.name.startswith(".canonical.")}
    assert left <= set(staged), left  # at most the killed run's staging (cleaned when stale), nothing of this run
    assert sorted(p.name for p in canonical.iterdir()) == before_names
    after_rows = len(pd.read_parquet(canonical / "interactions.parquet"))
    assert after_rows > 10 * before_rows
    assert hash_paths([canonical]) != before
