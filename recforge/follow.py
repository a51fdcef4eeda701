"""Hot swap: a serving worker follows the production alias (``recforge serve --follow production``).

Each worker runs one :class:`Follower`, a daemon thread that reads the
production registry (:func:`recforge.production.current`) every ``poll_s``
seconds. When production names another package (tag or content hash), the
follower, beside the engine that keeps serving:

1. **loads** it with :meth:`recforge.engine.Engine.load` (every file checked
   against the package manifest's sha256, as at start-up);
2. **verifies** that the manifest's files are those the registry recorded (the
   content hash recomputed from the manifest's checksums equals the
   registry's): a package rewritten after registration is refused;
3. **warms** it: the engine's own warm-up, then a few real requests (the
   example user, an unknown user, a session, /metadata); any exception refuses it;
4. **switches**: one attribute assignment (:class:`EngineSlot`), atomic under
   the GIL.

Requests are pinned to one engine for their whole life: the service's Guard
middleware reads the current engine once when a request arrives (:func:`pin`),
every ``self.engine`` of that request returns that engine, and the response
header ``X-Recforge-Model-Version`` names it. A request in flight during a
switch finishes on the old engine, which is freed when its last request ends.
A batched API (``/encode``) runs a batch of several requests in BentoML's
dispatcher task: the batch uses the engine current when it runs.

A version that fails (load, checksum, content hash, warm-up) is logged as one
line and remembered for its registry serial (not retried every poll); the
current engine keeps serving. A rollback is a registry change like any other:
the previous version is loaded again, verified and warmed.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("recforge.follow")

VERSION_HEADER = b"x-recforge-model-version"
MIN_POLL_S, MAX_POLL_S = 0.1, 300.0
WARM_REQUESTS = 3  # per warm-up path


class _Pin:
    """A request's engine while the request runs (``active`` goes false when the Guard is done with it)."""

    __slots__ = ("engine", "active")

    def __init__(self, engine: Any) -> None:
        self.engine, self.active = engine, True


# a task created during a request copies its context, pin included, and may outlive it (BentoML's batching
# dispatcher for /encode is created by the first request): an inactive pin is ignored, so such a task gets
# the current engine rather than the first request's forever
_PINNED: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("recforge_engine", default=None)


class EngineSlot:
    """The service's ``engine`` attribute: the request's pinned engine when there is one, else the current one.

    Assigning it (``service.engine = new``) is the switch: one reference replaced.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = f"_{name}_current"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        pinned = _PINNED.get()
        return pinned.engine if pinned is not None and pinned.active else obj.__dict__.get(self.key)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.key] = value

    def current(self, obj: Any) -> Any:
        """The engine new requests get (ignores the pin)."""
        return obj.__dict__.get(self.key)


def pin(engine: Any) -> contextvars.Token:
    """Pin ``engine`` to the running request (its context and every task or thread copied from it)."""
    return _PINNED.set(_Pin(engine))


def unpin(token: contextvars.Token) -> None:
    """End the pin ``token`` set (in the same context): contexts copied from the request stop seeing it."""
    pinned = _PINNED.get()
    if pinned is not None:
        pinned.active = False
    _PINNED.reset(token)


def model_version(engine: Any) -> str:
    """The version an engine serves: its model-store tag (``name:version`` for an older package)."""
    manifest = engine.manifest
    return str(manifest.get("tag") or f"{manifest['name']}:{manifest['version']}")


def check_poll_s(value: float) -> float:
    value = float(value)
    if not MIN_POLL_S <= value <= MAX_POLL_S:
        raise ValueError(f"poll_s must be between {MIN_POLL_S} and {MAX_POLL_S} seconds, got {value}")
    return value


def warm(engine: Any, requests: int = WARM_REQUESTS) -> None:
    """A few real requests on every public path a new engine answers; raises on the first failure."""
    from recforge.artifacts import plain

    example = engine.manifest.get("example_user_id")
    first_items = [plain(engine.maps.item_ids[0])] if len(engine.maps.item_ids) else []
    for _ in range(requests):
        if example is not None:
            engine.recommend(example, 10)
        engine.recommend("recforge-warm-up-unknown-user", 10)  # the popular list (or a user's: either answers)
        engine.recommend_history(first_items, 10)
    engine.metadata()


@dataclass
class Follower:
    """Polls the production registry and switches ``owner``'s :class:`EngineSlot` to each new version.

    ``load(package_path)`` builds an engine (the service passes ``Engine.load`` with its own arguments).
    """

    owner: Any
    slot: EngineSlot
    registry: Path
    poll_s: float
    load: Callable[[str], Any]
    serial: int | None = None  # the registry serial last handled
    swaps: int = 0
    last_error: str | None = None
    last_swap_s: float | None = None  # load + verify + warm + switch of the last swap
    _failed: tuple[int, str] | None = None  # (serial, content hash) that failed: not retried until either changes
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.poll_s = check_poll_s(self.poll_s)

    def start(self) -> Follower:
        """One poll now (a worker starts on production when it differs), then one every ``poll_s`` in a thread."""
        self.poll()
        self._thread = threading.Thread(target=self._run, name="recforge-follow", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> bool:
        """Check the registry once; True when the engine was switched. Never raises."""
        from recforge import production

        try:
            now = production.current(self.registry)
        except Exception as exc:  # a broken registry: keep serving, say it once per message
            self._fail(None, f"cannot read the production registry {self.registry}: {_one_line(exc)}")
            return False
        if now is None:
            return False
        serving = self.slot.current(self.owner)
        if serving is not None and serving.manifest.get("content_hash") == now.content_hash:
            self.serial = now.serial
            return False
        if self._failed == (now.serial, now.content_hash):
            return False
        return self._swap(now)

    def _swap(self, now: Any) -> bool:
        from recforge.packaging import content_hash

        started = time.perf_counter()
        try:
            engine = self.load(now.package_path)  # every file checked against the manifest's sha256
            found = content_hash(engine.manifest["checksums"])
            if found != now.content_hash:
                raise ValueError(f"its files hash to {found[:12]}, the registry recorded {now.content_hash[:12]}")
            warm(engine)
        except Exception as exc:  # anything: the current engine keeps serving
            self._failed = (now.serial, now.content_hash)
            self._fail(now.serial, f"production {now.tag} (serial {now.serial}) refused: {_one_line(exc)}")
            return False
        previous = self.slot.current(self.owner)
        self.slot.__set__(self.owner, engine)  # the switch: new requests get ``engine`` from here on
        self.serial, self.swaps, self._failed, self.last_error = now.serial, self.swaps + 1, None, None
        self.last_swap_s = time.perf_counter() - started
        log.info(
            "now serving %s (serial %d; was %s; loaded, verified and warmed in %.2f s)",
            now.tag,
            now.serial,
            model_version(previous) if previous is not None else "none",
            self.last_swap_s,
        )
        return True

    def _fail(self, serial: int | None, message: str) -> None:
        if message != self.last_error:
            log.error("%s; still serving the current version", message)
        self.last_error = message
        if serial is not None:
            self.serial = serial

    def status(self) -> dict[str, Any]:
        """What /metadata reports under ``follow``."""
        return {
            "registry": str(self.registry),
            "poll_s": self.poll_s,
            "serial": self.serial,
            "swaps": self.swaps,
            "last_swap_s": None if self.last_swap_s is None else round(self.last_swap_s, 3),
            "last_error": self.last_error,
        }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
