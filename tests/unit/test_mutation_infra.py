"""recforge.infra: the served candidate's checks without BentoML (fast; each test names the wrong behaviour it
catches). A standard-library server (tests/unit/infra_server.py) answers as the service does: in a thread for
the readiness wait and the answer comparison, and as the process validate() starts (its serve command replaced)
for the whole validation. The candidate is a real tiny package in a real BentoML model store, built once and
kept in the temporary directory. tests/e2e/test_infra_validation.py runs it with real `bentoml serve`."""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from recforge import infra
from recforge.params import load_params
from tests.conftest import tmp_overrides
from tests.unit import infra_server
from tests.unit.build_cache import build_once, source_key

SERVER_SCRIPT = Path(infra_server.__file__)
UNKNOWN = infra.UNKNOWN_USER


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def serving(tmp_path):
    """serving(spec) -> (httpx client on a thread server answering from spec, its request log)."""
    servers, clients = [], []

    def start(spec: dict, token: str | None = None) -> tuple[httpx.Client, Path]:
        log = tmp_path / f"requests-{len(servers)}.jsonl"
        server = infra_server.serve({**spec, "log": str(log)}, token=token)
        servers.append(server)
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout=10)
        clients.append(client)
        return client, log

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.shutdown()
        server.server_close()


# ---- small parts -----------------------------------------------------------------------------------------


def test_free_port_is_a_loopback_port_free_to_bind():
    # catches the port not read from the bound socket (an int in the port range, free once returned)
    port = infra._free_port()
    assert isinstance(port, int) and 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_last_line_prefers_the_last_error_line(tmp_path):
    # catches lines not stripped of runs of whitespace, blank lines kept, an earlier error or a later
    # non-error line chosen, lowercase 'error' missed, the 300-character cut, and no output not saying so
    def last(text: str) -> str:
        with tempfile.TemporaryFile(mode="w+") as log:
            log.write(text)
            return infra._last_line(log)

    assert last("") == "(no output)"
    assert last("  starting   up\t now \n\n   \n") == "starting up now"
    assert last("a\nValueError: first\nsome error  here\nlast line\n\n") == "some error here"
    assert last("Error one\nb\n") == "Error one"
    assert last("x" * 400 + "\n") == "x" * 300
    assert last("Error: " + "y" * 400) == ("Error: " + "y" * 400)[:300]


