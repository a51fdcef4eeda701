"""schemathesis against the running service's own OpenAPI schema: every operation, with and without the token.

A real `bentoml serve` of service/ over HTTP on a free loopback port (the
package built from a tiny `recforge run`, served with a bearer token), its
schema read from GET /docs.json. For every operation schemathesis generates
valid (positive) and invalid (negative) requests, sends them with the token and
without it, and checks each answer: no 5xx, a status the schema declares, the
declared content type and headers, and a body that matches the declared schema.
Bounded in examples per operation so the whole run stays well under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PROJECT_ROOT, TINY, tmp_overrides  # noqa: E402
from tests.service.server import served  # noqa: E402
from tests.service.test_service import MODELS, RECFORGE, free_port  # noqa: E402

TOKEN = "schemathesis-token"
EXAMPLES = 25  # per operation, per generation mode, per token state
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


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
    env = {**env, "RECFORGE_API_TOKEN": TOKEN}
    with served(command, port=port, cwd=root, env=env, log_path=root / "serve.log") as base:
        yield {"base": base, "log": root / "serve.log"}


def run_schemathesis(base: str, token: str | None) -> dict:
    """Every operation of the served schema, positive and negative cases; returns counts and failures."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    spec = httpx.get(f"{base}/docs.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    counts = {"operations": 0, "cases": 0, "5xx": 0, "statuses": {}, "failures": []}
    for result in schema.get_all_operations():
        operation = result.ok()
        counts["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                operation_test(operation, mode, base, auth, counts)()
            except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    return counts


def operation_test(operation, mode, base: str, auth: dict, counts: dict):
    """A hypothesis test of one operation in one generation mode that records each answer in ``counts``."""
    label = f"{operation.label} [{mode.value}]"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        counts["cases"] += 1
        try:
            status = case.call_and_validate(base_url=base, headers=auth, checks=CHECKS, timeout=30).status_code
        except (AssertionError, BaseExceptionGroup) as exc:  # a failed check (or several)
            counts["failures"].append(f"{label}: {str(exc).strip()[:600]}")
            counts["5xx"] += "Server error" in str(exc)
            return
        counts["statuses"][status] = counts["statuses"].get(status, 0) + 1
        counts["5xx"] += status >= 500

    return check


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "without-token"])
def test_schemathesis_no_5xx_and_no_schema_violation(live, token):
    started = time.monotonic()
    result = run_schemathesis(live["base"], token)
    elapsed = time.monotonic() - started
    print(f"schemathesis ({'with' if token else 'without'} token): {result} in {elapsed:.1f}s")
    assert result["operations"] >= 12, "every endpoint of the schema, GET /metadata included"
    assert result["cases"] > 100
    assert not result["failures"], "\n".join(result["failures"][:10])
    assert result["5xx"] == 0
    if token is None:
        # only the health checks answer without the token
        assert set(result["statuses"]) <= {200, 401}
    assert "Traceback" not in live["log"].read_text(), "a 4xx is one log line, never a traceback"
