"""recforge.follow in process: the per-request pin, and a Follower on real packages and a real registry file.

What the HTTP test (test_hot_swap.py) cannot show reliably: a request pinned before a switch keeps its
engine even in the thread a sync API runs in (a window of microseconds over HTTP), a registry whose content
hash does not match the package's files, an unreadable registry, and that a refusal is logged once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import shutil
from pathlib import Path

import pytest

from recforge.engine import Engine
from recforge.follow import EngineSlot, Follower, check_poll_s, model_version, pin, unpin
from recforge.packaging import build_package
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from tests.conftest import TINY, tmp_overrides


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("follow")
    built = {}
    for name, models in (("a", "{popularity: {}}"), ("b", "{itemknn: {neighbors: 10}}")):
        params = load_params(None, tmp_overrides(root / name) + TINY + [f"recommenders={models}", "encode.encoders=[]"])
        run_pipeline(params)
        built[name] = build_package(params, root / name / "package")
    return root, {name: (str(root / name / "package"), manifest) for name, manifest in built.items()}


class Service:
    engine = EngineSlot()


def point(registry: Path, tag: str, path: str, content_hash: str, serial: int) -> None:
    """The registry names ``tag`` (at ``path``, with ``content_hash``) as production, written atomically."""
    body = {
        "format": 1,
        "serial": serial,
        "versions": {tag: {"package_path": path, "content_hash": content_hash}},
        "lineage": [tag],
        "history": [],
    }
    registry.with_suffix(".tmp").write_text(json.dumps(body))
    registry.with_suffix(".tmp").replace(registry)


def damaged_copy(package_path: str, where: Path) -> Path:
    """A copy of the package whose items.parquet has its last byte flipped: its checksums fail."""
    damaged = where / "damaged"
    shutil.copytree(package_path, damaged)
    data = (damaged / "items.parquet").read_bytes()
    (damaged / "items.parquet").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    return damaged


def load(path: str) -> Engine:
    return Engine.load(path, device="cpu")


def test_a_pinned_request_keeps_its_engine_through_a_switch() -> None:
    service, old, new = Service(), object(), object()
    service.engine = old
    token = pin(service.engine)  # what the Guard does when a request arrives
    service.engine = new  # the switch, while the request is in flight
    assert service.engine is old
    assert asyncio.run(asyncio.to_thread(lambda: service.engine)) is old  # a sync API's thread
    assert Service.engine.current(service) is new
    assert contextvars.Context().run(lambda: service.engine) is new  # another request
    leaked = contextvars.copy_context()  # a task created during the request (BentoML's batch dispatcher)
    unpin(token)
    assert service.engine is new
    newer = object()
    service.engine = newer
    assert leaked.run(lambda: service.engine) is newer, "a task outliving its request must not keep its engine"


def test_the_follower_switches_rolls_back_and_refuses(packages, tmp_path, caplog) -> None:
    root, built = packages
    (a_path, a), (b_path, b) = built["a"], built["b"]
    assert a["content_hash"] != b["content_hash"]
    registry = tmp_path / "production.json"
    point(registry, a["tag"], a_path, a["content_hash"], 1)
    service = Service()
    service.engine = load(a_path)
    loads: list[str] = []

    def counted(path: str) -> Engine:
        loads.append(path)
        return load(path)

    follower = Follower(service, Service.engine, registry, 0.1, counted)
    assert follower.poll() is False and follower.serial == 1

    point(registry, b["tag"], b_path, b["content_hash"], 2)
    assert follower.poll() is True
    assert model_version(service.engine) == b["tag"] and follower.swaps == 1 and follower.serial == 2
    assert service.engine.recommend(b["example_user_id"], 5).model == "itemknn"

    point(registry, a["tag"], a_path, a["content_hash"], 3)  # a rollback
    assert follower.poll() is True and model_version(service.engine) == a["tag"]

    # a package whose files changed after registration: its checksums fail; logged once, A keeps serving
    damaged = damaged_copy(b_path, tmp_path)
    point(registry, b["tag"], str(damaged), b["content_hash"], 4)
    with caplog.at_level(logging.ERROR, logger="recforge.follow"):
        assert follower.poll() is False
        tried = len(loads)
        assert follower.poll() is False
    assert len(loads) == tried, "a refused version is not loaded again at every poll of the same serial"
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0].getMessage()
    assert model_version(service.engine) == a["tag"] and "serial 4" in follower.last_error

    # intact files whose manifest is not the one the registry recorded
    point(registry, b["tag"], b_path, "0" * 64, 5)
    assert follower.poll() is False and "registry recorded 000000000000" in follower.last_error
    assert model_version(service.engine) == a["tag"]

    registry.write_text("{not json")  # an unreadable registry: keep serving
    assert follower.poll() is False and "cannot read the production registry" in follower.last_error
    assert model_version(service.engine) == a["tag"]

    point(registry, b["tag"], b_path, b["content_hash"], 6)  # a good promotion is taken again
    assert follower.poll() is True and model_version(service.engine) == b["tag"] and follower.last_error is None


@pytest.mark.parametrize("value", [0, 0.05, 301, float("nan")])
def test_poll_s_is_bounded(value) -> None:
    with pytest.raises(ValueError, match="poll_s"):
        check_poll_s(value)
