"""The training and batch_recommend flows end to end against a temporary Prefect server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.flows.conftest import TINY_PARAMS, write_params

ALL_STAGES = {"ingest", "validate", "split", "encode", "train-popularity", "train-pop_b", "rerank", "evaluate"}


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
    from flows.training import training

    state = training("params.yaml", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert set(result["stages"]) == ALL_STAGES
    assert all(s == "Completed" for s in result["stages"].values()), result["stages"]
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert set(metrics) == {"popularity", "pop_b"}
    assert 0.0 < metrics["popularity"]["ndcg@10"] <= 1.0
    # identical configs of the same deterministic model: identical metrics
    assert metrics["popularity"]["ndcg@10"] == pytest.approx(metrics["pop_b"]["ndcg@10"], abs=1e-12)

    artifacts = _artifacts(state.state_details.flow_run_id)
    keys = {a.key for a in artifacts}
    assert {"metrics", "training-summary", "validation-report"} <= keys
    table = next(a for a in artifacts if a.key == "metrics")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["model"] for row in rows} == {"popularity", "pop_b"}
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

    shutil.rmtree(project / "artifacts/models/pop_b")
    healed = training("params.yaml", overrides=["evaluate.ks=[1,5,10,20]"])
    assert healed["stages"]["train-pop_b"] == "Completed"
    assert healed["stages"]["train-popularity"] == "Cached"
    assert (project / "artifacts/models/pop_b/full/meta.json").exists()


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


def test_dask_runner_matches_local_runner(prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same models trained on a Dask LocalCluster give the same metrics (tolerance 1e-9)."""
    from flows.training import training

    results = {}
    for runner in ("local", "dask"):
        directory = tmp_path / runner
        directory.mkdir()
        write_params(directory)
        monkeypatch.chdir(directory)
        out = training("params.yaml", overrides=[f"orchestration.runner={runner}", "orchestration.dask_workers=2"])
        assert out["stages"]["train-popularity"] == "Completed"
        results[runner] = out["metrics"]
    for model, values in results["local"].items():
        for key, value in values.items():
            if isinstance(value, float):
                assert results["dask"][model][key] == pytest.approx(value, abs=1e-9), (model, key)
