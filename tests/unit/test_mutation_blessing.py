"""recforge.blessing: the decision, the per-user metric, the paired bootstrap and a whole blessing of a real
candidate package against a real production package on held-out spans (fast: the two tiny packages are built once
and cached on disk, tests/unit/tiny_packages.py; each test names the bug it catches)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import blessing
from recforge.engine import Engine
from recforge.errors import RecforgeError
from recforge.params import load_params
from tests.unit.tiny_packages import ITEMKNN, POPULARITY, tiny_package

CANDIDATE = "recforge-model:v1-p2-cAAAAAAAAAAAA"
PRODUCTION = "recforge-model:v0-p1-cBBBBBBBBBBBB"


def ndcg(listed: list, truth: set, k: int) -> float:
    """NDCG@k of one list, written out (the reference the module's vectorised metric must agree with)."""
    dcg = sum(1 / math.log2(rank + 1) for rank, item in enumerate(listed[:k], start=1) if item in truth)
    return dcg / sum(1 / math.log2(rank + 1) for rank in range(1, min(len(truth), k) + 1))


def expected_ndcg(package: Path, truth: pd.DataFrame, k: int = 10) -> np.ndarray:
    """Each evaluation user's NDCG@k of the package's answers, in the order users first appear in ``truth``."""
    engine = Engine.load(package, device="cpu")
    users = pd.unique(truth["user_id"])
    held = truth.groupby("user_id")["item_id"].agg(set)
    return np.array([ndcg([i.item_id for i in engine.recommend(int(u), k).items], held[u], k) for u in users])


def point(registry: Path, tag: str, path: str | Path) -> None:
    """A registry whose production is ``tag`` at ``path``."""
    body = {"format": 1, "serial": 1, "versions": {tag: {"package_path": str(path), "content_hash": "h"}}}
    body.update(lineage=[tag], history=[{"at": "2026-01-01T00:00:00Z", "tag": tag}])
    registry.write_text(json.dumps(body))


@pytest.fixture
def world(tmp_path):
    """The popularity package as the candidate (its workspace for the test split), reports, registry and spans
    under tmp_path; the itemknn package for production."""
    extra = [
        f"paths.reports_dir={tmp_path / 'reports'}",
        f"promote.registry={tmp_path / 'production.json'}",
        f"data.spans={tmp_path / 'spans'}",
        "promote.bootstrap=40",
    ]
    params, candidate = tiny_package(POPULARITY, extra)
    _, production = tiny_package(ITEMKNN)
    return {"params": params, "candidate": candidate, "production": production, "root": tmp_path, "extra": extra}


def spans(root: Path) -> pd.DataFrame:
    """Two spans: 0001 (ingested) and 0002 (held out: known users, an unknown one, a repeated event)."""
    folder = root / "spans"
    folder.mkdir()
    (folder / "0001.csv").write_text("user_id,item_id,timestamp\n1,1,10\n2,2,11\n")
    rows = [(37, 25, 20), (37, 3, 21), (37, 3, 22), (5, 13, 23), (5, 9, 24), (12, 30, 25), (900, 13, 26)]
    rows += [(8, 7, 27), (20, 1, 28), (20, 26, 29), (33, 18, 30)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    frame.to_csv(folder / "0002.csv", index=False)
    return frame[["user_id", "item_id"]].drop_duplicates()


# ---- the decision ------------------------------------------------------------------------------------------


def decide(overrides: list[str], *args):
    return blessing.decide(load_params(None, overrides), *args)


def test_decide_same_data_and_params_is_rejected_first():
    # catches a retrain of production's own data and params blessed (it would be promoted as "new")
    assert decide([], 0.9, 0.1, True) == (
        "rejected",
        "the candidate was trained on production's data with production's params",
    )
    assert decide([], 0.9, None, True)[0] == "rejected"


def test_decide_floor_is_inclusive_and_checked_before_production():
    # catches the floor compared with > / <=, a candidate below the floor blessed because it beats production,
    # and the messages (the cycle prints them) losing the metric or the figures
    floor = ["promote.floor=0.25", "promote.metric=recall@5"]
    assert decide(floor, 0.2499, None, False) == ("rejected", "recall@5 0.2499 is below the floor 0.25")
    assert decide(floor, 0.2499, 0.0, False) == ("rejected", "recall@5 0.2499 is below the floor 0.25")
    assert decide(floor, 0.25, None, False) == ("blessed", "first model: recall@5 0.2500 >= floor 0.25")
    assert decide([], 0.0, None, False) == ("blessed", "first model: ndcg@10 0.0000 >= floor 0.0")


def test_decide_against_production_with_min_delta():
    # catches the delta's sign inverted, min_delta compared with > (an equal improvement rejected) or ignored,
    # and the messages' figures
    delta = ["promote.min_delta=0.125"]
    assert decide(delta, 0.375, 0.25, False) == (
        "blessed",
        "ndcg@10 0.3750 vs production 0.2500: +0.1250 >= 0.125",
    )
    assert decide(delta, 0.375, 0.3, False) == (
        "rejected",
        "ndcg@10 0.3750 vs production 0.3000: +0.0750 < 0.125",
    )
    worse = ["promote.min_delta=-0.125"]
    assert decide(worse, 0.25, 0.375, False) == (
        "blessed",
        "ndcg@10 0.2500 vs production 0.3750: -0.1250 >= -0.125",
    )
    assert decide(worse, 0.25, 0.5, False)[0] == "rejected"
    assert decide([], 0.5, 0.5, False)[0] == "blessed"  # not worse is enough by default
    assert decide([], 0.5, 0.5000001, False)[0] == "rejected"


# ---- the per-user metric -----------------------------------------------------------------------------------


def test_per_user_scores_each_user_on_the_top_k():
    # catches lists read past k, ranks off by one, a list of a user outside the evaluation counted, item ids of
    # truth and lists coded separately (a hit missed), and another metric than the one named
    users = pd.Index(["u1", "u2", "u3", "u4"])
    truth = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3", "u4"], "item_id": [10, 20, 30, 40, 50]})
    lists = pd.DataFrame(
        [
            ("u1", 10, 1),
            ("u1", 99, 2),
            ("u1", 20, 3),
            ("u2", 30, 2),
            ("u3", 40, 4),  # beyond k: a miss
            ("zz", 50, 1),  # not an evaluation user
            ("u4", 51, 1),
        ],
        columns=["user_id", "item_id", "rank"],
    )
    got = blessing.per_user(lists, truth, users, "ndcg@3")
    idcg2 = 1 + 1 / math.log2(3)
    assert got == pytest.approx([(1 + 1 / math.log2(4)) / idcg2, 1 / math.log2(3), 0.0, 0.0])
    assert blessing.per_user(lists, truth, users, "recall@3") == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert blessing.per_user(lists, truth, users, "recall@4") == pytest.approx([1.0, 1.0, 1.0, 0.0])
    assert blessing.per_user(lists, truth, users, "precision@1") == pytest.approx([1.0, 0.0, 0.0, 0.0])


# ---- the bootstrap -----------------------------------------------------------------------------------------


def reference_bootstrap(values: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, list[float]]:
    """The documented procedure, one resample at a time: users drawn with replacement (the same draws for every
    array), the 2.5 % and 97.5 % quantiles of the means, rounded to 6 places. Draws are made 100 resamples at
    a time (a fixed seed must give the figures it gave before)."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(values.values())))
    draws = np.concatenate(
        [rng.integers(0, n, size=(min(100, resamples - start), n)) for start in range(0, resamples, 100)]
    )
    assert len(draws) == resamples
    return {
        name: [round(float(np.quantile([array[d].mean() for d in draws], q)), 6) for q in (0.025, 0.975)]
        for name, array in values.items()
    }


def test_bootstrap_is_paired_seeded_and_rounded():
    # catches unpaired resamples, a chunk size or count other than the resamples asked for, other quantiles,
    # the seed ignored, and figures not rounded to 6 places
    rng = np.random.default_rng(0)
    values = {"candidate": rng.random(37), "production": rng.random(37)}
    values["delta"] = values["candidate"] - values["production"]
    got = blessing.bootstrap(values, 250, seed=3)
    assert got == reference_bootstrap(values, 250, 3)
    assert got != blessing.bootstrap(values, 250, seed=4)
    assert all(isinstance(v, float) and round(v, 6) == v for pair in got.values() for v in pair)
    assert got["candidate"][0] < values["candidate"].mean() < got["candidate"][1]
    assert blessing.bootstrap(values, 100, seed=3) == reference_bootstrap(values, 100, 3)
    assert blessing.bootstrap(values, 1, seed=3) == reference_bootstrap(values, 1, 3)
    same = blessing.bootstrap({"a": values["candidate"], "b": values["candidate"].copy()}, 150, seed=1)
    assert same["a"] == same["b"]


def test_bootstrap_without_resamples_or_users_is_nan():
    # catches an interval computed from nothing (numpy warnings, an error, or a made-up [0, 0])
    for values, resamples in (({"a": np.ones(3), "b": np.ones(3)}, 0), ({"a": np.zeros(0), "b": np.zeros(0)}, 50)):
        got = blessing.bootstrap(values, resamples, seed=0)
        assert list(got) == ["a", "b"]
        assert all(len(pair) == 2 and all(math.isnan(v) for v in pair) for pair in got.values())
    assert blessing.bootstrap({"a": np.full(5, 0.5)}, 30, seed=0) == {"a": [0.5, 0.5]}
    assert blessing.bootstrap({"a": np.array([0.25])}, 30, seed=0) == {"a": [0.25, 0.25]}  # one user is a figure


# ---- the evaluation data and lists ---------------------------------------------------------------------------


def test_evaluation_data_is_the_held_out_spans(world):
    # catches the ingested spans read as evaluation data, repeated events counted twice, columns other than
    # (user_id, item_id), the spans' frames not re-indexed, and no-span cases not returning (None, [])
    params = world["params"]
    assert blessing.evaluation_data(params) == (None, [])
    held = spans(world["root"])
    frame, names = blessing.evaluation_data(params)
    assert names == ["0002.csv"]
    assert list(frame.columns) == ["user_id", "item_id"]
    pd.testing.assert_frame_equal(frame, held)
    extra = world["extra"]
    both, names = blessing.evaluation_data(tiny_package(POPULARITY, [*extra, "data.spans_held_out=2"])[0])
    assert names == ["0001.csv", "0002.csv"]
    assert list(both.index) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]  # one index over both, the repeat dropped
    assert blessing.evaluation_data(tiny_package(POPULARITY, [*extra, "data.spans_held_out=0"])[0]) == (None, [])


def test_package_lists_load_the_package_on_the_cpu(world, monkeypatch, caplog):
    # catches the package loaded on another device than the CPU (on a GPU machine: "auto" picks CUDA, a blessing
    # then competes with training for the GPU and may not score as the CPU-served model does); the GPU here is
    # a stand-in: torch says one is available
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="recforge.engine"):
        blessing.package_lists(world["candidate"], np.array([37]), 2)
    [loaded] = [m for m in caplog.messages if m.startswith("loaded ")]
    assert loaded.endswith(" on cpu)")


def test_package_lists_are_the_services_answers(world):
    # catches lists not asked of the package as the service asks (users converted wrongly, k ignored), ranks
    # starting at 0, and columns named otherwise
    engine = Engine.load(world["candidate"], device="cpu")
    users = np.array([37, 5, 900])
    got = blessing.package_lists(world["candidate"], users, 4)
    assert list(got.columns) == ["user_id", "item_id", "rank"]
    want = [(u, i.item_id, r) for u in (37, 5, 900) for r, i in enumerate(engine.recommend(u, 4).items, start=1)]
    assert [tuple(row) for row in got.itertuples(index=False)] == want
    assert len(want) == 12
    names = blessing.package_lists(world["candidate"], np.array(["37", "nobody"], dtype=object), 2)
    assert names["user_id"].tolist() == ["37", "37", "nobody", "nobody"]
    assert names["item_id"].tolist()[:2] == [i.item_id for i in engine.recommend(37, 2).items]


# ---- a whole blessing ----------------------------------------------------------------------------------------


def test_first_model_without_spans_is_scored_on_its_test_split(world, caplog):
    # catches the first model blessed unscored, scored on other data than its test split, figures not the means
    # of the users' NDCG@10, and the report or its markdown missing a part
    params = world["params"]
    truth = pd.read_parquet(Path(params.paths.split_dir) / "test.parquet")[["user_id", "item_id"]]
    want = round(float(expected_ndcg(world["candidate"], truth).mean()), 6)
    with caplog.at_level(logging.INFO, logger="recforge.blessing"):
        report = blessing.bless(params, CANDIDATE, world["candidate"])
    assert report["candidate"]["tag"] == CANDIDATE and report["candidate"]["value"] == pytest.approx(want, abs=1e-6)
    low, high = report["candidate"]["ci95"]
    assert low <= report["candidate"]["value"] <= high and low < high
    assert report["production"] is None and report["delta"] is None
    assert report["evaluation"] == {"data": ["test split"], "users": truth["user_id"].nunique(), "events": len(truth)}
    assert report["decision"] == "blessed"
    assert report["reason"] == f"first model: ndcg@10 {report['candidate']['value']:.4f} >= floor 0.0"
    assert (report["metric"], report["min_delta"], report["floor"]) == ("ndcg@10", 0.0, 0.0)
    reports = Path(params.paths.reports_dir)
    assert json.loads((reports / "blessing.json").read_text()) == report
    assert blessing.read_blessing(params) == report
    value = report["candidate"]["value"]
    assert (reports / "blessing.md").read_text() == (
        f"# Blessing: BLESSED\n\n{report['reason']}\n\n"
        f"Evaluation data: test split ({report['evaluation']['users']} users, {len(truth)} events); "
        "min_delta 0.0, floor 0.0.\n\n"
        "|  | tag | ndcg@10 | 95% CI |\n|---|---|---|---|\n"
        f"| candidate | {CANDIDATE} | {value} | [{low}, {high}] |\n\n"
    )
    assert f"blessing: blessed ({report['reason']})" in caplog.messages


def test_candidate_against_production_on_the_held_out_span(world):
    # catches production scored on another package or not at all, the delta's sign, the paired intervals of
    # each part, evaluation counts (users, de-duplicated events), the decision not taken on these figures
    params = world["params"]
    truth = spans(world["root"])
    point(Path(params.promote.registry), PRODUCTION, world["production"])
    report = blessing.bless(params, CANDIDATE, world["candidate"])
    candidate = expected_ndcg(world["candidate"], truth)
    production = expected_ndcg(world["production"], truth)
    assert not np.allclose(candidate, production)  # the two packages answer differently
    # the figures are the means, rounded to 6 places
    assert report["candidate"]["value"] == round(float(candidate.mean()), 6)
    assert report["production"]["tag"] == PRODUCTION
    assert report["production"]["value"] == round(float(production.mean()), 6)
    assert report["delta"]["value"] == round(float((candidate - production).mean()), 6)
    assert report["candidate"]["ci95"] == reference_bootstrap({"c": candidate}, 40, params.seed)["c"]
    assert report["production"]["ci95"] == reference_bootstrap({"p": production}, 40, params.seed)["p"]
    assert report["delta"]["ci95"] == reference_bootstrap({"d": candidate - production}, 40, params.seed)["d"]
    assert report["evaluation"] == {"data": ["0002.csv"], "users": 7, "events": 10}
    decision, reason = blessing.decide(params, report["candidate"]["value"], report["production"]["value"], False)
    assert (report["decision"], report["reason"]) == (decision, reason)
    md = (Path(params.paths.reports_dir) / "blessing.md").read_text()
    assert "Evaluation data: 0002.csv (7 users, 10 events); min_delta 0.0, floor 0.0." in md
    assert f"| production | {PRODUCTION} | {report['production']['value']} |" in md
    assert f"| delta |  | {report['delta']['value']} | {report['delta']['ci95']} |" in md


@pytest.mark.parametrize(
    ("production_tag", "candidate_tag", "same"),
    [
        ("recforge-model:v1-p2-c111111111111", "recforge-model:v1-p2-c222222222222", True),
        ("recforge-model:v1-cX-c111111111111", "recforge-model:v1-cX-c222222222222", True),
        ("recforge-model:v1-cX-c111111111111", "recforge-model:v1-cY-c222222222222", False),
        ("recforge-model:v1-p2-c111111111111", "recforge-model:v1-p3-c111111111111", False),
    ],
)
def test_a_retrain_of_productions_data_and_params_is_not_blessed(world, production_tag, candidate_tag, same):
    # catches the "same data and params" test comparing whole tags (a rebuild with other files blessed as new)
    # or cutting the tag at another "-c" than the content hash's; production is not scored when it is the same
    params = world["params"]
    spans(world["root"])
    point(Path(params.promote.registry), production_tag, world["root"] / "absent" if same else world["production"])
    report = blessing.bless(params, candidate_tag, world["candidate"])
    if same:
        assert report["decision"] == "rejected"
        assert report["reason"] == "the candidate was trained on production's data with production's params"
        assert report["production"] == {"tag": production_tag, "value": None, "ci95": None}
        assert report["delta"] is None
        md = (Path(params.paths.reports_dir) / "blessing.md").read_text()
        assert f"| production | {production_tag} |  | [None, None] |" in md
    else:
        assert report["production"]["value"] is not None and report["delta"] is not None


def test_a_later_model_without_a_held_out_span_is_rejected(world):
    # catches a later candidate scored on its own test split (data production may have been trained on)
    params = world["params"]
    point(Path(params.promote.registry), PRODUCTION, world["root"] / "absent")
    report = blessing.bless(params, CANDIDATE, world["candidate"])
    assert report == {
        "metric": "ndcg@10",
        "min_delta": 0.0,
        "floor": 0.0,
        "candidate": {"tag": CANDIDATE},
        "production": {"tag": PRODUCTION},
        "evaluation": None,
        "decision": "rejected",
        "reason": "no held-out span: no data that neither model was trained on",
    }
    assert blessing.read_blessing(params) == report
    assert (Path(params.paths.reports_dir) / "blessing.md").read_text() == (
        "# Blessing: REJECTED\n\nno held-out span: no data that neither model was trained on\n\n"
        "Evaluation data: none (0 users, 0 events); min_delta 0.0, floor 0.0.\n\n"
        "|  | tag | ndcg@10 | 95% CI |\n|---|---|---|---|\n"
        f"| candidate | {CANDIDATE} |  | [None, None] |\n"
        f"| production | {PRODUCTION} |  | [None, None] |\n\n"
    )


def test_every_held_out_span_is_named(world):
    # catches the report naming the held-out spans other than as a comma-separated list
    spans(world["root"])
    params = tiny_package(POPULARITY, [*world["extra"], "data.spans_held_out=2"])[0]
    report = blessing.bless(params, CANDIDATE, world["candidate"])
    assert report["evaluation"]["data"] == ["0001.csv", "0002.csv"]
    md = (Path(params.paths.reports_dir) / "blessing.md").read_text()
    assert "Evaluation data: 0001.csv, 0002.csv (9 users, 12 events);" in md


def test_too_many_evaluation_users_is_an_error(world, monkeypatch):
    # catches the evaluation-size bound off by one or not applied (a blessing that runs for hours)
    spans(world["root"])
    monkeypatch.setattr(blessing, "MAX_EVALUATION_USERS", 7)
    assert blessing.bless(world["params"], CANDIDATE, world["candidate"])["evaluation"]["users"] == 7
    monkeypatch.setattr(blessing, "MAX_EVALUATION_USERS", 6)
    with pytest.raises(RecforgeError) as info:
        blessing.bless(world["params"], CANDIDATE, world["candidate"])
    assert str(info.value) == "evaluation data: 7 users, more than 6"


def test_read_blessing_before_any_blessing(world):
    # catches a missing blessing read as an empty one (a promotion without a decision)
    params = world["params"]
    with pytest.raises(RecforgeError) as info:
        blessing.read_blessing(params)
    path = Path(params.paths.reports_dir) / "blessing.json"
    assert str(info.value) == f"{path}: no blessing yet; run `recforge stage bless`"
