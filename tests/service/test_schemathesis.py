"""schemathesis against the running service's own OpenAPI schema, the way it is run by hand: all checks, all phases.

A real `bentoml serve` of service/ over HTTP on a free loopback port (the
package built from a tiny `recforge run`, served with a bearer token, started
by tests/service/server.py), its schema read from GET /docs.json. The
schemathesis 4 CLI then runs against it, as

    schemathesis run docs.json --url <base> --checks all --max-examples 25 \\
        --phases examples,coverage,fuzzing,stateful [-H 'Authorization: Bearer ...']

once with the token and once without. ``--checks all`` includes, besides no 5xx
and answers that match the declared statuses, content types, headers and
bodies: schema-violating requests must be refused (``"explain": 0``,
``"item_ids": [false]``), schema-valid ones accepted (a POST without a body
when the body is not declared required), an undeclared method answered 405
with an ``Allow`` header that lists exactly the declared methods, and a
declared bearer scheme that is not ignored. The coverage phase sends the
boundary and type-violating values and the undeclared methods
deterministically; the fuzzing phase is bounded by ``--max-examples`` and
seeded. Its JSON run report (``--report json``) is what the test reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("schemathesis")

from tests.conftest import PROJECT_ROOT, TINY, tmp_overrides  # noqa: E402
from tests.service.server import served  # noqa: E402
from tests.service.test_service import MODELS, RECFORGE, free_port  # noqa: E402

TOKEN = "schemathesis-token"
EXAMPLES = 25  # fuzzing cases per operation (the coverage phase sends its own, deterministic set)
SEED = 24
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
HEALTH = {"GET /healthz", "GET /livez", "GET /readyz"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from recforge.packaging import build_package
    from recforge.params import load_params

    root = tmp_path_factory.mktemp("schemathesis")
    overrides = tmp_overrides(root) + TINY + ["encode.encoders=[tfidf]", MODELS, "rerank.enabled=false"]
    flags = [part for override in overrides for part in ("-S", override)]
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run([RECFORGE, "run", *flags], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    build_package(load_params(None, overrides), root / "package")
    port = free_port()
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    command = [bentoml_cli, "serve", "service:Recforge", "--working-dir", str(PROJECT_ROOT / "service")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--arg", f"package_dir={root / 'package'}"]
    command += ["--arg", "device=cpu", "--arg", "access_log=false"]
    command += ["--arg", f"feedback_url={root / 'feedback.sqlite3'}"]  # /feedback exists only with a store
    env = {**env, "RECFORGE_API_TOKEN": TOKEN}
    with served(command, port=port, cwd=root, env=env, log_path=root / "serve.log") as base:
        spec = httpx.get(f"{base}/docs.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert spec.status_code == 200, spec.text
        (root / "docs.json").write_text(json.dumps(with_known_ids(spec.json(), base)))
        yield {"base": base, "root": root, "log": root / "serve.log", "spec": spec.json()}


def with_known_ids(spec: dict, base: str) -> dict:
    """The served schema with a known user and item as the ``example`` of each id field (nothing else changed).

    Ids drawn at random are unknown (404, the declared answer); the examples phase, and the coverage phase
    that starts from the examples, then also reach the engine on /explain and /similar-items.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    user = httpx.get(f"{base}/metadata", headers=headers, timeout=10).json()["example_user_id"]
    answer = httpx.post(f"{base}/recommend", json={"user_id": user, "k": 3}, headers=headers, timeout=10)
    items = [item["item_id"] for item in answer.json()["items"]]
    examples = {"user_id": user, "item_id": items[0], "item_ids": items}
    spec = json.loads(json.dumps(spec))
    for item in spec["paths"].values():
        body = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        for name, field in body.get("schema", {}).get("properties", {}).items():
            if name in examples:
                field["example"] = examples[name]
    return spec


