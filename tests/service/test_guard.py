"""The service's Guard middleware at the ASGI level: no token off loopback, Host names, IPv6 and mapped addresses.

The end-to-end checks (over HTTP, on a real server) are in test_service.py;
what a loopback-bound test server cannot show (a request arriving on a
non-loopback address) is checked here on the real middleware class.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from recforge.schemas import ServeArgs, is_loopback
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def guard_class():
    """The Guard of service/service.py (the module BentoML serves), loaded from its file."""
    spec = importlib.util.spec_from_file_location("recforge_service_module", PROJECT_ROOT / "service" / "service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Guard


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def call(guard, *, server=("127.0.0.1", 3000), host=b"localhost:3000", headers=(), path="/recommend"):
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "server": server,
        "headers": [(b"host", host), (b"content-type", b"application/json"), (b"content-length", b"2"), *headers],
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_without_a_token_only_loopback_is_answered(guard_class):
    guard = guard_class(_ok, token="", args=ServeArgs(allowed_hosts="api.example"))
    assert call(guard)[0] == 200
    assert call(guard, server=("::1", 3000), host=b"[::1]:3000")[0] == 200
    assert call(guard, server=("::ffff:127.0.0.1", 3000))[0] == 200
    status, body = call(guard, server=("10.0.0.5", 3000), host=b"api.example")
    assert status == 403 and "token" in body["error"]
    # the health checks answer anyway
    assert call(guard, server=("10.0.0.5", 3000), host=b"10.0.0.5:3000", path="/livez")[0] == 200


def test_with_a_token_any_address_needs_it(guard_class):
    guard = guard_class(_ok, token="s3cret", args=ServeArgs(allowed_hosts="api.example"))
    public = {"server": ("10.0.0.5", 3000), "host": b"api.example:3000"}
    assert call(guard, **public)[0] == 401
    assert call(guard, **public, headers=[(b"authorization", b"Bearer s3cret")])[0] == 200
    assert call(guard, **public, headers=[(b"authorization", b"Bearer wrong")])[0] == 401


def test_host_names(guard_class):
    guard = guard_class(_ok, token="", args=ServeArgs())
    for host in (b"localhost", b"LOCALHOST:80", b"127.0.0.1:3000", b"[::1]:3000", b"[::1]"):
        assert call(guard, host=host)[0] == 200, host
    for host in (b"evil.example", b"evil.example:3000", b"127.0.0.1.evil.example", b"", b"localhost.evil:3000"):
        assert call(guard, host=host)[0] == 400, host
    anything = guard_class(_ok, token="", args=ServeArgs(allowed_hosts="*"))
    assert call(anything, host=b"whatever.example")[0] == 200


def test_is_loopback():
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.8.9.1", "::1", "[::1]", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com", "192.0.2.7", ""]))
