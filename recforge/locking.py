"""One writer per workspace: the lock every entry point takes before it runs stages.

``recforge run``, ``recforge stage`` (what ``dvc repro`` calls) and the Prefect
``training`` flow hold ``<cache_dir>/workspace.lock`` (an ``flock``: the kernel
drops it when the holder dies, even by ``kill -9``, so a crash never leaves a
stale lock). A second run on the same workspace waits for the first, or with
``wait=False`` stops at once with a one-line error. The lock is re-entrant
within a process: a flow's tasks on threads share their flow's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from recforge.errors import RecforgeError

log = logging.getLogger(__name__)

_held: dict[str, int] = {}
_guard = threading.Lock()


def lock_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "workspace.lock"


@contextlib.contextmanager
def workspace_lock(cache_dir: str | Path, *, wait: bool = True, timeout: float | None = None) -> Iterator[None]:
    """Hold the workspace lock under ``cache_dir`` for the duration of the block."""
    path = lock_path(cache_dir).resolve()
    key = str(path)
    with _guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held for the block
    try:
        _acquire(handle, path, wait=wait, timeout=timeout)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _acquire(handle, path: Path, *, wait: bool, timeout: float | None) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = path.read_text().strip() or "?"
    if not wait:
        raise RecforgeError(
            f"another recforge run (pid {holder}) is using this workspace ({path}); try again when it ends"
        )
    log.warning("waiting for another recforge run (pid %s) on this workspace (%s)", holder, path)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise RecforgeError(f"another recforge run still holds {path} after {timeout:.0f}s") from None
            time.sleep(0.2)
