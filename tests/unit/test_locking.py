"""The workspace lock: one writer per workspace, released by the kernel when its holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from recforge.errors import RecforgeError
from recforge.locking import lock_path, workspace_lock

HOLD = """
import sys, time
from recforge.locking import workspace_lock
with workspace_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(cache: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(cache)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_process_is_refused_then_gets_the_lock_after_a_kill_9(tmp_path: Path) -> None:
    child = _holder(tmp_path)
    try:
        with pytest.raises(RecforgeError, match=f"pid {child.pid}"), workspace_lock(tmp_path, wait=False):
            pass
        with pytest.raises(RecforgeError, match="still holds"), workspace_lock(tmp_path, timeout=0.5):
            pass
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with workspace_lock(tmp_path, wait=False):  # no stale lock after kill -9
        assert lock_path(tmp_path).read_text().strip() == str(os.getpid())


def test_a_waiting_run_proceeds_when_the_holder_ends(tmp_path: Path) -> None:
    child = _holder(tmp_path)
    threading.Timer(0.5, lambda: os.kill(child.pid, signal.SIGTERM)).start()
    started = time.monotonic()
    with workspace_lock(tmp_path, timeout=20):
        waited = time.monotonic() - started
    child.wait()
    assert waited >= 0.4


def test_reentrant_within_a_process(tmp_path: Path) -> None:
    with workspace_lock(tmp_path, wait=False):
        with workspace_lock(tmp_path, wait=False):  # a flow's task inside its flow
            pass
        with workspace_lock(tmp_path, wait=False):
            pass


def test_two_concurrent_runs_on_one_workspace_both_end_cleanly(tmp_path: Path) -> None:
    params = {
        "data": {"synthetic": {"num_users": 80, "num_items": 60, "num_interactions": 1600, "num_topics": 4}},
        "encode": {"encoders": []},
        "recommenders": {"popularity": {}, "itemknn": {"neighbors": 20}},
        "rerank": {"enabled": False},
        "evaluate": {"ks": [5, 10], "list_length": 20},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    recforge = str(Path(sys.executable).parent / "recforge")
    runs = [
        subprocess.Popen([recforge, "run"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert any("waiting for another recforge run" in out for out in outputs), outputs
    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert set(metrics) == {"popularity", "itemknn"}
    debris = [p for p in tmp_path.rglob("*") if ".old-" in p.name or p.name.endswith(".tmp")]
    assert debris == []
