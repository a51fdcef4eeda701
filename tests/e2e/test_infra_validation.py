"""Infra-validation through the real CLI and real `bentoml serve` processes on loopback (recforge.infra).

A tiny synthetic workspace with a temporary BentoML home: a cycle whose candidate misses the latency budget
is blessed but not promoted (the reason in reports/promotion.json and the registry); the same candidate with
a budget it meets (``WITHIN_MS``) is served, answers as offline and is promoted; a served setting that makes the server
answer another model's lists, and a server that is not ready in time, fail with their reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RECFORGE = str(Path(sys.executable).parent / "recforge")
PARAMS = {
    "data": {"synthetic": {"num_users": 120, "num_items": 80, "num_interactions": 2400, "num_topics": 4}},
    "recommenders": {"popularity": {}, "itemknn": {"neighbors": 20}},
    "encode": {"encoders": []},
    "rerank": {"enabled": False},
    "evaluate": {"ks": [10], "list_length": 20},
    "feedback": {"enabled": False},
    "serve": {"build": False, "device": "cpu"},
    "promote": {"bootstrap": 200, "infra_users": 10},
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("infra")
    (root / "p.yaml").write_text(yaml.safe_dump(PARAMS))
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("RECFORGE_API_TOKEN", None)
    return root, env


def rf(ws, *args: str) -> subprocess.CompletedProcess:
    root, env = ws
    done = subprocess.run(
        ["nice", "-n", "19", RECFORGE, *args, "-p", "p.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# the budget the second cycle must meet: the tiny model answers in about 14 ms at p99, but this runs beside
# another test process (2 cores; 16 load clients in the hot-swap test), where the default 100 ms was once
# exceeded (106 ms): the test is about the budget deciding, not about this machine's tail
WITHIN_MS = 1000.0


def read(ws, name: str) -> dict:
    return json.loads((ws[0] / name).read_text())


def test_a_candidate_over_the_latency_budget_is_not_promoted_then_one_within_it_is(ws) -> None:
    slow = rf(ws, "cycle", "-S", "promote.infra_p99_ms=0.001")
    assert "not promoted" in slow.stdout and "infra-validation failed" in slow.stdout
    promotion = read(ws, "reports/promotion.json")
    infra = promotion["infra_validation"]
    assert promotion["promoted"] is False and promotion["decision"] == "blessed"
    assert infra["passed"] is False and "over the budget of 0.001 ms" in infra["reason"]
    assert infra["users"] == 11 and infra["ready_s"] > 0  # it did start and answer: only the budget failed
    registry = read(ws, "bentoml/recforge/production.json")
    assert registry["lineage"] == [] and registry["versions"][promotion["tag"]]["infra_validation"] == infra

    ok = rf(ws, "cycle", "-S", f"promote.infra_p99_ms={WITHIN_MS}")  # still no production: the cycle runs again
    assert "promoted" in ok.stdout and "not promoted" not in ok.stdout
    promotion = read(ws, "reports/promotion.json")
    infra = promotion["infra_validation"]
    assert promotion["promoted"] is True and infra["passed"] is True, infra
    assert infra["users"] == 11 and infra["p99_ms"] <= WITHIN_MS
    registry = read(ws, "bentoml/recforge/production.json")
    assert registry["lineage"] == [promotion["tag"]]
    assert "infra-validated" in registry["history"][-1]["reason"]


VALIDATE = """
import json, sys
from recforge.infra import validate
from recforge.params import load_params
print(json.dumps(validate(load_params("p.yaml", sys.argv[2:]), sys.argv[1])))
"""


def validate(ws, tag: str, *overrides: str) -> dict:
    root, env = ws
    done = subprocess.run(
        ["nice", "-n", "19", sys.executable, "-c", VALIDATE, tag, *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_server_answering_other_lists_or_not_ready_in_time_fails(ws) -> None:
    tag = read(ws, "reports/promotion.json")["tag"]
    served = read(ws, "reports/package.json")
    meta = json.loads(Path(ws[1]["BENTOML_HOME"], "models", *tag.split(":"), "manifest.json").read_text())
    assert set(meta["models"]) == {"popularity", "itemknn"}, served
    # serve.model names the model the server answers with; the offline lists are the package's own choice
    from recforge.engine import Engine

    chosen = Engine.load(Path(ws[1]["BENTOML_HOME"], "models", *tag.split(":")), device="cpu").primary
    other = next(name for name in meta["models"] if name != chosen)
    wrong = validate(ws, tag, f"serve.model={other}")
    assert wrong["passed"] is False and "differs from the offline list" in wrong["reason"], wrong
    late = validate(ws, tag, "promote.infra_timeout_s=1")
    assert late["passed"] is False and "not ready within" in late["reason"], late
    assert validate(ws, tag)["passed"] is True
