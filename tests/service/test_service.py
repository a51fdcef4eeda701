"""The BentoML service end to end: a real `bentoml serve` of a real Bento on 127.0.0.1.

One server (the session-scoped `server` fixture of tests/service/conftest.py,
shared with test_request_options.py): the pipeline runs on tiny synthetic data
into a tmp dir (`recforge run`), `recforge package` saves it to a tmp BentoML store and
builds the Bento, `recforge serve` serves that Bento on a free loopback port
with a bearer token from params. Every endpoint, the bad inputs and the token
are then exercised over HTTP.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, TINY, tmp_overrides

RECFORGE = str(Path(sys.executable).parent / "recforge")
TOKEN = "test-token-123"
MODELS = "recommenders={popularity: {}, content: {encoder: tfidf}}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flags(root: Path, extra: list[str]) -> list[str]:
    flags = []
    for override in tmp_overrides(root) + TINY + ["encode.encoders=[tfidf]", MODELS] + extra:
        flags += ["-S", override]
    return flags


def post(server, path: str, body) -> httpx.Response:
    return server["client"].post(path, json=body)


def test_health_checks_need_no_token(server):
    for path in ("/livez", "/readyz"):
        assert httpx.get(server["base"] + path, timeout=5).status_code == 200


def test_every_other_endpoint_needs_the_token(server):
    base = server["base"]
    assert httpx.post(f"{base}/recommend", json={"user_id": 1}, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert httpx.post(f"{base}/recommend", json={"user_id": 1}, headers=wrong, timeout=5).status_code == 401
    assert httpx.get(f"{base}/metadata", timeout=5).status_code == 401
    assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401


def test_the_benchmark_ceiling_is_not_a_production_route(server):
    assert server["client"].post("/trivial", json={}).status_code == 404


def test_metadata_pins_the_packaged_model(server):
    response = server["client"].get("/metadata")
    assert response.status_code == 200
    meta = response.json()
    assert meta["model_tag"] == server["packaged"]["model_tag"]
    assert not meta["model_tag"].endswith(":latest")
    assert meta["data_hash"] == server["packaged"]["data_hash"]
    assert set(meta["models"]) == {"popularity", "content"}
    assert meta["counts"]["users"] > 0 and meta["counts"]["items"] > 0
    assert meta["metrics"]["popularity"]["ndcg@10"] >= 0
    assert meta["example_user_id"] is not None
    assert meta["text_path"] == "content"


def test_recommend_known_user_excludes_history(server):
    meta = server["client"].get("/metadata").json()
    user = meta["example_user_id"]
    answer = post(server, "/recommend", {"user_id": user, "k": 5}).json()
    assert answer["fallback"] is None and answer["model"] == meta["model"]
    assert len(answer["items"]) == 5
    assert all(item["title"] and isinstance(item["score"], float) for item in answer["items"])
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    # the same user as a string id works too, and exclude_seen=false may return history items
    as_string = post(server, "/recommend", {"user_id": str(user), "k": 5}).json()
    assert [i["item_id"] for i in as_string["items"]] == [i["item_id"] for i in answer["items"]]
    explained = post(server, "/recommend", {"user_id": user, "k": 3, "explain": True}).json()
    assert all(item["explanation"] for item in explained["items"])


def test_unknown_user_gets_popular_fallback(server):
    answer = post(server, "/recommend", {"user_id": "no-such-user", "k": 4}).json()
    assert answer["fallback"] == "popular"
    assert len(answer["items"]) == 4


def test_recommend_text_is_topical(server):
    answer = post(server, "/recommend/text", {"text": "space rockets and astronauts in space", "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "content" and body["fallback"] is None and len(body["items"]) == 5


def test_recommend_history_lists_unknown_items(server):
    meta = server["client"].get("/metadata").json()
    similar = post(server, "/similar-items", {"item_id": 1, "k": 2}).json()
    known = [item["item_id"] for item in similar["items"]]
    answer = post(server, "/recommend/history", {"item_ids": [*known, "not-an-item"], "k": 5}).json()
    assert answer["unknown_item_ids"] == ["not-an-item"]
    assert len(answer["items"]) == 5
    assert not set(known) & {item["item_id"] for item in answer["items"]}
    empty = post(server, "/recommend/history", {"item_ids": ["nope"], "k": 3}).json()
    assert empty["fallback"] == "popular" and empty["unknown_item_ids"] == ["nope"]
    assert meta["history_path"] in meta["models"]


def test_similar_items_and_explain(server):
    answer = post(server, "/similar-items", {"item_id": 1, "k": 3}).json()
    assert len(answer["items"]) == 3 and 1 not in [item["item_id"] for item in answer["items"]]
    user = server["client"].get("/metadata").json()["example_user_id"]
    target = answer["items"][0]["item_id"]
    explanation = post(server, "/explain", {"user_id": user, "item_id": target}).json()
    assert explanation["item_id"] == target and explanation["explanation"]
    assert explanation["evidence"]["history"], "the example user has a history to ground the explanation"
    assert explanation["evidence"]["history"][0]["title"] in explanation["explanation"]


def test_encode_endpoint(server):
    response = post(server, "/encode", {"texts": ["space travel", "a cooking show"]})
    assert response.status_code == 200, response.text
    vectors = response.json()
    assert len(vectors) == 2 and len(vectors[0]) > 1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/recommend", {"user_id": 1, "k": 0}, 400),
        ("/recommend", {"user_id": 1, "k": 101}, 400),
        ("/recommend", {"k": 5}, 400),
        ("/recommend/text", {"text": "", "k": 5}, 400),
        ("/recommend/text", {"text": "   ", "k": 5}, 400),
        ("/recommend/history", {"item_ids": "not a list"}, 400),
        ("/similar-items", {"item_id": "no-such-item"}, 404),
        ("/explain", {"user_id": "no-such-user", "item_id": 1}, 404),
    ],
)
def test_bad_inputs_get_4xx_with_a_message(server, path, body, status):
    response = post(server, path, body)
    assert response.status_code == status, response.text
    assert "error" in response.text


def test_malformed_json_and_the_worker_survives(server):
    response = server["client"].post(
        "/recommend", content=b'{"user_id": 1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.text
    assert post(server, "/recommend", {"user_id": "no-such-user", "k": 1}).status_code == 200


def test_bento_pins_the_exact_model_tag(server):
    """The Bento keeps the arguments it was built with: the exact model tag and the serve settings."""
    import yaml

    store = Path(server["env"]["BENTOML_HOME"]) / "bentos"
    name, version = server["packaged"]["bento_tag"].split(":")
    bento = yaml.safe_load((store / name / version / "bento.yaml").read_text())
    assert [m["tag"] for m in bento["services"][0]["models"]] == [server["packaged"]["model_tag"]]
    assert bento["args"]["model_tag"] == server["packaged"]["model_tag"]
    assert bento["args"]["device"] == "cpu"
    assert server["packaged"]["serve_args"]["model_tag"] == server["packaged"]["model_tag"]


def test_serve_command_passes_typed_arguments(server, tmp_path):
    """`recforge serve` serves the Bento when params ask for what it was built with, else service/ with --arg."""
    from recforge.bento import serve_command
    from recforge.params import load_params

    root = server["root"]
    overrides = tmp_overrides(root) + TINY + ["encode.encoders=[tfidf]", MODELS, "serve.device=cpu"]
    command, env = serve_command(load_params(None, overrides))
    assert server["packaged"]["bento_tag"] in command and "--arg" not in command
    assert "RECFORGE_MODEL_TAG" not in env and "RECFORGE_DEVICE" not in env
    command, _ = serve_command(load_params(None, [*overrides, "serve.workers=2", "serve.model=popularity"]))
    assert "service:Recforge" in command
    args = [command[i + 1] for i, part in enumerate(command) if part == "--arg"]
    assert f"model_tag={server['packaged']['model_tag']}" in args
    assert {"workers=2", "model=popularity", "device=cpu", "access_log=true"} <= set(args)


def test_checksum_mismatch_refuses_to_load(server, tmp_path):
    import shutil

    from recforge.engine import Engine
    from recforge.errors import RecforgeError

    store = Path(server["env"]["BENTOML_HOME"]) / "models"
    name, version = server["packaged"]["model_tag"].split(":")
    copy = tmp_path / "package"
    shutil.copytree(store / name / version, copy)
    Engine.load(copy, device="cpu")  # loads as packaged
    scores = next((copy / "models" / "popularity").glob("*.npz"))
    scores.write_bytes(scores.read_bytes()[:-3] + b"xyz")
    with pytest.raises(RecforgeError, match="checksum"):
        Engine.load(copy, device="cpu")


def test_service_source_has_no_pickle():
    for name in ("engine.py", "packaging.py", "online_rerank.py", "schemas.py", "explain.py"):
        assert "import pickle" not in (PROJECT_ROOT / "recforge" / name).read_text()
    for path in [PROJECT_ROOT / "service" / "service.py", PROJECT_ROOT / "recforge" / "packaging.py"]:
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text


# ---- exposure: content type, body size, Host, limits, error shape, one-line 4xx -----------------------------


def test_only_json_bodies_are_read(server):
    """text/plain and form bodies (cross-origin "simple" requests, no preflight) get 415."""
    client = server["client"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = client.post("/recommend", content=b'{"user_id": 1}', headers={"content-type": content_type})
        assert response.status_code == 415, (content_type, response.text)
        assert set(response.json()) == {"error"}
    assert (
        client.post(
            "/recommend", content=b'{"user_id": 1}', headers={"content-type": "application/json; charset=utf-8"}
        ).status_code
        == 200
    )


def test_body_size_limit_before_parsing(server):
    client = server["client"]
    huge = b'{"item_ids": [' + b",".join(b'"x%d"' % i for i in range(200_000)) + b"]}"
    assert len(huge) > 1 << 20
    started = time.perf_counter()
    response = client.post("/recommend/history", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    assert time.perf_counter() - started < 2

    def chunks():  # no Content-Length: read up to the limit, then refused
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    response = client.post("/recommend/history", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_host_header_must_be_a_served_name(server):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    client = server["client"]
    response = client.post("/recommend", json={"user_id": 1}, headers={"host": "evil.example"})
    assert response.status_code == 400 and "Host" in response.json()["error"]
    port = server["base"].rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert client.post("/recommend", json={"user_id": 1}, headers={"host": host}).status_code == 200
    # health checks answer whatever the Host (probes use the pod address)
    assert httpx.get(server["base"] + "/livez", headers={"host": "10.1.2.3"}, timeout=5).status_code == 200


def test_unknown_ids_are_echoed_at_most_ten(server):
    unknown = [f"nope-{i}" for i in range(500)]
    answer = post(server, "/recommend/history", {"item_ids": unknown, "k": 3}).json()
    assert answer["unknown_item_ids"] == unknown[:10]
    assert answer["unknown_item_count"] == 500


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/encode", {"texts": ["a"] * 65}),
        ("/encode", {"texts": ["a" * 5001]}),
        ("/encode", {"texts": []}),
        ("/recommend/text", {"text": "a" * 10_001}),
        ("/recommend/history", {"item_ids": list(range(1001))}),
        ("/recommend", {"user_id": "u" * 129}),
        ("/recommend", {"user_id": 10**30}),
        ("/recommend", {"user_id": 1, "k": 101}),
    ],
)
def test_field_limits_answer_400_with_the_declared_error_shape(server, path, body):
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert isinstance(error, dict) and set(error) <= {"error", "detail"}
    assert all(isinstance(value, str) for value in error.values())


def test_schema_declares_the_limits_and_get_metadata(server):
    spec = server["client"].get("/docs.json").json()
    paths = spec["paths"]
    assert "get" in paths["/metadata"]
    encode = paths["/encode"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"]
    assert encode["maxItems"] == 64 and encode["items"]["maxLength"] == 5000
    text = paths["/recommend/text"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert text["properties"]["text"]["maxLength"] == 10_000
    for status in ("401", "413", "415", "429"):
        assert status in paths["/recommend"]["post"]["responses"]


def test_a_4xx_is_one_log_line_not_a_traceback(server):
    for body in ({"user_id": 1, "k": 0}, {"k": 5}):
        post(server, "/recommend", body)
    post(server, "/similar-items", {"item_id": "no-such-item"})
    server["client"].post("/recommend", content=b"{", headers={"content-type": "application/json"})
    time.sleep(0.5)
    log = (server["root"] / "serve.log").read_text()
    assert "Traceback" not in log
    assert "400 POST /recommend: k: Input should be greater than or equal to 1" in log


def test_explanations_are_bounded_per_request(server):
    from recforge.engine import Engine

    store = Path(server["env"]["BENTOML_HOME"]) / "models"
    name, version = server["packaged"]["model_tag"].split(":")
    engine = Engine.load(store / name / version, device="cpu", max_explained=2)
    user = engine.metadata()["example_user_id"]
    answer = engine.recommend(user, 5, explain=True)
    assert [item.explanation is not None for item in answer.items] == [True, True, False, False, False]
    assert answer.unexplained == 3
    engine.explain_budget_s = 1e-9  # the budget is spent before the first item: nothing explained
    answer = engine.recommend(user, 5, explain=True)
    assert all(item.explanation is None for item in answer.items) and answer.unexplained == 5


def test_serve_on_a_public_host_makes_a_token_and_trusts_that_host(server, capsys, monkeypatch):
    from recforge.bento import serve_command
    from recforge.params import load_params

    monkeypatch.delenv("RECFORGE_API_TOKEN", raising=False)
    root = server["root"]
    overrides = tmp_overrides(root) + TINY + ["encode.encoders=[tfidf]", MODELS, "serve.device=cpu"]
    command, env = serve_command(load_params(None, [*overrides, "serve.host=192.0.2.7"]))
    token = env["RECFORGE_API_TOKEN"]
    assert len(token) >= 32 and token in capsys.readouterr().err
    args = [command[i + 1] for i, part in enumerate(command) if part == "--arg"]
    assert "allowed_hosts=192.0.2.7" in args
    _, env = serve_command(load_params(None, [*overrides, "serve.host=0.0.0.0", "serve.api_token=mine"]))
    assert env["RECFORGE_API_TOKEN"] == "mine" and "mine" not in capsys.readouterr().err
    _, env = serve_command(load_params(None, overrides))  # loopback: no token made up
    assert "RECFORGE_API_TOKEN" not in env
