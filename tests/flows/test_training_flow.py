"""The training and batch_recommend flows end to end against a temporary Prefect server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.flows.conftest import TINY_PARAMS, write_params

ALL_STAGES = {"ingest", "validate", "split", "encode", "train-popularity", "train-content", "rerank", "evaluate"}
# every stage does real work: one encoder, two recommenders (one reads it), the re-ranker on (small and quick)
FULL_PARAMS = {
    **TINY_PARAMS,
    "recommenders": {"popularity": {}, "content": {"encoder": "tfidf"}},
    "encode": {"encoders": ["tfidf"]},
    "rerank": {
        "enabled": True,
        "folds": 2,
        "candidates_per_model": 20,
        "num_boost_round": 40,
        "early_stopping_rounds": 10,
    },
}


def _artifacts(flow_run_id, key: str | None = None) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            if key:
                flt.key = ArtifactFilterKey(any_=[key])
            return await client.read_artifacts(artifact_filter=flt)

    return asyncio.run(read())


def test_training_runs_end_to_end_then_caches(prefect_server, project: Path) -> None:
    import numpy as np

    from flows.training import training
    from tests.ndcg import recomputed_ndcg

    write_params(project, FULL_PARAMS)
    state = training("params.yaml", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert set(result["stages"]) == ALL_STAGES
    assert all(s == "Completed" for s in result["stages"].values()), result["stages"]
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert set(metrics) == {"popularity", "content", "rerank"}
    # encode wrote unit tfidf vectors for every item; the re-ranker trained (no fallback) on their features
    vectors = np.load(project / "artifacts/embeddings/tfidf.npy")
    assert len(vectors) == len(pd.read_parquet(project / "data/canonical/items.parquet"))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1)[vectors.any(axis=1)], 1.0, atol=1e-5)
    meta = json.loads((project / "artifacts/models/rerank/meta.json").read_text())
    assert meta["fallback"] is None and any(f.startswith("sim_tfidf") for f in meta["features"])
    # every model's reported NDCG@10 is the one recomputed by hand from its lists
    test = pd.read_parquet(project / "data/split/test.parquet")
    for name in metrics:
        lists = pd.read_parquet(project / "artifacts/lists" / name / "test.parquet")
        assert metrics[name]["ndcg@10"] == pytest.approx(recomputed_ndcg(lists, test, 10), abs=1e-9), name
    assert metrics["content"]["ndcg@10"] > 0.0

    artifacts = _artifacts(state.state_details.flow_run_id)
    keys = {a.key for a in artifacts}
    assert {"metrics", "training-summary", "validation-report"} <= keys
    table = next(a for a in artifacts if a.key == "metrics")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["model"] for row in rows} == {"popularity", "content", "rerank"}
    summary = next(a for a in artifacts if a.key == "training-summary").data
    assert "ndcg@10" in summary and "train-popularity" in summary

    # unchanged inputs: every stage is skipped (served from Prefect's cache)
    again = training("params.yaml")
    assert set(again["stages"].values()) == {"Cached"}, again["stages"]
    assert again["metrics"] == metrics

    # a change to evaluate.* re-runs evaluate only
    changed = training("params.yaml", overrides=["evaluate.ks=[1,5,10,20]"])
    ran = {name for name, s in changed["stages"].items() if s != "Cached"}
    assert ran == {"evaluate"}, changed["stages"]
    assert "ndcg@20" in changed["metrics"]["popularity"]

    # outputs deleted behind the cache's back: the stage runs again instead of trusting the cache
    import shutil

    shutil.rmtree(project / "artifacts/models/content")
    healed = training("params.yaml", overrides=["evaluate.ks=[1,5,10,20]"])
    assert healed["stages"]["train-content"] == "Completed"
    assert healed["stages"]["train-popularity"] == "Cached"
    assert (project / "artifacts/models/content/full/meta.json").exists()


def test_failing_validation_fails_the_run_with_report_artifact(prefect_server, project: Path) -> None:
    from flows.training import training

    params = json.loads(json.dumps(TINY_PARAMS))
    params["validate"] = {"rating_max": 0.5}  # synthetic ratings go up to 5: the gate must fail
    write_params(project, params)
    state = training("params.yaml", return_state=True)
    assert state.is_failed()
    assert "validation failed" in (state.message or "") or "validation" in str(state.result(raise_on_failure=False))
    artifacts = _artifacts(state.state_details.flow_run_id, "validation-report")
    assert artifacts, "the validation report must be attached to the failed run"
    assert "FAILED" in artifacts[0].data
    assert not (project / "data/split").exists()  # nothing downstream ran


def test_batch_recommend_writes_top_k_for_every_user(prefect_server, project: Path) -> None:
    from flows.training import batch_recommend, training

    training("params.yaml")
    summary = batch_recommend("params.yaml", model="pop_b", k=7, batch_users=50)
    frame = pd.read_parquet(summary["output"])
    users = pd.read_parquet(project / "data/canonical/interactions.parquet")["user_id"].nunique()
    assert Path(summary["output"]) == Path("artifacts/recs/batch/pop_b.parquet")
    assert frame["user_id"].nunique() == users == summary["users"]
    assert frame.groupby("user_id").size().max() == 7
    assert list(frame.columns) == ["user_id", "item_id", "rank", "score"]
    # the history the full model was trained on (train + val) is excluded
    seen = pd.concat([pd.read_parquet(project / f"data/split/{part}.parquet") for part in ("train", "val")])
    overlap = frame.merge(seen[["user_id", "item_id"]], on=["user_id", "item_id"])
    assert overlap.empty


def test_the_local_dask_cluster_shares_the_cores_between_its_workers(
    prefect_server, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orchestration.runner=dask without an address: the LocalCluster's worker processes are each given
    cores // workers threads (RECFORGE_THREADS), so threads: auto does not oversubscribe the machine, and
    start without MALLOC_TRIM_THRESHOLD_ (the nanny's 65536 made every torch epoch 1.7 times slower)."""
    import os

    from prefect import flow, task

    from flows.runners import task_runner
    from recforge.params import load_params
    from recforge.threads import available_cores

    monkeypatch.setenv("RECFORGE_THREADS", "5")  # this process's cores, as a parent would have set them
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier cluster's nanny leaves it here
    params = load_params("params.yaml", ["orchestration.runner=dask", "orchestration.dask_workers=2"])

    @task
    def worker_cores() -> tuple[int, int, str | None]:
        return os.getpid(), available_cores(), os.environ.get("MALLOC_TRIM_THRESHOLD_")

    @flow(task_runner=task_runner(params))
    def probe() -> list[tuple[int, int, str | None]]:
        return [future.result() for future in [worker_cores.submit() for _ in range(4)]]

    seen = probe()
    assert {cores for _, cores, _ in seen} == {2}, seen  # 5 // 2 each, not the whole 5
    assert os.getpid() not in {pid for pid, _, _ in seen}
    assert {trim for _, _, trim in seen} == {None}, seen
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's own environment is put back


