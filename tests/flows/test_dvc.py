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

ALL = {"ingest", "validate", "split", "encode", "train@popularity", "train@content", "rerank", "evaluate"}


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
    # every stage does real work: one encoder, two recommenders (one reads the encoder), the re-ranker on
    params["recommenders"] = {"popularity": {"half_life_days": None}, "content": {"encoder": "tfidf"}}
    params["encode"]["encoders"] = ["tfidf"]
    params["rerank"] = {
        **params.get("rerank", {}),
        **{"enabled": True, "num_leaves": 31, "folds": 2, "candidates_per_model": 20, "ablations": False},
        **{"num_boost_round": 40, "early_stopping_rounds": 10, "llm_scorer": False},
    }
    params["evaluate"].update(ks=[1, 5, 10], list_length=20)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data" / "spans").mkdir(parents=True)  # ingest depends on the span directory (data.spans)
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
    assert set(metrics) == {"popularity", "content", "rerank"}
    assert (root / "data/canonical/interactions.parquet").exists()
    assert (root / "plots/ndcg_at_k.csv").exists()
    _check_encode_and_rerank(root, metrics)

    # 2. nothing changed: nothing runs
    second = _run([dvc, "repro"], root, env)
    assert _ran(second) == set(), second
    assert "up to date" in second

    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline"], root, env)

    # 3. one model's option: that model, then what reads its lists (rerank, evaluate)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["recommenders"]["popularity"]["half_life_days"] = 30.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([dvc, "repro"], root, env)
    assert _ran(third) == {"train@popularity", "rerank", "evaluate"}, third
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "popularity half-life"], root, env)

    # 4. an experiment on an evaluate key re-runs evaluate only; metrics diff sees the new metric
    exp = _run([dvc, "exp", "run", "-S", "evaluate.ks=[1,5,10,20]"], root, env)
    assert _ran(exp) == {"evaluate"}, exp
    diff = _run([dvc, "metrics", "diff", "--json"], root, env)
    changes = json.loads(diff)["metrics/metrics.json"]
    assert "popularity.ndcg@20" in changes and changes["popularity.ndcg@20"]["old"] is None

    # 5. the re-ranker's key (the example) re-runs rerank and what reads its lists (evaluate) only
    rerank = _run([dvc, "exp", "run", "-S", "rerank.num_leaves=63"], root, env)
    assert _ran(rerank) - {"evaluate"} == {"rerank"}, rerank
    shown = json.loads(_run([dvc, "exp", "show", "--json"], root, env))
    leaves = {name: params["rerank"]["num_leaves"] for name, params in _experiment_params(shown)}
    assert leaves.pop("workspace") == 63  # the experiment is applied in the workspace
    assert sorted(set(leaves.values())) == [31, 63], leaves  # the baseline kept 31, the experiment recorded 63


def _experiment_params(shown) -> list[tuple[str, dict]]:
    """(name or rev, params.yaml's values) of every commit and experiment in ``dvc exp show --json``."""
    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and isinstance(data.get("params"), dict) and "params.yaml" in data["params"]:
                found.append((node.get("name") or node.get("rev"), data["params"]["params.yaml"]["data"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


def _check_encode_and_rerank(root: Path, metrics: dict) -> None:
    """encode wrote the tfidf vectors the content model read; rerank trained and its lists are what evaluate scored."""
    import numpy as np
    import pandas as pd

    from tests.ndcg import recomputed_ndcg

    items = pd.read_parquet(root / "data/canonical/items.parquet")
    vectors = np.load(root / "artifacts/embeddings/tfidf.npy")
    assert vectors.shape[0] == len(items) and vectors.shape[1] > 0
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1)[vectors.any(axis=1)], 1.0, atol=1e-5)
    meta = json.loads((root / "artifacts/models/rerank/meta.json").read_text())
    assert meta["fallback"] is None and meta["training"]["positives"] > 0  # LambdaRank trained, no RRF fallback
    assert any(feature.startswith("sim_tfidf") for feature in meta["features"]), meta["features"]
    test = pd.read_parquet(root / "data/split/test.parquet")
    for name in ("content", "rerank"):
        lists = pd.read_parquet(root / "artifacts/lists" / name / "test.parquet")
        assert metrics[name]["ndcg@10"] == pytest.approx(recomputed_ndcg(lists, test, 10), abs=1e-9)
    assert metrics["content"]["ndcg@10"] > 0.0
