"""Fixtures the service tests share: one real ``recforge serve`` for every module that asks for ``server``."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from tests.service.server import served
from tests.service.test_service import RECFORGE, TOKEN, _flags, free_port


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The pipeline on tiny synthetic data (popularity and content over tfidf), `recforge package` into a tmp
    BentoML store (model store entry + Bento), then ONE `recforge serve` of that Bento on a free loopback port
    with a bearer token: test_service.py and test_request_options.py ask the same server (started once)."""
    root = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("RECFORGE_API_TOKEN", None)
    flags = _flags(root, [f"serve.api_token={TOKEN}", "serve.device=cpu"])
    for command in (["run"], ["package"]):
        done = subprocess.run(
            [RECFORGE, *command, *flags], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    packaged = json.loads((root / "reports" / "package.json").read_text())
    port = free_port()
    command = [RECFORGE, "serve", "--port", str(port), *flags]
    with (
        served(command, port=port, cwd=root, env=env, log_path=root / "serve.log") as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client,
    ):
        yield {"client": client, "base": base, "root": root, "packaged": packaged, "env": env}
