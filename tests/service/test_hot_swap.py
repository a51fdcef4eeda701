"""Hot swap over HTTP: `recforge serve --follow production` (2 workers, a real `bentoml serve`) under load.

Two packages of the same tiny synthetic data, trained with different itemknn
neighbourhoods so their lists differ, in a temporary BentoML store. The server
starts on A; 16 client threads send /recommend for the whole swap while
`recforge promote B` runs; every answer must be a 200 whose
``X-Recforge-Model-Version`` names A or B and whose list equals that version's
offline list (recforge.engine.Engine in this process). Then `recforge rollback`
serves A again within ``serve.poll_s`` plus a margin, and a registry naming a
package whose files were corrupted after registration is refused (one log line
per worker) while A keeps serving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.service.server import served
from tests.service.test_service import free_port

RECFORGE = str(Path(sys.executable).parent / "recforge")
POLL_S = 1.0
SWAP_MARGIN_S = 15.0  # load + verify + warm a tiny package on a loaded 2-core machine, and the next poll
CLIENTS = 16
MAX_REQUESTS = (
    6_000  # all clients together, counted from the moment `recforge promote` returns: the load is bounded in count ...
)
MAX_LOAD_S = 90.0  # ... and in time
BEFORE_S = 4.0  # load before the promotion
USERS = 30
PARAMS = {
    "data": {"synthetic": {"num_users": 120, "num_items": 80, "num_interactions": 2400, "num_topics": 4}},
    "recommenders": {"itemknn": {"neighbors": 20}},
    "encode": {"encoders": []},
    "rerank": {"enabled": False},
    "evaluate": {"ks": [10], "list_length": 20},
    "feedback": {"enabled": False},
    "serve": {"build": False, "device": "cpu", "workers": 2, "poll_s": POLL_S, "access_log": False},
}
NEIGHBOURS = {"a": 20, "b": 3, "c": 8}


def rf(root: Path, env: dict[str, str], *args: str, nice: bool = True) -> subprocess.CompletedProcess:
    """A recforge command; niced unless it must not queue behind the test's own load (a promotion under load)."""
    done = subprocess.run(
        [*(["nice", "-n", "19"] if nice else []), RECFORGE, *args, "-p", "p.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"recforge {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def offline(package_path: str, users: list) -> dict:
    """Each user's top 10 from the package, as the service computes it (item ids)."""
    from recforge.engine import Engine

    engine = Engine.load(package_path, device="cpu")
    return {user: [item.item_id for item in engine.recommend(user, 10).items] for user in users}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("swap")
    (root / "p.yaml").write_text(yaml.safe_dump(PARAMS))
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("RECFORGE_API_TOKEN", None)
    tags, paths = {}, {}
    for name, neighbours in NEIGHBOURS.items():
        flags = ["-S", f"recommenders={{itemknn: {{neighbors: {neighbours}}}}}"]
        rf(root, env, "run", *flags)
        rf(root, env, "package", "--no-build", *flags)
        packaged = json.loads((root / "reports/package.json").read_text())
        tags[name] = packaged["model_tag"]
        paths[name] = str(Path(env["BENTOML_HOME"]) / "models" / Path(*tags[name].split(":")))
    assert len(set(tags.values())) == 3
    from recforge.packaging import Package

    user_ids = Package.open(paths["a"]).maps.user_ids[:USERS]
    users = [u.item() if isinstance(u, np.generic) else u for u in user_ids]
    lists = {tags[name]: offline(paths[name], users) for name in ("a", "b")}
    differ = sum(lists[tags["a"]][u] != lists[tags["b"]][u] for u in users)
    assert differ >= USERS // 2, "the two versions must answer differently for the test to mean anything"
    rf(root, env, "promote", tags["a"], "--reason", "first")
    port = free_port()
    command = ["nice", "-n", "19", RECFORGE, "serve", "--follow", "production", "--port", str(port), "-p", "p.yaml"]
    log_path = root / "serve.log"
    with served(command, port=port, cwd=root, env=env, log_path=log_path) as base:
        yield {
            "root": root,
            "env": env,
            "base": base,
            "tags": tags,
            "paths": paths,
            "users": users,
            "lists": lists,
            "log": log_path,
        }


def wait_for(base: str, version: str, *, timeout: float, fresh: int = 20) -> float:
    """Seconds until ``fresh`` answers in a row, each on a new connection (any worker), name ``version``."""
    started = time.monotonic()
    in_a_row = 0
    while in_a_row < fresh:
        if time.monotonic() - started > timeout:
            pytest.fail(f"{version} not served by every worker within {timeout} s")
        answer = httpx.post(f"{base}/recommend", json={"user_id": "nobody", "k": 1}, timeout=10)
        in_a_row = in_a_row + 1 if answer.headers.get("x-recforge-model-version") == version else 0
        if not in_a_row:
            time.sleep(0.05)
    return time.monotonic() - started


def test_every_answer_names_its_version(world):
    a = world["tags"]["a"]
    wait_for(world["base"], a, timeout=SWAP_MARGIN_S)
    for path, body in [("/recommend", {"user_id": world["users"][0]}), ("/metadata", {})]:
        answer = httpx.post(world["base"] + path, json=body, timeout=10)
        assert answer.status_code == 200 and answer.headers["x-recforge-model-version"] == a
    assert httpx.get(world["base"] + "/livez", timeout=5).headers["x-recforge-model-version"] == a
    bad = httpx.post(world["base"] + "/recommend", json={"user_id": 1, "k": 0}, timeout=5)
    assert bad.status_code == 400 and bad.headers["x-recforge-model-version"] == a
    meta = httpx.get(world["base"] + "/metadata", timeout=5).json()
    assert meta["model_version"] == a and meta["follow"]["poll_s"] == POLL_S
    assert meta["follow"]["registry"].endswith("production.json")


def _load(base: str, users: list, stop: threading.Event, results: list, budget: list) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        i = 0
        while not stop.is_set():
            with budget[1]:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            user = users[i % len(users)]
            i += 1
            started = time.perf_counter()
            try:
                answer = client.post("/recommend", json={"user_id": user, "k": 10})
                took = time.perf_counter() - started
                items = [item["item_id"] for item in answer.json()["items"]] if answer.status_code == 200 else None
                results.append(
                    (
                        time.monotonic(),
                        answer.status_code,
                        answer.headers.get("x-recforge-model-version"),
                        user,
                        items,
                        took,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a failed request is what the test counts
                results.append((time.monotonic(), repr(exc), None, user, None, time.perf_counter() - started))


def test_swap_under_load_then_rollback(world):
    base, tags, lists = world["base"], world["tags"], world["lists"]
    a, b = tags["a"], tags["b"]
    wait_for(base, a, timeout=SWAP_MARGIN_S)
    # the count bound starts when the promotion is on record: a fast machine must not spend it before
    stop, results, budget = threading.Event(), [], [10 * MAX_REQUESTS, threading.Lock()]
    threads = [
        threading.Thread(target=_load, args=(base, world["users"], stop, results, budget)) for _ in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(BEFORE_S)  # the steady state before, for comparison
        promoted_at = time.monotonic()
        rf(world["root"], world["env"], "promote", b, "--reason", "swap under load", nice=False)
        # the registry names B from here on: the command imports BentoML and checks B's files first, which
        # on a loaded machine can take tens of seconds; the workers cannot switch before this
        on_record = time.monotonic()
        with budget[1]:
            budget[0] = MAX_REQUESTS
        # load goes on until every client's worker answers with B for a while (or the bounds end it)
        deadline = on_record + MAX_LOAD_S
        while time.monotonic() < deadline and budget[0] > 0:
            recent = [r for r in results[-CLIENTS * 4 :] if r[0] > promoted_at]
            if len(recent) >= CLIENTS * 4 and all(r[2] == b for r in recent):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}"
    wrong = [r for r in results if r[2] not in lists or r[4] != lists[r[2]][r[3]]]
    assert not wrong, f"{len(wrong)} answers not equal to the list of the version they name, e.g. {wrong[:2]}"
    versions = [r[2] for r in results]
    assert a in versions and b in versions, "the load did not cover the swap"
    first_b = min(r[0] for r in results if r[2] == b) - promoted_at
    last_a = max(r[0] for r in results if r[2] == a) - promoted_at
    latencies = np.array([r[5] for r in results]) * 1000
    # the swap window: from `recforge promote` until the last answer from the old version (every worker
    # has switched by then); a request belongs to the window it started in
    started = np.array([r[0] - r[5] for r in results])
    took = np.array([r[5] for r in results]) * 1000
    before = took[started < promoted_at]
    swap = took[(started >= promoted_at) & (started <= promoted_at + last_a)]
    figures = {
        "requests": len(results),
        "clients": CLIENTS,
        "failed": len(failed),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "requests_before": int(before.size),
        "p99_before_ms": round(float(np.percentile(before, 99)), 2) if before.size else None,
        "requests_in_swap": int(swap.size),
        "p99_swap_ms": round(float(np.percentile(swap, 99)), 2) if swap.size else None,
        "promote_command_s": round(on_record - promoted_at, 2),
        "first_b_after_promote_s": round(first_b, 2),
        "last_a_after_promote_s": round(last_a, 2),
        "last_a_after_on_record_s": round(last_a - (on_record - promoted_at), 2),
    }
    assert figures["last_a_after_on_record_s"] < POLL_S + SWAP_MARGIN_S, figures
    back = time.monotonic()
    rf(world["root"], world["env"], "rollback", "--reason", "test rollback")
    figures["rollback_command_s"] = round(time.monotonic() - back, 2)
    figures["rollback_served_s"] = round(wait_for(base, a, timeout=POLL_S + SWAP_MARGIN_S), 2)
    print("swap figures:", json.dumps(figures))
    (world["root"] / "swap.json").write_text(json.dumps(figures))
    assert figures["rollback_served_s"] <= POLL_S + SWAP_MARGIN_S
    answer = httpx.post(base + "/recommend", json={"user_id": world["users"][1], "k": 10}, timeout=10).json()
    assert [item["item_id"] for item in answer["items"]] == lists[a][world["users"][1]]


def test_a_corrupted_version_is_refused_and_the_current_one_keeps_serving(world):
    base, tags, paths = world["base"], world["tags"], world["paths"]
    a, c = tags["a"], tags["c"]
    from recforge import production

    registry_file = Path(world["env"]["BENTOML_HOME"]) / "recforge" / "production.json"
    if production.current(registry_file).tag != a:  # the swap test failed before its rollback: stand alone
        rf(world["root"], world["env"], "promote", a, "--reason", "back to A for the corrupted-version test")
    wait_for(base, a, timeout=POLL_S + SWAP_MARGIN_S)
    # C was packaged and verified; its files are damaged afterwards, then the registry names it (as a
    # promotion seen from another host, or a disk that rotted after `recforge promote` checked it)
    damaged = Path(paths["c"], "items.parquet")
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    body = production.read(registry_file)
    manifest = json.loads(Path(paths["c"], "manifest.json").read_text())
    body["versions"][c] = {"package_path": paths["c"], "content_hash": manifest["content_hash"]}
    body["lineage"].append(c)
    body["serial"] += 1
    tmp = registry_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(registry_file)
    time.sleep(POLL_S * 4)
    for _ in range(20):  # new connections: both workers
        answer = httpx.post(base + "/recommend", json={"user_id": world["users"][2], "k": 10}, timeout=10)
        assert answer.status_code == 200 and answer.headers["x-recforge-model-version"] == a
        assert [item["item_id"] for item in answer.json()["items"]] == world["lists"][a][world["users"][2]]
    meta = httpx.get(base + "/metadata", timeout=5).json()
    assert c in meta["follow"]["last_error"] and "refused" in meta["follow"]["last_error"]
    refusals = [line for line in world["log"].read_text().splitlines() if "refused" in line and c in line]
    assert 1 <= len(refusals) <= 2, refusals  # one line per worker, not one per poll


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--follow", "staging"], "expected 'production' or 'none'"),
        (["-S", "serve.poll_s=0"], "poll_s"),
        (["-S", "serve.poll_s=301"], "poll_s"),
        (["-S", "serve.follow=latest"], "follow"),
    ],
)
def test_follow_settings_are_checked(tmp_path, flags, message):
    done = subprocess.run([RECFORGE, "serve", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