def test_command_serves_the_tag_alone_on_loopback(tmp_path):
    # catches the served copy keeping settings that make its lists differ from the package's (more workers,
    # the feedback store, the production follower), the access log left on, the tag or the port not passed,
    # and the server listening beyond loopback
    from recforge.bento import _bentoml_cli
    from recforge.packaging import SERVICE_DIR

    params = load_params(
        None,
        [
            *tmp_overrides(tmp_path),
            "serve.workers=4",
            "serve.access_log=true",
            "serve.follow=production",
            "feedback.enabled=true",
            "serve.threads=3",
        ],
    )
    command = infra._command(params, "recforge-model:v1", 8123)
    assert command[:5] == [_bentoml_cli(), "serve", "service:Recforge", "--working-dir", str(SERVICE_DIR)]
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    middle = command[5:-4]
    assert middle[::2] == ["--arg"] * (len(middle) // 2)
    args = dict(part.split("=", 1) for part in middle[1::2])
    assert args["model_tag"] == "recforge-model:v1"
    assert args["workers"] == "1" and args["access_log"] == "false" and args["threads"] == "3"
    assert "feedback_url" not in args and "follow_registry" not in args
    assert args["device"] == params.serve.device


# ---- the readiness wait ----------------------------------------------------------------------------------


@pytest.fixture
def process():
    """A stand-in server process that lives until stopped (its own process group, as validate starts it)."""
    started = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield started
    started.kill()
    started.wait()


def test_wait_ready_returns_once_readyz_answers_200(serving, process):
    # catches a 503 from /readyz taken as ready, or the wait giving up at the first 503
    client, _ = serving({"not_ready_for": 2})
    with tempfile.TemporaryFile(mode="w+") as log:
        began = time.monotonic()
        assert infra._wait_ready(process, str(client.base_url).rstrip("/"), time.monotonic() + 30, log) is None
    assert 0.5 <= time.monotonic() - began < 2.4  # two 503s, a quarter second apart each


def test_wait_ready_checks_readiness_before_the_deadline(serving, process):
    # catches the deadline checked before a last readiness check (a server ready at the deadline fails)
    client, _ = serving({})
    with tempfile.TemporaryFile(mode="w+") as log:
        assert infra._wait_ready(process, str(client.base_url).rstrip("/"), time.monotonic() - 1, log) is None


def test_wait_ready_gives_up_at_the_deadline_with_the_server_log(serving, process):
    # catches a server never ready waited on past the deadline (or a refused connection not retried but
    # raised), and the reason not naming the setting and the server's last words
    client, _ = serving({"not_ready_for": 10**6})
    with tempfile.TemporaryFile(mode="w+") as log:
        log.write("loading\nRuntimeError: no model\nstill loading\n")
        reason = infra._wait_ready(process, str(client.base_url).rstrip("/"), time.monotonic() + 0.6, log)
        assert reason == "not ready within the time limit (promote.infra_timeout_s): RuntimeError: no model"
        port = infra._free_port()  # nothing listens there: a refused connection is "not ready yet"
        reason = infra._wait_ready(process, f"http://127.0.0.1:{port}", time.monotonic() + 0.3, log)
        assert reason.startswith("not ready within the time limit")


def test_wait_ready_reports_a_server_that_exited(tmp_path):
    # catches an exited server waited on until the deadline, and its exit code or last error not reported
    with tempfile.TemporaryFile(mode="w+") as log:
        exited = subprocess.Popen(["sh", "-c", "echo 'ImportError: no bentoml'; echo bye; exit 3"], stdout=log)
        exited.wait()
        reason = infra._wait_ready(exited, "http://127.0.0.1:9", time.monotonic() + 30, log)
    assert reason == "the server exited (3) before it was ready: ImportError: no bentoml"


# ---- stopping the server ---------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_stop_ends_the_whole_process_group(tmp_path):
    # catches only the leader signalled (bentoml serve's workers would live on, holding the port), and the
    # leader not waited for
    pid_file = tmp_path / "child"
    leader = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child = int(pid_file.read_text())
    infra._stop(leader)
    assert leader.returncode == -15  # SIGTERM, and reaped
    deadline = time.monotonic() + 5
    while alive(child):
        assert time.monotonic() < deadline, "the server's child outlived it"
        time.sleep(0.01)


def test_stop_of_a_server_already_gone():
    # catches a server that already exited (its group gone) making the stop raise
    gone = subprocess.Popen(["true"], start_new_session=True)
    gone.wait()
    infra._stop(gone)
    assert gone.returncode == 0


# ---- comparing the answers -------------------------------------------------------------------------------

LISTS = {"a": [1, 2, 3, 4, 5, 6, 7], "7": [9, 8], UNKNOWN: [1, 2]}
EXPECTED = {"a": [1, 2, 3, 4, 5, 6, 7], 7: [9, 8], UNKNOWN: [1, 2]}


def spec_of(lists: dict, **extra) -> dict:
    return {"lists": {json.dumps(k if k != "7" else 7): v for k, v in lists.items()}, "version": "v1", **extra}


def test_compare_asks_every_user_round_after_round_after_untimed_warm_ups(serving):
    # catches the warm-up requests timed or not made (or made elsewhere, or for a known user), fewer than 200 timed
    # requests (a p99 of a few requests is their max), users skipped, and k other than 10
    client, log = serving(spec_of(LISTS))
    reason, latencies = infra._compare(client, "v1", EXPECTED)
    assert reason is None
    rounds = math.ceil(200 / 3)
    assert len(latencies) == 3 * rounds == 201
    assert {entry["path"] for entry in log_lines(log)} == {"/recommend"}
    bodies = [entry["body"] for entry in log_lines(log)]
    assert bodies[:3] == [{"user_id": UNKNOWN, "k": 10}] * 3
    assert bodies[3:] == [{"user_id": user, "k": 10} for user in EXPECTED] * rounds


def test_compare_asks_at_least_two_rounds(serving, monkeypatch):
    # catches a single round when the sample alone reaches MIN_REQUESTS (every user is asked twice)
    monkeypatch.setattr(infra, "MIN_REQUESTS", 1)
    client, log = serving(spec_of({"a": [1], UNKNOWN: [1]}))
    reason, latencies = infra._compare(client, "v1", {"a": [1]})
    assert reason is None and len(latencies) == 2 and len(log_lines(log)) == 3 + 2


def test_compare_latencies_are_milliseconds_of_each_request(serving, monkeypatch):
    # catches latencies in seconds (or not the request's own duration): each request here takes 50 ms
    monkeypatch.setattr(infra, "MIN_REQUESTS", 1)
    client, _ = serving(spec_of({"a": [1], UNKNOWN: [1]}, delay_s=0.05))
    reason, latencies = infra._compare(client, "v1", {"a": [1]})
    assert reason is None and len(latencies) == 2
    assert all(50 <= latency < 5000 for latency in latencies), latencies


def test_compare_reports_an_http_error(serving):
    # catches a failed request not stopping the comparison, its status or body (cut at 200 characters)
    # not reported, and the user not named as its repr
    client, _ = serving(spec_of(LISTS, status=500, body="E" * 300))
    reason, latencies = infra._compare(client, "v1", EXPECTED)
    assert reason == f"user 'a': HTTP 500 {'E' * 200}"
    assert len(latencies) == 1


def test_compare_reports_another_model_answering(serving):
    # catches an answer from another version (or without the version header) accepted
    client, _ = serving({**spec_of(LISTS), "version": "v2"})
    reason, latencies = infra._compare(client, "v1", EXPECTED)
    assert reason == "user 'a': answered by 'v2', not 'v1'" and len(latencies) == 1
    bare = {k: v for k, v in spec_of(LISTS).items() if k != "version"}
    client, _ = serving(bare)
    assert infra._compare(client, "v1", EXPECTED)[0] == "user 'a': answered by None, not 'v1'"


def test_compare_reports_the_first_list_that_differs(serving):
    # catches a list differing past its fifth item accepted, and the message not showing the first five of
    # each; the users before it were compared and timed
    served = {**LISTS, "7": [8, 9]}
    client, _ = serving(spec_of(served))
    reason, latencies = infra._compare(client, "v1", EXPECTED)
    assert reason == "user 7: served [8, 9]... differs from the offline list [9, 8]..."
    assert len(latencies) == 2
    late = {**LISTS, "a": [1, 2, 3, 4, 5, 6, 99]}
    client, _ = serving(spec_of(late))
    reason, _ = infra._compare(client, "v1", EXPECTED)
    assert reason == "user 'a': served [1, 2, 3, 4, 5]... differs from the offline list [1, 2, 3, 4, 5]..."


# ---- the whole validation --------------------------------------------------------------------------------

PACKAGE_OVERRIDES = [
    "data.synthetic.num_users=30",
    "data.synthetic.num_items=20",
    "data.synthetic.num_interactions=300",
    "data.synthetic.num_topics=2",
    "recommenders={popularity: {}}",
    "encode.encoders=[]",
    "rerank.enabled=false",
    "feedback.enabled=false",
]


def _model_store(directory: Path):
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    return BentoMLContainer.model_store.patch(ModelStore(str(directory)))


def stored_package() -> tuple[Path, str]:
    """(a BentoML model store directory, the tag of the tiny popularity package in it), built once per version
    of the sources and kept under the temporary directory (building takes seconds; infra does not build it)."""
    from recforge.bento import store_package
    from recforge.pipeline import run_pipeline

    def build(staging: Path) -> None:
        params = load_params(None, tmp_overrides(staging / "workspace") + PACKAGE_OVERRIDES)
        run_pipeline(params)
        with _model_store(staging / "models"):
            tag, _ = store_package(params)
        shutil.rmtree(staging / "workspace")
        (staging / "tag").write_text(tag)

    cache = build_once("infra-package", source_key(PACKAGE_OVERRIDES, {"recforge/infra.py"}), build, "tag")
    return cache / "models", (cache / "tag").read_text()


@pytest.fixture
def candidate(tmp_path, monkeypatch):
    """The stored candidate, validate()'s serve command replaced by infra_server.py on the port it chose, and
    what the real service would answer: (params, tag, spec to edit, the server's request log)."""
    from recforge.engine import Engine
    from recforge.follow import model_version

    store, tag = stored_package()
    engine = Engine.load(store / tag.replace(":", "/"), device="cpu")
    users = [int(u) for u in engine.maps.user_ids] + [UNKNOWN]
    lists = {json.dumps(u): [i.item_id for i in engine.recommend(u, 10).items] for u in users}
    log = tmp_path / "requests.jsonl"
    spec = {"lists": lists, "version": model_version(engine), "log": str(log)}
    spec_path = tmp_path / "spec.json"

    def command(params_, tag_, port):
        assert tag_ == tag and params_.serve.threads == 2  # validate's own params and tag
        spec_path.write_text(json.dumps(spec))
        return [sys.executable, str(SERVER_SCRIPT), str(port), str(spec_path)]

    monkeypatch.setattr(infra, "_command", command)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RECFORGE_API_TOKEN", raising=False)
    # a stand-in that never gets ready fails in 20 s, not the default 180
    overrides = ["promote.infra_users=3", "serve.threads=2", "promote.infra_timeout_s=20"]
    params = load_params(None, [*tmp_overrides(tmp_path), *overrides])
    with _model_store(store):
        yield params, tag, spec, log, [int(u) for u in engine.maps.user_ids]


def with_promote(params, **update):
    return params.model_copy(update={"promote": params.promote.model_copy(update=update)})


def server_pid(log: Path) -> int:
    return next(entry["pid"] for entry in log_lines(log) if "pid" in entry)


def test_validate_passes_a_candidate_served_as_offline(candidate, monkeypatch):
    # catches the sample not spread over the user index (first, middle and last user) plus the unknown user,
    # the server not given a one-off token, the thread settings or tracking opt-out; the result's fields
    # (p50/p99 and seconds rounded to 2 decimals, seconds to ready, users), the p99 taken as the max (two slow
    # requests in 200 fail the budget), a thread setting of the caller's overwritten, and the server left running
    params, tag, spec, log, ids = candidate
    spec.update({"slow": [3 + 10, 3 + 20], "slow_s": 0.15})  # two of the 200 timed requests over the budget
    result = infra.validate(params, tag)
    assert result["passed"] is True, result  # the p99 of 200 requests, not their max
    assert set(result) == {
        "passed",
        "tag",
        "users",
        "budget_p99_ms",
        "ready_s",
        "p50_ms",
        "p99_ms",
        "seconds",
        "reason",
    }
    assert result["tag"] == tag and result["users"] == 4 and result["budget_p99_ms"] == 100.0
    assert result["reason"] == f"served 4 users as offline, p99 {result['p99_ms']} ms"
    assert 0 < result["ready_s"] <= result["seconds"]
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= 100.0
    for key in ("ready_s", "p50_ms", "p99_ms", "seconds"):
        assert isinstance(result[key], float) and result[key] == round(result[key], 2), key
    entries = log_lines(log)
    env = entries[0]["env"]
    token = env.pop("RECFORGE_API_TOKEN")
    assert len(token) >= 32
    assert env == {
        "BENTOML_DO_NOT_TRACK": "True",
        "OPENBLAS_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    asked = [entry["body"]["user_id"] for entry in entries[1:]]
    assert len(ids) == 30 and asked[3:7] == [ids[0], ids[14], ids[29], UNKNOWN]  # linspace(0, 29, 3): 0, 14.5, 29
    assert len(asked) == 3 + 4 * math.ceil(200 / 4)
    assert all(entry["auth"] == f"Bearer {token}" for entry in entries[1:])
    assert not alive(server_pid(log))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # a thread setting of the caller's own is kept
    another = infra.validate(params, tag)  # and a new token every time
    env = log_lines(log)[len(entries)]["env"]
    assert env["RECFORGE_API_TOKEN"] != token and another["passed"]
    assert [env["OPENBLAS_NUM_THREADS"], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]] == ["2", "7", "2"]


def test_validate_asks_every_user_of_a_small_package(candidate):
    # catches the sample size not capped at the number of known users
    params, tag, _, log, ids = candidate
    assert infra.validate(with_promote(params, infra_users=1000), tag)["users"] == len(ids) + 1
    asked = {entry["body"]["user_id"] for entry in log_lines(log)[1:]}
    assert asked == {*ids, UNKNOWN}


def test_validate_fails_a_candidate_over_the_latency_budget(candidate, caplog):
    # catches the p99 budget not enforced (or the p50 compared), and the failure not logged with its reason
    params, tag, _, log, _ = candidate
    with caplog.at_level(logging.WARNING, logger="recforge.infra"):
        result = infra.validate(with_promote(params, infra_p99_ms=0.001), tag)
    assert result["passed"] is False and result["users"] == 4 and result["budget_p99_ms"] == 0.001
    assert result["reason"] == f"p99 {result['p99_ms']} ms over the budget of 0.001 ms"
    assert caplog.messages == [f"infra-validation of {tag} failed: {result['reason']}"]
    assert not alive(server_pid(log))


def test_validate_fails_a_candidate_answering_other_lists(candidate):
    # catches a differing list passed (or its reason replaced by the budget's), and the latencies of the
    # requests made not reported
    params, tag, spec, log, ids = candidate
    spec["lists"][json.dumps(ids[14])] = spec["lists"][json.dumps(ids[14])][::-1]
    result = infra.validate(with_promote(params, infra_p99_ms=0.001), tag)
    assert result["passed"] is False
    assert (
        result["reason"].startswith(f"user {ids[14]}: served ") and "differs from the offline list" in result["reason"]
    )
    assert result["users"] == 4 and result["p99_ms"] >= result["p50_ms"] > 0


def test_validate_fails_a_server_that_exits_or_is_never_ready(candidate):
    # catches a server that died at start, or one never ready, passed (or waited on forever), without the
    # server's own last error line (written to stderr); no latencies, no users then; the seconds it took
    params, tag, spec, log, _ = candidate
    spec.update({"say": ["starting", "bye"], "say_err": ["ValueError: cannot load the model"], "exit": 4})
    began = time.monotonic()
    result = infra.validate(params, tag)
    took = time.monotonic() - began
    assert result["reason"] == "the server exited (4) before it was ready: ValueError: cannot load the model"
    assert set(result) == {"passed", "tag", "users", "budget_p99_ms", "seconds", "reason"}
    assert result["passed"] is False and result["users"] == 0
    assert isinstance(result["seconds"], float) and 0 < result["seconds"] <= took + 0.01
    del spec["exit"], spec["say_err"]
    spec.update({"not_ready_for": 10**6, "say": ["loading"]})
    began = time.monotonic()
    result = infra.validate(with_promote(params, infra_timeout_s=1), tag)
    assert result["reason"] == "not ready within the time limit (promote.infra_timeout_s): loading"
    assert 1 <= time.monotonic() - began < 10 and "ready_s" not in result and result["users"] == 0
    assert not alive(server_pid(log))


def test_validate_fails_a_tag_that_does_not_load(candidate):
    # catches a tag missing from the model store (or not a tag) raising instead of failing the candidate
    params, _, _, _, _ = candidate
    missing = infra.validate(params, "recforge-model:nope")
    assert missing == {
        "passed": False,
        "tag": "recforge-model:nope",
        "users": 0,
        "budget_p99_ms": 100.0,
        "reason": "the package does not load: model recforge-model:nope is not in the BentoML model store "
        "(`bentoml models list`)",
    }
    assert infra.validate(params, "bad tag")["reason"].startswith("the package does not load: model tag 'bad tag'")


def test_the_stand_in_server_needs_the_token(serving):
    # the stand-in's own check (so the validation tests above show the token reached the server)
    client, _ = serving(spec_of(LISTS), token="secret")
    assert client.post("/recommend", json={"user_id": "a", "k": 10}).status_code == 401
    ok = client.post("/recommend", json={"user_id": "a", "k": 10}, headers={"Authorization": "Bearer secret"})
    assert ok.status_code == 200 and [i["item_id"] for i in ok.json()["items"]] == [1, 2, 3, 4, 5, 6, 7]
