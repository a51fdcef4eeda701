"""The production loop through the real CLI (subprocesses) and a real BentoML model store in a temporary home:
`recforge cycle` promotes the first model, blesses or rejects on a held-out span, refuses a worse candidate,
stops on a bad span without touching production; rollback; two promotions racing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_spans import span_frame

RECFORGE = str(Path(sys.executable).parent / "recforge")
PARAMS = {
    "data": {
        "synthetic": {"num_users": 120, "num_items": 80, "num_interactions": 2400, "num_topics": 4},
        "spans": "spans",
    },
    "recommenders": {"popularity": {}, "itemknn": {"neighbors": 20}},
    "encode": {"encoders": []},
    "rerank": {"enabled": False},
    "evaluate": {"ks": [5, 10], "list_length": 20},
    "serve": {"build": False},
    "promote": {"bootstrap": 200, "infra_validate": False},  # served for real in test_infra_validation.py
}


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("loop")
    (root / "p.yaml").write_text(yaml.safe_dump(PARAMS))
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    return root, env


def rf(loop, *args: str) -> subprocess.CompletedProcess:
    root, env = loop
    return subprocess.run(
        [RECFORGE, *args, "-p", "p.yaml"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def registry(loop) -> dict:
    return json.loads((loop[0] / "bentoml/recforge/production.json").read_text())


def blessing(loop) -> dict:
    return json.loads((loop[0] / "reports/blessing.json").read_text())


def test_cycles_promote_bless_reject_and_stop(loop) -> None:
    root, _ = loop
    first = rf(loop, "cycle")
    assert first.returncode == 0, first.stderr
    assert "promoted" in first.stdout and "first model" in first.stdout
    tag1 = registry(loop)["lineage"][-1]
    assert blessing(loop)["decision"] == "blessed" and blessing(loop)["production"] is None
    assert "nothing to do" in rf(loop, "cycle").stdout

    # two spans: the first is trained on, the newest is the evaluation data neither model saw
    (root / "spans").mkdir()
    (root / "spans/0001.csv").write_text(
        span_frame(1_700_000_000, range(1, 121), range(1, 81), 600).to_csv(index=False)
    )
    (root / "spans/0002.csv").write_text(
        span_frame(1_710_000_000, range(1, 121), range(1, 81), 600, seed=5).to_csv(index=False)
    )
    second = rf(loop, "cycle")
    assert second.returncode == 0, second.stderr
    report = blessing(loop)
    assert report["evaluation"]["data"] == ["0002.csv"]
    assert report["production"]["tag"] == tag1 and report["candidate"]["tag"] != tag1
    low, high = report["candidate"]["ci95"]
    assert low <= report["candidate"]["value"] <= high
    assert report["delta"]["value"] == pytest.approx(report["candidate"]["value"] - report["production"]["value"])
    state = registry(loop)
    expected = report["candidate"]["tag"] if report["decision"] == "blessed" else tag1
    assert state["lineage"][-1] == expected
    assert state["versions"][report["candidate"]["tag"]]["spans"] == ["0001.csv"]
    assert "drift.unknown_users" in (root / "reports/validation.md").read_text()  # kept by the validate stage
    production = state["lineage"][-1]

    # a candidate short of min_delta (popularity alone; random spans make no model better, so the margin
    # decides): not blessed, the run ends normally, production stays
    worse = rf(loop, "cycle", "--force", "-S", "recommenders={popularity: {}}", "-S", "promote.min_delta=0.5")
    assert worse.returncode == 0, worse.stderr
    assert "not promoted" in worse.stdout
    assert blessing(loop)["decision"] == "rejected" and "< 0.5" in blessing(loop)["reason"]
    assert registry(loop)["lineage"][-1] == production

    # a span of only unknown users: the gate stops the cycle (exit 2), production and the registry unchanged
    before = (root / "bentoml/recforge/production.json").read_bytes()
    (root / "spans/0003.csv").write_text(
        span_frame(1_720_000_000, users=range(5000, 5050), items=range(1, 81), n=300).to_csv(index=False)
    )
    stopped = rf(loop, "cycle")
    assert stopped.returncode == 2 and "drift.unknown_users" in stopped.stderr
    assert (root / "bentoml/recforge/production.json").read_bytes() == before
    (root / "spans/0003.csv").unlink()

    # rollback goes to the version before; with nothing before it, a one-line error
    if len(registry(loop)["lineage"]) > 1:
        back = rf(loop, "rollback", "--reason", "test")
        assert back.returncode == 0, back.stderr
        assert registry(loop)["lineage"] == [tag1]
        assert registry(loop)["history"][-1]["action"] == "rollback"
    refused = rf(loop, "rollback")
    assert refused.returncode == 2 and "no earlier production version" in refused.stderr
    listed = rf(loop, "models", "--production")
    assert listed.returncode == 0 and tag1[:30] in listed.stdout and "promotion history" in listed.stdout
    bad = rf(loop, "promote", "recforge-model:../../etc")
    assert bad.returncode == 2 and "model tag" in bad.stderr


RACER = """
import sys
from recforge import production
from recforge.params import load_params
params = load_params(None, [f"promote.registry={sys.argv[1]}"])
# each tag's store entry is checked once, so the promotions follow each other closely and their
# read-change-write sections overlap unless the registry lock keeps them apart
entries = {tag: production.store_entry(tag) for tag in sys.argv[3:5]}
production.store_entry = entries.__getitem__
import pathlib, time
go = pathlib.Path(sys.argv[1] + ".go")
pathlib.Path(sys.argv[1] + "." + sys.argv[3][-6:] + ".ready").touch()
while not go.exists():  # both start together
    time.sleep(0.005)
for i in range(int(sys.argv[2])):
    production.promote(params, sys.argv[3 + i % 2], reason=f"racer {sys.argv[3]} {i}", run=sys.argv[3])
"""


def test_two_promotions_racing_leave_one_consistent_registry(loop, tmp_path: Path) -> None:
    tags = sorted(registry(loop)["versions"])[:2]
    assert len(tags) == 2, "the cycle test registers at least two versions"
    path = tmp_path / "race.json"
    n = 60
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(n), *order],
            env=loop[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in (tags, tags[::-1])
    ]
    import time

    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("race.json.*.ready"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "race.json.go").touch()
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
    body = json.loads(path.read_text())
    assert len(body["history"]) == len(body["lineage"]) == 2 * n  # no promotion lost
    assert body["serial"] == 2 * n
    assert body["lineage"][-1] == body["history"][-1]["tag"]
    for before, after in zip(body["history"], body["history"][1:]):
        assert after["previous"] == before["tag"]  # each one saw the one before it
    from recforge import production

    assert production.current(path).tag == body["lineage"][-1]