def run_schemathesis(live: dict, token: str | None, name: str) -> tuple[dict, str]:
    """The schemathesis CLI over every operation of the served schema; its JSON run report and its output."""
    report = live["root"] / f"{name}.json"
    command = [SCHEMATHESIS, "--no-color", "run", str(live["root"] / "docs.json"), "--url", live["base"]]
    command += ["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"]
    command += ["--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1"]
    command += ["--generation-database", "none", "--request-timeout", "30"]
    command += ["--report", "json", "--report-json-path", str(report)]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, cwd=live["root"], capture_output=True, text=True, timeout=400)
    output = done.stdout + done.stderr
    assert report.exists(), output[-3000:]
    result = json.loads(report.read_text())
    assert done.returncode == result["exit_code"], output[-3000:]
    return result, output


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "without-token"])
def test_schemathesis_all_checks_all_phases_find_nothing(live, token):
    # catches: a lax field that turns a boolean into an id or a flag (ST201), a POST body the schema does not
    # declare required (ST202: an empty body answered 415), an undeclared method answered 415 or 405 without
    # `Allow`, or an `Allow` that does not list the declared methods (ST204/ST205), a 5xx, an answer outside the
    # declared statuses, content types or schemas, a route that ignores the declared bearer scheme
    started = time.monotonic()
    result, output = run_schemathesis(live, token, "with-token" if token else "without-token")
    print(f"schemathesis ({'with' if token else 'without'} token) in {time.monotonic() - started:.1f} s:")
    print(output[-1500:])
    failures = [f"{f['code']} {f['title']}: {', '.join(f['operations'])}" for f in result["failures"]]
    assert not failures and not result["errors"], "\n".join(failures + [str(e) for e in result["errors"]])
    assert result["exit_code"] == 0 and result["complete"], output[-3000:]
    assert result["operations"]["tested"] == result["operations"]["total"] >= 12, result["operations"]
    assert result["phases"]["coverage"]["status"] == "success" and result["phases"]["fuzzing"]["status"] == "success"
    cases = result["test_cases"]
    assert cases["generated"] > 400 and cases["with_failures"] == 0 and cases["errored"] == 0, cases
    warnings = {kind: sorted(found) for kind, found in result["warnings"].items() if found}
    if token is None:
        # only the health checks answer without the token: every other operation saw nothing but 401
        secured = {f"{method.upper()} {path}" for path, item in live["spec"]["paths"].items() for method in item}
        assert set(warnings.pop("missing_auth", [])) == secured - HEALTH, warnings
    else:
        # the examples phase ran (known ids): every operation reached the engine, none only answered 4xx
        assert result["phases"]["examples"]["status"] == "success", result["phases"]
    assert not warnings, warnings
    assert "Traceback" not in live["log"].read_text(), "a 4xx is one log line, never a traceback"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"user_id": 1, "explain": 0}, "/recommend"),
        ({"user_id": 1, "exclude_seen": "false"}, "/recommend"),
        ({"user_id": True}, "/recommend"),
        ({"user_id": 1, "k": True}, "/recommend"),
        ({"user_id": 1, "k": 2.0}, "/recommend"),
        ({"item_ids": [False]}, "/recommend/history"),
        ({"item_id": 1.0}, "/similar-items"),
        ({"user_id": 1, "item_id": False}, "/explain"),
        ({"text": 1}, "/recommend/text"),
        ({"texts": [True]}, "/encode"),
    ],
)
def test_no_request_field_is_coerced(live, body, path):
    # catches lax pydantic on any request field: `false` read as the id 0, `0` or "false" as a flag, 2.0 as k
    answer = httpx.post(f"{live['base']}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) <= {"error", "detail"}


def test_every_post_body_is_required_and_undeclared_methods_answer_405_with_allow(live):
    # catches a POST body not declared required, an undeclared method answered 415 (the JSON check first) or
    # passed on to BentoML (405 with `Allow: POST` for /metadata, which also answers GET), an `Allow` missing
    headers = {"Authorization": f"Bearer {TOKEN}"}
    paths = live["spec"]["paths"]
    for path, item in paths.items():
        if "post" in item:
            assert item["post"]["requestBody"]["required"] is True, path
        for method, operation in item.items():
            public = f"{method.upper()} {path}" in HEALTH
            assert operation.get("security") == (None if public else [{"bearer": []}]), (method, path)
    for method, path, allow in [
        ("OPTIONS", "/metadata", "GET, POST"),
        ("PUT", "/metadata", "GET, POST"),
        ("POST", "/metrics", "GET"),
        ("GET", "/recommend", "POST"),
        ("DELETE", "/recommend/history", "POST"),
    ]:
        answer = httpx.request(method, f"{live['base']}{path}", headers=headers, timeout=30)
        assert (answer.status_code, answer.headers.get("allow")) == (405, allow), (method, path, answer.text)
        assert set(answer.json()) == {"error"}
    assert httpx.head(f"{live['base']}/metadata", headers=headers, timeout=30).status_code == 200
    # the token is checked first: an undeclared method without it is 401, as every other request
    assert httpx.post(f"{live['base']}/metrics", timeout=30).status_code == 401
