"""Fixtures the service tests share: one real ``recforge serve`` for every module that asks for ``server``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT, TINY, TINY_RERANK, TINY_RERANK_MODELS, tmp_overrides
from tests.service.server import served
from tests.service.test_service import RECFORGE, TOKEN, _flags, free_port

RERANK_TOKEN = "rerank-token"


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The tiny two-stage pipeline (popularity, itemknn, gru and the LambdaRank re-ranker, list length 20) and
    its package: (params, package directory, the rerank stage's offline test lists)."""
    from recforge.packaging import build_package
    from recforge.params import load_params
    from recforge.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("served-rerank")
    overrides = [TINY_RERANK_MODELS, *TINY_RERANK, "evaluate.list_length=20"]
    params = load_params(None, tmp_overrides(root) + TINY + overrides)
    assert params.serve.model == "auto"  # the default
    run_pipeline(params)
    build_package(params, root / "package")
    offline = pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "test.parquet")
    return params, root / "package", offline


@pytest.fixture(scope="session")
def rerank_server(trained, tmp_path_factory):
    """``trained``'s package served over HTTP (`bentoml serve service:Recforge`, the re-ranker, one worker, a
    SQLite feedback store read on every request): the precomputed path's request options."""
    _, directory, offline = trained
    root = tmp_path_factory.mktemp("rerank-http")
    env = {**os.environ, "RECFORGE_API_TOKEN": RERANK_TOKEN, "BENTOML_HOME": str(root / "bentoml")}
    env["BENTOML_DO_NOT_TRACK"] = "True"
    port = free_port()
    args = [f"package_dir={directory}", "device=cpu", "model=rerank", "access_log=false"]
    args += [f"feedback_url={root / 'events.sqlite3'}", "feedback_staleness_s=0"]
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "service:Recforge"]
    command += ["--working-dir", str(PROJECT_ROOT / "service"), "--host", "127.0.0.1", "--port", str(port)]
    for arg in args:
        command += ["--arg", arg]
    with (
        served(command, port=port, cwd=root, env=env, log_path=root / "serve.log") as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {RERANK_TOKEN}"}, timeout=60) as client,
    ):
        yield {"client": client, "package": directory, "offline": offline}
