"""Infra-validation: the candidate is served for real before it is promoted (TFX's InfraValidator).

:func:`validate` starts the candidate's model-store entry as ``recforge serve``
serves a package (``bentoml serve service:Recforge`` from ``service/``, pinned
to the exact tag, with the ``serve:`` settings) on a free loopback port, in
its own process group, with a one-off API token. The candidate passes when:

- the server becomes ready (``/readyz``) within ``promote.infra_timeout_s``;
- for a sample of ``promote.infra_users`` known users (spread over the user
  index) and one unknown user, ``POST /recommend`` answers 200, names the
  candidate in ``X-Recforge-Model-Version``, and lists exactly what the
  package loaded in this process lists (:class:`recforge.engine.Engine`, the
  lists the blessing scored);
- the p99 of those requests (the sample asked round after round, at least
  twice and at least 200 requests, after three untimed warm-up requests) is
  within ``promote.infra_p99_ms``.

The served copy runs with one worker, no feedback store and no follower, so
its lists depend on the package alone. The server is stopped (SIGTERM, then
SIGKILL) whatever the outcome. The result (passed, reason, seconds to ready,
users, p50/p99) goes into reports/promotion.json and the registry entry.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from recforge.errors import RecforgeError
from recforge.params import Params

log = logging.getLogger(__name__)

UNKNOWN_USER = "recforge-infra-validation-unknown-user"
MIN_REQUESTS = 200  # the sample is asked round after round until this many (a p99 of 40 requests is their max)
WARM_UP = 3  # untimed requests first, as the hot swap warms a new version before it serves


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _offline(package_path: str, users: int) -> tuple[str, dict[Any, list[Any]]]:
    """(the package's version, the offline top 10 of ``users`` known users and one unknown user)."""
    from recforge.artifacts import plain
    from recforge.engine import Engine
    from recforge.follow import model_version

    engine = Engine.load(package_path, device="cpu")
    ids = engine.maps.user_ids
    picks = np.unique(np.linspace(0, len(ids) - 1, num=min(users, len(ids))).astype(int)) if len(ids) else []
    sample = [plain(ids[i]) for i in picks] + [UNKNOWN_USER]
    return model_version(engine), {user: [i.item_id for i in engine.recommend(user, 10).items] for user in sample}


def _command(params: Params, tag: str, port: int) -> list[str]:
    from recforge.bento import _bentoml_cli, serve_args
    from recforge.packaging import SERVICE_DIR

    args = serve_args(params, model_tag=tag).model_copy(
        update={"workers": 1, "access_log": False, "feedback_url": None, "follow_registry": None}
    )
    return [
        _bentoml_cli(),
        "serve",
        "service:Recforge",
        "--working-dir",
        str(SERVICE_DIR),
        *args.cli(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def validate(params: Params, tag: str) -> dict[str, Any]:
    """Serve ``tag`` for real and compare its answers with the offline lists; never raises for the candidate's
    faults (they are the result: ``passed`` false with the ``reason``)."""
    import httpx

    from recforge import production

    settings = params.promote
    started = time.monotonic()
    result: dict[str, Any] = {"passed": False, "tag": tag, "users": 0, "budget_p99_ms": settings.infra_p99_ms}
    try:
        package_path, _ = production.store_entry(tag)
        version, expected = _offline(package_path, settings.infra_users)
    except RecforgeError as exc:
        return {**result, "reason": f"the package does not load: {exc}"}
    port = _free_port()
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "RECFORGE_API_TOKEN": token, "BENTOML_DO_NOT_TRACK": "True"}
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(params.serve.threads))
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as server_log:
        # our own bentoml executable; the arguments are built from checked params and a checked tag
        process = subprocess.Popen(  # nosec B603
            _command(params, tag, port), stdout=server_log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            reason = _wait_ready(process, base, started + settings.infra_timeout_s, server_log)
            if reason is None:
                result["ready_s"] = round(time.monotonic() - started, 2)
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
                    reason, latencies = _compare(client, version, expected)
                if latencies:
                    result["p50_ms"] = round(float(np.percentile(latencies, 50)), 2)
                    result["p99_ms"] = round(float(np.percentile(latencies, 99)), 2)
                    result["users"] = len(expected)
                if reason is None and result["p99_ms"] > settings.infra_p99_ms:
                    reason = f"p99 {result['p99_ms']} ms over the budget of {settings.infra_p99_ms} ms"
        finally:
            _stop(process)
    result["seconds"] = round(time.monotonic() - started, 2)
    if reason is not None:
        log.warning("infra-validation of %s failed: %s", tag, reason)
        return {**result, "reason": reason}
    return {**result, "passed": True, "reason": f"served {len(expected)} users as offline, p99 {result['p99_ms']} ms"}


def _wait_ready(process: subprocess.Popen, base: str, deadline: float, server_log: Any) -> str | None:
    import httpx

    while True:
        if process.poll() is not None:
            return f"the server exited ({process.returncode}) before it was ready: {_last_line(server_log)}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return None
        if time.monotonic() > deadline:
            return f"not ready within the time limit (promote.infra_timeout_s): {_last_line(server_log)}"
        time.sleep(0.25)


def _compare(client: Any, version: str, expected: dict[Any, list[Any]]) -> tuple[str | None, list[float]]:
    """(the first difference between the served and the offline answers or None, latencies in ms)."""
    latencies = []
    for _ in range(WARM_UP):  # untimed: the first requests of a new process and connection set things up
        client.post("/recommend", json={"user_id": UNKNOWN_USER, "k": 10})
    for _ in range(max(2, math.ceil(MIN_REQUESTS / len(expected)))):
        for user, items in expected.items():
            began = time.perf_counter()
            answer = client.post("/recommend", json={"user_id": user, "k": 10})
            latencies.append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                return f"user {user!r}: HTTP {answer.status_code} {answer.text[:200]}", latencies
            served_version = answer.headers.get("x-recforge-model-version")
            if served_version != version:
                return f"user {user!r}: answered by {served_version!r}, not {version!r}", latencies
            served = [item["item_id"] for item in answer.json()["items"]]
            if served != items:
                return f"user {user!r}: served {served[:5]}... differs from the offline list {items[:5]}...", latencies
    return None, latencies


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _last_line(server_log: Any) -> str:
    server_log.flush()
    server_log.seek(0)
    lines = [" ".join(line.split()) for line in server_log.read().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]
