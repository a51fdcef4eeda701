"""Feedback in the service: /recommend leaves out what a user bought, rated or disliked through /feedback.

In process (recforge.engine over a real package and a real SQLite store), for a single model and for the
re-ranker's precomputed lists; then over HTTP on a real ``bentoml serve`` with 2 workers: an item bought
through /feedback is absent from that user's next list from every worker within the stated bound.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import httpx
import pytest

from recforge.artifacts import plain
from recforge.engine import Engine
from recforge.feedback import FeedbackStore
from recforge.packaging import build_package
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from tests.conftest import PROJECT_ROOT, TINY, TINY_RERANK, TINY_RERANK_MODELS, tmp_overrides
from tests.service.server import served
from tests.service.test_service import free_port
from tests.unit import test_feedback_store

TOKEN = "feedback-token"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    params = load_params(None, tmp_overrides(root) + TINY + ["recommenders={popularity: {}, itemknn: {neighbors: 20}}"])
    run_pipeline(params)
    build_package(params, root / "package")
    return root


def _items(answer) -> list:
    return [item.item_id for item in answer.items]


def test_bought_rated_and_disliked_items_leave_the_list_views_do_not(package, tmp_path):
    # catches the exclusion not applied, applied to views, a list shorter than k after it, another user's
    # feedback applied, and exclude_seen=false ignoring the user's wish to see everything
    engine = Engine.load(package / "package", device="cpu", feedback_url=str(tmp_path / "f.sqlite3"))
    user, other = plain(engine.maps.user_ids[0]), plain(engine.maps.user_ids[1])
    before = _items(engine.recommend(user, 10))
    other_before = _items(engine.recommend(other, 10))
    ack = engine.record_feedback(
        [
            {"user_id": user, "item_id": before[0], "event": "purchase"},
            {"user_id": str(user), "item_id": before[1], "event": "rating", "rating": 1.0},
            {"user_id": user, "item_id": before[2], "event": "dislike"},
            {"user_id": user, "item_id": before[3], "event": "view"},
            {"user_id": user, "item_id": "brand-new-item", "event": "purchase"},  # not in the package: recorded
        ]
    )
    assert (ack.received, ack.stored) == (5, 5)
    after = _items(engine.recommend(user, 10))
    assert len(after) == 10 and not set(before[:3]) & set(after)
    assert before[3] in after and after[:7] == before[3:10]
    assert _items(engine.recommend(other, 10)) == other_before
    assert set(before[:3]) <= set(_items(engine.recommend(user, 100, exclude_seen=False)))


def test_the_rerankers_precomputed_lists_leave_them_out_too(tmp_path_factory, tmp_path):
    # catches the re-ranker's stored-list lookup (the default served path) bypassing the exclusions
    root = tmp_path_factory.mktemp("feedback-rerank")
    params = load_params(
        None, tmp_overrides(root) + TINY + [TINY_RERANK_MODELS, *TINY_RERANK, "evaluate.list_length=20"]
    )
    run_pipeline(params)
    build_package(params, root / "package")
    engine = Engine.load(root / "package", device="cpu", model="rerank", feedback_url=str(tmp_path / "f.sqlite3"))
    user = plain(engine.maps.user_ids[3])
    before = _items(engine.recommend(user, 10))
    engine.record_feedback([{"user_id": user, "item_id": i, "event": "purchase"} for i in before[:2]])
    after = _items(engine.recommend(user, 10))
    assert after[:8] == before[2:] and len(after) == 10 and not set(before[:2]) & set(after)


def test_foldin_folds_new_interests_into_the_history(package, tmp_path):
    # catches feedback.foldin ignored (the list only loses the bought item) or folding in something else than the
    # trained history plus the new interests, and a fold-in that forgets the exclusions (a disliked item listed)
    import numpy as np

    engine = Engine.load(
        package / "package",
        device="cpu",
        model="itemknn",
        feedback_url=str(tmp_path / "on.sqlite3"),
        feedback_foldin=True,
    )
    assert engine.fold_in_model == "itemknn"
    user = plain(engine.maps.user_ids[5])
    dense = engine.maps.lookup_user(user)
    before = _items(engine.recommend(user, 10))
    seen = set(engine._history(dense).tolist())
    bought = next(
        i for i in np.argsort(engine.popularity) if i not in seen and plain(engine.maps.item_ids[i]) not in before
    )
    bought_id = plain(engine.maps.item_ids[bought])
    engine.record_feedback(
        [
            {"user_id": user, "item_id": bought_id, "event": "purchase"},
            {"user_id": user, "item_id": before[0], "event": "dislike"},
        ]
    )
    after = _items(engine.recommend(user, 10))
    history = np.concatenate([engine._history(dense), [bought]])
    folded, _ = engine.models["itemknn"].recommend_history(history, k=11, exclude_seen=True)
    expected = [plain(engine.maps.item_ids[i]) for i in np.ravel(folded) if plain(engine.maps.item_ids[i]) != before[0]]
    assert after == expected[:10] and after[:9] != before[1:] and bought_id not in after and before[0] not in after
    assert engine.recommend(user, 10).model == "itemknn"


def test_a_worker_sees_another_workers_feedback_within_the_bound(package, tmp_path):
    # catches a cache that never expires: a purchase recorded by another worker would never leave the list
    url = str(tmp_path / "shared.sqlite3")
    engine = Engine.load(package / "package", device="cpu", feedback_url=url, feedback_staleness_s=0.5)
    user = plain(engine.maps.user_ids[0])
    top = _items(engine.recommend(user, 5))[0]
    FeedbackStore(url).add([{"user_id": user, "item_id": top, "event": "purchase"}])  # "the other worker"
    time.sleep(0.55)
    assert top not in _items(engine.recommend(user, 5))


@pytest.fixture(scope="module")
def postgres_url():
    yield from test_feedback_store.postgres_server()


def test_the_engine_on_a_postgresql_store(package, postgres_url):
    # catches the PostgreSQL path of the engine broken (placeholders, the batch insert, reading exclusions from
    # the event loop's connection) where the SQLite tests would not see it
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS feedback_events, feedback_exports, schema_version")
    engine = Engine.load(package / "package", device="cpu", feedback_url=postgres_url, feedback_staleness_s=0)
    user = plain(engine.maps.user_ids[2])
    before = _items(engine.recommend(user, 10))
    batch = [{"user_id": user, "item_id": i, "event": "dislike", "event_id": f"pg-{i}"} for i in before[:3]]
    assert engine.record_feedback(batch).stored == 3 and engine.record_feedback(batch).duplicates == 3
    assert _items(engine.recommend(user, 10))[:7] == before[3:]


# ---- over HTTP, two workers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(package, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback-http")
    store = root / "events.sqlite3"
    env = {**os.environ, "RECFORGE_API_TOKEN": TOKEN, "BENTOML_HOME": str(root / "bentoml")}
    env["BENTOML_DO_NOT_TRACK"] = "True"
    port = free_port()
    args = [f"package_dir={package / 'package'}", "device=cpu", "workers=2", f"feedback_url={store}"]
    args += ["feedback_staleness_s=1.0", "access_log=false"]
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "service:Recforge"]
    command += ["--working-dir", str(PROJECT_ROOT / "service"), "--host", "127.0.0.1", "--port", str(port)]
    for arg in args:
        command += ["--arg", arg]
    with served(command, port=port, cwd=root, env=env, log_path=root / "serve.log") as base:
        yield base, store


def _client(base: str) -> httpx.Client:
    """One kept-alive connection: every request of this client reaches the same worker."""
    return httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def _worker(client: httpx.Client) -> int:
    return client.get("/metadata").json()["feedback"]["worker"]


def test_a_purchase_leaves_every_workers_list_within_the_bound(server):
    # catches feedback seen only by the worker that recorded it (a per-process store or a cache without expiry)
    base, _ = server
    clients: dict[int, httpx.Client] = {}
    for _ in range(60):  # new connections until both workers answered one
        client = _client(base)
        pid = _worker(client)
        if pid in clients:
            client.close()
        else:
            clients[pid] = client
        if len(clients) == 2:
            break
    assert len(clients) == 2, "the server did not answer from 2 workers"
    meta = next(iter(clients.values())).get("/metadata").json()
    user, bound = meta["example_user_id"], meta["feedback"]["staleness_s"]
    lists = {pid: c.post("/recommend", json={"user_id": user, "k": 10}).json() for pid, c in clients.items()}
    bought = lists[next(iter(lists))]["items"][0]["item_id"]  # every worker has now cached the user's exclusions
    first = next(iter(clients.values()))
    answer = first.post("/feedback", json={"events": [{"user_id": user, "item_id": bought, "event": "purchase"}]})
    assert answer.status_code == 200 and answer.json() == {"received": 1, "stored": 1, "duplicates": 0}
    time.sleep(bound)
    for pid, client in clients.items():
        items = [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]]
        assert _worker(client) == pid and bought not in items and len(items) == 10, pid
    for client in clients.values():
        client.close()


def test_acknowledged_events_are_committed_and_stored_once(server):
    # catches an answer before the commit (the store's file would not hold the events yet) and a resent
    # event_id stored twice
    base, store = server
    batch = {
        "events": [{"user_id": "u-ack", "item_id": f"i{n}", "event": "click", "event_id": f"ack-{n}"} for n in range(3)]
    }
    with _client(base) as client:
        assert client.post("/feedback", json=batch).json() == {"received": 3, "stored": 3, "duplicates": 0}
        with sqlite3.connect(store) as connection:
            count = "SELECT count(*) FROM feedback_events WHERE user_id = 'u-ack'"
            assert connection.execute(count).fetchone()[0] == 3
        assert client.post("/feedback", json=batch).json() == {"received": 3, "stored": 0, "duplicates": 3}
        with sqlite3.connect(store) as connection:
            assert connection.execute(count).fetchone()[0] == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": [{"user_id": True, "item_id": "i", "event": "view"}]}, "user_id"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "view", "timestamp": "1"}]}, "timestamp"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "purchase", "rating": 4}]}, "rating"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "rating", "rating": 7}]}, "rating"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "like"}]}, "event"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "view", "extra": 1}]}, "extra"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "view", "review": "x" * 5001}]}, "review"),
        ({"events": []}, "events"),
        ({"events": [{"user_id": "u", "item_id": "i", "event": "view"}] * 1001}, "events"),
    ],
)
def test_bad_feedback_is_a_one_line_400_and_stores_nothing(server, body, message):
    # catches bool->int coercion (true stored as user 1), a string timestamp coerced, a rating on another event,
    # unbounded batches and reviews; and a refused request that still stored something
    base, store = server
    with sqlite3.connect(store) as connection:
        before = connection.execute("SELECT count(*) FROM feedback_events").fetchone()[0]
    with _client(base) as client:
        answer = client.post("/feedback", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert message in error and "\n" not in error
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT count(*) FROM feedback_events").fetchone()[0] == before


def test_feedback_needs_the_token(server):
    # catches /feedback left outside the Guard (anyone could write events for any user)
    base, _ = server
    body = {"events": [{"user_id": "u", "item_id": "i", "event": "view"}]}
    assert httpx.post(f"{base}/feedback", json=body, timeout=10).status_code == 401


# ---- the round trip: feedback -> span -> retrain -----------------------------------------------------------------


def _share_listing(engine: Engine, users: list, item) -> float:
    return sum(item in _items(engine.recommend(u, 10)) for u in users) / len(users)


def test_round_trip_feedback_exported_and_retrained_on_moves_the_neighbours_lists(server, package, tmp_path):
    # catches the loop broken anywhere between the service and the next model: events not exported (or exported
    # with ids of another type than the base data's, which the gate refuses), a span ingest cannot read, or a
    # retrain that does not learn from it. Half the users buy the catalogue's least popular item through
    # /feedback (then view another item, so the purchase is their validation event, which the served refit
    # trains on); after the export and a retrain on base + span, item kNN puts it in the other half's lists.
    from recforge.spans import add_span

    base, store = server
    before = Engine.load(package / "package", device="cpu", model="itemknn")
    users = [plain(u) for u in before.maps.user_ids]
    rare = plain(before.maps.item_ids[int(before.popularity.argmin())])
    buyers, others = users[: len(users) // 2], users[len(users) // 2 :]
    assert _share_listing(before, others, rare) <= 0.1
    earlier = FeedbackStore(store).events()["id"]
    mark = int(earlier.max()) if len(earlier) else 0  # what earlier tests sent stays out of this span
    later = int(time.time()) + 60
    events = [{"user_id": u, "item_id": rare, "event": "purchase", "event_id": f"rt-{u}"} for u in buyers]
    events += [
        {"user_id": u, "item_id": plain(before.maps.item_ids[n % 10]), "event": "view", "timestamp": later}
        for n, u in enumerate(buyers)
    ]
    with _client(base) as client:
        assert client.post("/feedback", json={"events": events}).json()["stored"] == len(events)
    exported = FeedbackStore(store).export(tmp_path / "feedback-1.parquet", since_mark=mark)
    assert exported.rows == len(events)

    root = tmp_path / "retrained"
    params = load_params(
        None,
        tmp_overrides(root)
        + TINY
        + [
            "recommenders={popularity: {}, itemknn: {neighbors: 20}}",
            f"data.spans={root / 'spans'}",
            "data.spans_held_out=0",  # train on the span (no blessing here)
            "validate.drift.enabled=false",  # a span of implied ratings 5 and 3 would fail the rating PSI check
        ],
    )
    add_span(params, exported.path)
    run_pipeline(params)
    build_package(params, root / "package")
    after = Engine.load(root / "package", device="cpu", model="itemknn")
    x = after.maps.lookup_item(rare)
    assert all(x in after._history(after.maps.lookup_user(u)) for u in buyers)  # every purchase was trained on
    assert _share_listing(after, others, rare) >= 0.5
