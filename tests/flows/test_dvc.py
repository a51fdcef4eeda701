"""dvc.yaml in a temporary git repository: repro, no-op repro, per-key params, experiments, metrics diff."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.flows.conftest import PROJECT_ROOT, bin_path

ALL = {"ingest", "validate", "split", "encode", "train@popularity", "train@pop_b", "rerank", "evaluate"}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The project's dvc.yaml, .dvcignore, params.yaml (tiny data) and code in a fresh git + DVC repo."""
    root = tmp_path_factory.mktemp("dvc-repo")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("recforge", "plugins"):
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=ignore)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(num_users=120, num_items=80, num_interactions=2400, num_topics=4)
    params["recommenders"] = {"popularity": {}, "pop_b": {"plugin": "popularity", "half_life_days": None}}
    params["encode"]["encoders"] = []
    params["rerank"] = {**params.get("rerank", {}), "enabled": False, "num_leaves": 31}
    params["evaluate"].update(ks=[1, 5, 10], list_length=20)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(bin_path('dvc')).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    _run(["git", "init", "-q"], root, env)
    _run([bin_path("dvc"), "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "project"], root, env)
    return root, env


def test_dvc_pipeline(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    dvc = bin_path("dvc")

    # 1. every stage runs, outputs and metrics appear where params.yaml says
    first = _run([dvc, "repro"], root, env)
    assert _ran(first) == ALL, first
    metrics = json.loads((root / "metrics/metrics.json").read_text())
    assert set(metrics) == {"popularity", "pop_b"}
    assert (root / "data/canonical/interactions.parquet").exists()
    assert (root / "plots/ndcg_at_k.csv").exists()

    # 2. nothing changed: nothing runs
    second = _run([dvc, "repro"], root, env)
    assert _ran(second) == set(), second
    assert "up to date" in second

    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline"], root, env)

    # 3. one model's option: that model, then what reads its lists (rerank, evaluate)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["recommenders"]["pop_b"]["half_life_days"] = 30.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([dvc, "repro"], root, env)
    assert _ran(third) == {"train@pop_b", "rerank", "evaluate"}, third
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "pop_b half-life"], root, env)

    # 4. an experiment on an evaluate key re-runs evaluate only; metrics diff sees the new metric
    exp = _run([dvc, "exp", "run", "-S", "evaluate.ks=[1,5,10,20]"], root, env)
    assert _ran(exp) == {"evaluate"}, exp
    diff = _run([dvc, "metrics", "diff", "--json"], root, env)
    changes = json.loads(diff)["metrics/metrics.json"]
    assert "popularity.ndcg@20" in changes and changes["popularity.ndcg@20"]["old"] is None

    # 5. the re-ranker's key (the example) re-runs rerank only (evaluate reads rerank's output, unchanged while disabled)
    rerank = _run([dvc, "exp", "run", "-S", "rerank.num_leaves=63"], root, env)
    assert _ran(rerank) == {"rerank"}, rerank
    shown = _run([dvc, "exp", "show", "--json"], root, env)
    assert "63" in shown