def test_dask_runner_runs_the_training_tasks_on_the_cluster_workers(
    prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orchestration.runner=dask: the recommenders are fitted by the cluster's worker processes (the
    scheduler's task stream records them), and the metrics equal the local runner's (tolerance 1e-9)."""
    import os

    from distributed import Client, LocalCluster, get_task_stream

    from flows.training import training

    results = {}
    directory = tmp_path / "local"
    directory.mkdir()
    write_params(directory)
    monkeypatch.chdir(directory)
    out = training("params.yaml", overrides=["orchestration.runner=local"])
    assert out["stages"]["train-popularity"] == "Completed"
    results["local"] = out["metrics"]

    directory = tmp_path / "dask"
    directory.mkdir()
    monkeypatch.chdir(directory)  # the worker processes start here, so relative paths agree
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        # the cluster's address comes from the params file (a run may not override it)
        write_params(
            directory, {**TINY_PARAMS, "orchestration": {"runner": "dask", "dask_address": cluster.scheduler_address}}
        )
        with get_task_stream(client) as stream:
            out = training("params.yaml")
        workers = client.run(os.getpid)
    assert out["stages"]["train-popularity"] == "Completed" and out["stages"]["train-pop_b"] == "Completed"
    results["dask"] = out["metrics"]
    ran = [task for task in stream.data if task.get("status") == "OK"]
    # one task per recommender (the train variants), each run by one of the cluster's worker processes
    assert len(ran) == 2, stream.data
    assert {task["worker"] for task in ran} <= set(workers), (ran, workers)
    assert os.getpid() not in workers.values()
    for model, values in results["local"].items():
        for key, value in values.items():
            if isinstance(value, float):
                assert results["dask"][model][key] == pytest.approx(value, abs=1e-9), (model, key)
