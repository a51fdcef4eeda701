"""recforge.follow: the engine slot and its per-request pin, the warm-up, and a Follower polling a real registry
file and switching between real engines of two tiny packages (built once and cached on disk,
tests/unit/tiny_packages.py). Fast; each test names the bug it catches."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from recforge import follow
from recforge.engine import Engine
from recforge.follow import EngineSlot, Follower
from recforge.interactions import IdMaps
from tests.service.test_follow import Service, damaged_copy, load, point
from tests.unit.tiny_packages import ITEMKNN, POPULARITY, tiny_package


@pytest.fixture(scope="module")
def built():
    """{name: (package path, manifest)} of the two cached packages: popularity (a) and itemknn (b)."""
    out = {}
    for name, overrides in (("a", POPULARITY), ("b", ITEMKNN)):
        _, directory = tiny_package(overrides)
        out[name] = (str(directory), json.loads((directory / "manifest.json").read_text()))
    assert out["a"][1]["content_hash"] != out["b"][1]["content_hash"]
    return out


class Spy:
    """A real engine whose warm-up calls are recorded (and whose manifest or maps a test may replace)."""

    def __init__(self, engine, *, manifest=None, maps=None, fail_metadata: str | None = None) -> None:
        self.engine, self.calls, self.fail_metadata = engine, [], fail_metadata
        self.manifest = engine.manifest if manifest is None else manifest
        self.maps = engine.maps if maps is None else maps

    def recommend(self, user, k):
        self.calls.append(("recommend", user, k))
        return self.engine.recommend(user, k)

    def recommend_history(self, items, k):
        self.calls.append(("history", items, k))
        return self.engine.recommend_history(items, k)

    def metadata(self):
        self.calls.append(("metadata",))
        if self.fail_metadata is not None:
            raise RuntimeError(self.fail_metadata)
        return self.engine.metadata()


# ---- the slot and the pin ----------------------------------------------------------------------------------


def test_a_pinned_request_keeps_its_engine_through_a_switch() -> None:
    # catches the pin ignored (a request switching engines half-way), a copied context keeping an ended request's
    # engine forever (BentoML's batch dispatcher), and current() returning the pin instead of what new requests get
    service, old, new = Service(), object(), object()
    service.engine = old
    token = follow.pin(service.engine)
    service.engine = new
    assert service.engine is old
    assert Service.engine.current(service) is new
    assert contextvars.Context().run(lambda: service.engine) is new
    leaked = contextvars.copy_context()
    follow.unpin(token)
    assert service.engine is new
    newer = object()
    service.engine = newer
    assert leaked.run(lambda: service.engine) is newer


def test_each_slot_stores_per_instance_under_its_own_private_name() -> None:
    # catches two slots of one class sharing storage, the slot on the class not returning the descriptor (what
    # Service.engine.current() needs), and an empty slot raising instead of None; the class is made here, so
    # that its slots are named by the code under test (not at import)
    class Other:
        engine = EngineSlot()
        spare = EngineSlot()

    one, two = Other(), Other()
    assert isinstance(Other.engine, EngineSlot) and Other.engine.key == "_engine_current"
    assert Other.spare.key == "_spare_current"
    assert one.engine is None and Other.engine.current(one) is None
    first, second = object(), object()
    one.engine, one.spare = first, second
    assert vars(one) == {"_engine_current": first, "_spare_current": second}
    assert one.engine is first and one.spare is second and two.engine is None


def test_unpin_without_a_pin_in_the_context() -> None:
    # catches unpin assuming a pin is set (a request whose pin was reset before the Guard ends it)
    token = follow._PINNED.set(None)
    follow.unpin(token)
    assert follow._PINNED.get() is None


def test_nested_pins_end_in_order() -> None:
    # catches unpin deactivating another pin than the one it ends, or not restoring the outer request's engine
    service, outer, inner, current = Service(), object(), object(), object()
    service.engine = current
    token = follow.pin(outer)
    nested = follow.pin(inner)
    assert service.engine is inner
    follow.unpin(nested)
    assert service.engine is outer
    follow.unpin(token)
    assert service.engine is current


def test_model_version_names_the_tag_or_name_and_version() -> None:
    # catches the tag ignored, or an older package (no tag) named otherwise than name:version
    class E:
        def __init__(self, manifest):
            self.manifest = manifest

    assert follow.model_version(E({"tag": "recforge-model:v-c1", "name": "n", "version": "v"})) == "recforge-model:v-c1"
    assert follow.model_version(E({"name": "recforge-model", "version": "v9"})) == "recforge-model:v9"
    assert follow.model_version(E({"tag": "", "name": "n", "version": 3})) == "n:3"


@pytest.mark.parametrize("value", [0.1, 300, "2.5", 300.0])
def test_poll_s_accepts_its_bounds(value) -> None:
    # catches the bounds made exclusive, or the value not converted to float
    got = follow.check_poll_s(value)
    assert got == float(value) and isinstance(got, float)


@pytest.mark.parametrize("value", [0.0999, 300.001, 0, -1, float("nan"), float("inf")])
def test_poll_s_refuses_the_rest(value) -> None:
    # catches a poll interval that hammers the registry (below 0.1 s) or never polls (above 300 s, NaN)
    with pytest.raises(ValueError) as info:
        follow.check_poll_s(value)
    assert str(info.value) == f"poll_s must be between 0.1 and 300.0 seconds, got {float(value)}"


def test_one_line() -> None:
    # catches a multi-line error message (a log line per line), an empty message, or an unbounded one
    assert follow._one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert follow._one_line(KeyError()) == "KeyError"
    assert follow._one_line(ValueError("   ")) == "ValueError"
    assert follow._one_line(ValueError("x" * 600)) == "x" * 500


# ---- the warm-up ---------------------------------------------------------------------------------------------


def test_warm_asks_every_public_path(built) -> None:
    # catches a warm-up path left out (the first real request then pays for it), the wrong count of requests,
    # the example user not asked, and numpy scalars passed where clients send plain ids
    engine = load(built["a"][0])
    spy = Spy(engine)
    follow.warm(spy)
    example = engine.manifest["example_user_id"]
    first = engine.maps.item_ids[0].item()
    one = [("recommend", example, 10), ("recommend", "recforge-warm-up-unknown-user", 10), ("history", [first], 10)]
    assert spy.calls == one * 3 + [("metadata",)]
    assert type(spy.calls[2][1][0]) is int
    spy = Spy(engine)
    follow.warm(spy, 2)
    assert spy.calls == one * 2 + [("metadata",)]


def test_warm_without_an_example_user_or_items(built) -> None:
    # catches the example user asked when the package has none (None is not a user), and an item list with no
    # items indexed (an IndexError that would refuse a valid package)
    engine = load(built["a"][0])
    manifest = {**engine.manifest, "example_user_id": None}
    maps = IdMaps(user_ids=engine.maps.user_ids, item_ids=pd.Index([], name="item_id"))
    spy = Spy(engine, manifest=manifest, maps=maps)
    follow.warm(spy, 1)
    assert spy.calls == [("recommend", "recforge-warm-up-unknown-user", 10), ("history", [], 10), ("metadata",)]


# ---- the follower --------------------------------------------------------------------------------------------


def test_follower_poll_s_is_checked() -> None:
    # catches a Follower built with an unchecked (or unconverted) interval
    with pytest.raises(ValueError, match="poll_s"):
        Follower(Service(), Service.engine, Path("x"), 0.01, load)
    assert Follower(Service(), Service.engine, Path("x"), "1", load).poll_s == 1.0


def test_the_follower_switches_and_reports(built, tmp_path, caplog) -> None:
    # catches a switch without load/verify, the slot not switched, serial/swaps/last_error/last_swap_s not
    # updated, the switch's log line, an empty slot not filled, and status() reporting other figures
    (a_path, a), (b_path, b) = built["a"], built["b"]
    registry = tmp_path / "production.json"
    service, loads = Service(), []

    def counted(path: str) -> Engine:
        loads.append(path)
        return load(path)

    follower = Follower(service, Service.engine, registry, 0.5, counted)
    assert follower.status() == {
        "registry": str(registry),
        "poll_s": 0.5,
        "serial": None,
        "swaps": 0,
        "last_swap_s": None,
        "last_error": None,
    }
    assert follower.poll() is False and loads == []  # no registry yet: nothing to follow, no error
    assert follower.serial is None and follower.last_error is None

    point(registry, a["tag"], a_path, a["content_hash"], 3)
    with caplog.at_level(logging.INFO, logger="recforge.follow"):
        assert follower.poll() is True  # an empty slot takes production
    assert loads == [a_path] and follow.model_version(service.engine) == a["tag"]
    assert (follower.serial, follower.swaps, follower.last_error) == (3, 1, None)
    assert 0 < follower.last_swap_s < 60
    [line] = caplog.messages
    assert re.fullmatch(
        re.escape(f"now serving {a['tag']} (serial 3; was none; loaded, verified and warmed in ") + r"\d+\.\d\d s\)",
        line,
    )
    status = follower.status()
    assert status["last_swap_s"] == round(follower.last_swap_s, 3) and status["swaps"] == 1 and status["serial"] == 3

    caplog.clear()
    point(registry, b["tag"], b_path, b["content_hash"], 4)
    with caplog.at_level(logging.INFO, logger="recforge.follow"):
        assert follower.poll() is True
    assert follow.model_version(service.engine) == b["tag"] and follower.swaps == 2 and follower.serial == 4
    assert f"(serial 4; was {a['tag']}; loaded" in caplog.messages[0]
    assert service.engine.recommend(b["example_user_id"], 3).model == "itemknn"

    point(registry, b["tag"], b_path, b["content_hash"], 9)  # the same package again: no load, serial followed
    assert follower.poll() is False and loads == [a_path, b_path] and follower.serial == 9 and follower.swaps == 2


def test_refusals_keep_serving_and_are_logged_once(built, tmp_path, caplog) -> None:
    # catches a damaged package or a content hash the registry did not record served, a refusal retried every
    # poll (or never again after a new promotion), the error logged at every poll, the refused serial not
    # recorded, and a broken registry stopping the follower
    (a_path, a), (b_path, b) = built["a"], built["b"]
    registry = tmp_path / "production.json"
    service, loads = Service(), []
    service.engine = load(a_path)

    def counted(path: str) -> Engine:
        loads.append(path)
        return load(path)

    follower = Follower(service, Service.engine, registry, 0.1, counted)
    damaged = damaged_copy(b_path, tmp_path)
    point(registry, b["tag"], str(damaged), b["content_hash"], 4)
    with caplog.at_level(logging.ERROR, logger="recforge.follow"):
        assert follower.poll() is False
        assert follower.poll() is False
    assert loads == [str(damaged)], "a refused version is not loaded again at every poll of the same serial"
    assert follow.model_version(service.engine) == a["tag"] and follower.serial == 4 and follower.swaps == 0
    assert follower.last_error.startswith(f"production {b['tag']} (serial 4) refused: ")
    assert "\n" not in follower.last_error
    assert caplog.messages == [f"{follower.last_error}; still serving the current version"]

    point(registry, b["tag"], b_path, "0" * 64, 4)  # the same serial with another hash is tried
    assert follower.poll() is False and loads[-1] == b_path
    want = f"production {b['tag']} (serial 4) refused: its files hash to {b['content_hash'][:12]}, "
    assert follower.last_error == want + "the registry recorded 000000000000"

    caplog.clear()
    registry.write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="recforge.follow"):
        assert follower.poll() is False
        assert follower.poll() is False
    want = f"cannot read the production registry {registry}: {registry}: not valid JSON; restore it or remove it "
    assert follower.last_error == want + "(production is then unset)"
    assert caplog.messages == [f"{follower.last_error}; still serving the current version"]
    assert follower.serial == 4 and follow.model_version(service.engine) == a["tag"]

    point(registry, b["tag"], b_path, b["content_hash"], 5)  # a good promotion is taken
    assert follower.poll() is True and follow.model_version(service.engine) == b["tag"]
    assert follower.last_error is None and follower.serial == 5


def test_a_refused_version_is_tried_again_at_a_new_serial(built, tmp_path) -> None:
    # catches a failure remembered by content hash alone (a re-promotion of a repaired package never loaded) or a
    # warm-up failure not refusing the version
    (a_path, a), (b_path, b) = built["a"], built["b"]
    registry = tmp_path / "production.json"
    service, attempts = Service(), []
    service.engine = load(a_path)

    def flaky(path: str):
        attempts.append(path)
        engine = load(path)
        return Spy(engine, fail_metadata="metadata\n   failed") if len(attempts) == 1 else engine

    follower = Follower(service, Service.engine, registry, 0.1, flaky)
    point(registry, b["tag"], b_path, b["content_hash"], 2)
    assert follower.poll() is False and follower.poll() is False and len(attempts) == 1
    assert follower.last_error == f"production {b['tag']} (serial 2) refused: metadata failed"
    assert follow.model_version(service.engine) == a["tag"]
    point(registry, b["tag"], b_path, b["content_hash"], 3)
    assert follower.poll() is True and len(attempts) == 2 and follower.swaps == 1
    assert follower._failed is None


def test_start_polls_now_then_in_a_daemon_thread(built, tmp_path) -> None:
    # catches start() not switching before it returns (a worker serving a stale version until the first
    # interval), the thread not polling every poll_s, not a daemon (a worker that cannot exit), unnamed, and
    # stop() not ending it
    (a_path, a), (b_path, b) = built["a"], built["b"]
    registry = tmp_path / "production.json"
    point(registry, a["tag"], a_path, a["content_hash"], 1)
    service = Service()
    follower = Follower(service, Service.engine, registry, 0.1, load)
    assert follower.start() is follower
    try:
        assert follow.model_version(service.engine) == a["tag"]
        assert follower._thread.daemon and follower._thread.name == "recforge-follow"
        assert follower._thread in threading.enumerate()
        point(registry, b["tag"], b_path, b["content_hash"], 2)
        deadline = time.monotonic() + 5
        while follower.swaps < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert follow.model_version(service.engine) == b["tag"]
    finally:
        follower.stop()
    follower._thread.join(5)
    assert not follower._thread.is_alive()
