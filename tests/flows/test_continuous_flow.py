"""The `continuous` flow in a real Prefect run: the first cycle promotes; a cycle with no evaluation data
neither model saw ends Completed with a "not-promoted" artifact; the deployment's schedule is off."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="recforge-bentoml-"))  # before bentoml is imported

import yaml  # noqa: E402

from tests.flows.conftest import TINY_PARAMS  # noqa: E402
from tests.flows.test_training_flow import _artifacts  # noqa: E402


def test_continuous_flow_promotes_then_ends_completed_not_promoted(prefect_server, project: Path) -> None:
    from flows.continuous import continuous

    params = {
        **TINY_PARAMS,
        "serve": {"build": False},
        "promote": {"bootstrap": 100, "registry": str(project / "registry.json")},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    state = continuous("params.yaml", return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["promoted"] and result["ran"]
    assert {a.key for a in _artifacts(state.state_details.flow_run_id)} >= {"promoted", "validation-report"}
    registry = json.loads((project / "registry.json").read_text())
    assert registry["lineage"] == [result["tag"]]
    assert registry["history"][0]["run"].startswith("prefect:")

    again = continuous("params.yaml", force=True, return_state=True)
    assert again.is_completed(), again
    assert not again.result()["promoted"]
    [note] = _artifacts(again.state_details.flow_run_id, "not-promoted")
    assert "no held-out span" in note.data
    assert json.loads((project / "registry.json").read_text())["lineage"] == [result["tag"]]


def test_the_continuous_deployment_is_scheduled_and_off() -> None:
    from flows.serve import deployments

    found = {d.name: d for d in deployments()}
    schedules = found["continuous"].schedules
    assert schedules and not any(s.active for s in schedules)
