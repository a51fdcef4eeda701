"""The production alias: which packaged model serves, with its versions and promotion history.

A small registry file beside the BentoML model store (``promote.registry``,
default ``$BENTOML_HOME/recforge/production.json``; ``BENTOML_HOME`` defaults
to ``~/bentoml``). Every change reads, edits and rewrites it under an
``flock`` (recforge.locking, ``workspace.lock`` in the registry's directory)
and writes it atomically (a temporary sibling renamed over it), so two
promotions racing each land, one after the other, and a reader never sees
half a file. It holds:

- ``versions``: every registered model-store tag with its package path,
  content hash, metrics, blessing (recforge.blessing) and the spans it was
  trained on;
- ``lineage``: the tags promoted, oldest first; the last is production.
  ``rollback`` removes the last, so the one before serves again;
- ``history``: every promotion and rollback: when, which tag, the previous
  one, from which run, why;
- ``serial``: incremented on every change.

A server that follows production polls :func:`current` (tag, package path,
content hash, serial) and loads a new version when the serial changes; this
module never talks to a server.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.artifacts import read_json, write_json
from recforge.errors import RecforgeError
from recforge.locking import workspace_lock
from recforge.params import Params

REGISTRY_FORMAT = 1
TAG = re.compile(r"recforge-model:[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_REASON = 500
MAX_REGISTRY_BYTES = 16 << 20  # a registry larger than this is not ours


@dataclass(frozen=True)
class Production:
    """What serves now: what a server polls."""

    tag: str
    package_path: str
    content_hash: str
    serial: int
    promoted_at: str | None


def registry_path(params: Params) -> Path:
    if params.promote.registry:
        return Path(params.promote.registry)
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    return home / "recforge" / "production.json"


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG.fullmatch(tag):
        raise RecforgeError(f"model tag {tag!r}: expected recforge-model:<version> (letters, digits, '.', '_', '-')")
    return tag


def _empty() -> dict[str, Any]:
    return {"format": REGISTRY_FORMAT, "serial": 0, "versions": {}, "lineage": [], "history": []}


def read(params_or_path: Params | Path) -> dict[str, Any]:
    """The registry (an empty one when there is no file yet); no lock needed: it is replaced atomically."""
    path = registry_path(params_or_path) if isinstance(params_or_path, Params) else Path(params_or_path)
    if not path.exists():
        return _empty()
    if path.stat().st_size > MAX_REGISTRY_BYTES:
        raise RecforgeError(f"{path}: larger than {MAX_REGISTRY_BYTES:,} bytes; not a recforge registry")
    try:
        body = read_json(path)
    except ValueError:
        raise RecforgeError(f"{path}: not valid JSON; restore it or remove it (production is then unset)") from None
    if not isinstance(body, dict) or body.get("format") != REGISTRY_FORMAT:
        raise RecforgeError(f"{path}: not a recforge production registry (format {REGISTRY_FORMAT})")
    return body


def current(params_or_path: Params | Path) -> Production | None:
    """The production model (None before the first promotion): tag, package path, content hash, serial."""
    body = read(params_or_path)
    if not body["lineage"]:
        return None
    tag = body["lineage"][-1]
    version = body["versions"][tag]
    promoted = next((h["at"] for h in reversed(body["history"]) if h["tag"] == tag), None)
    return Production(tag, version["package_path"], version["content_hash"], int(body["serial"]), promoted)


def current_version(params: Params) -> dict[str, Any] | None:
    """The production version's registry entry (metrics, blessing, spans), or None."""
    body = read(params)
    return body["versions"][body["lineage"][-1]] if body["lineage"] else None


def store_entry(tag: str) -> tuple[str, str]:
    """(package path, content hash) of a model-store entry, its files checked against its manifest."""
    import bentoml
    from bentoml.exceptions import NotFound

    from recforge.packaging import Package

    check_tag(tag)
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise RecforgeError(f"model {tag} is not in the BentoML model store (`bentoml models list`)") from None
    package = Package.open(model.path)
    return str(model.path), str(package.manifest["content_hash"])


def seen_spans(params: Params) -> set[str]:
    """Every span a registered version was trained or evaluated on (what a cycle has handled)."""
    seen: set[str] = set()
    for version in read(params)["versions"].values():
        seen |= set(version.get("spans") or []) | set(version.get("evaluated_on") or [])
    return seen


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _reason(reason: str) -> str:
    reason = " ".join(str(reason).split())
    if not reason or len(reason) > MAX_REASON:
        raise RecforgeError(f"a promotion needs a reason of 1 to {MAX_REASON} characters")
    return reason


def _edit(params: Params, change) -> dict[str, Any]:
    """Read, change and write the registry under its lock; returns the new registry."""
    path = registry_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with workspace_lock(path.parent, timeout=60):
        body = read(path)
        change(body)
        body["serial"] = int(body["serial"]) + 1
        write_json(body, path)
    return body


def register(
    params: Params,
    tag: str,
    *,
    run: str,
    metrics: dict[str, Any] | None = None,
    blessing: dict[str, Any] | None = None,
    spans: list[str] | None = None,
    evaluated: list[str] | None = None,
    infra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add (or update) a model-store tag in the registry's versions: its metrics, blessing, the spans it
    was trained on and those it was evaluated on, its infra-validation (recforge.infra)."""
    package_path, content = store_entry(tag)

    def change(body: dict[str, Any]) -> None:
        entry = body["versions"].get(tag) or {"registered_at": _now(), "run": run}
        entry.update(package_path=package_path, content_hash=content)
        if metrics is not None:
            entry["metrics"] = metrics
        if blessing is not None:
            entry["blessing"] = blessing
        if spans is not None:
            entry["spans"] = list(spans)
        if evaluated is not None:
            entry["evaluated_on"] = list(evaluated)
        if infra is not None:
            entry["infra_validation"] = infra
        body["versions"][tag] = entry

    return _edit(params, change)


def promote(params: Params, tag: str, *, reason: str, run: str) -> dict[str, Any]:
    """Make ``tag`` production (registering it when new); returns the history entry."""
    reason = _reason(reason)
    package_path, content = store_entry(tag)
    record: dict[str, Any] = {}

    def change(body: dict[str, Any]) -> None:
        previous = body["lineage"][-1] if body["lineage"] else None
        entry = body["versions"].setdefault(tag, {"registered_at": _now(), "run": run})
        entry.update(package_path=package_path, content_hash=content)
        body["lineage"].append(tag)
        record.update(at=_now(), action="promote", tag=tag, previous=previous, run=run, reason=reason)
        body["history"].append(dict(record))

    _edit(params, change)
    return record


def rollback(params: Params, *, reason: str, run: str) -> dict[str, Any]:
    """Production goes back to the version promoted before the current one; returns the history entry."""
    reason = _reason(reason)
    record: dict[str, Any] = {}

    def change(body: dict[str, Any]) -> None:
        if len(body["lineage"]) < 2:
            raise RecforgeError("no earlier production version to roll back to")
        previous = body["lineage"].pop()
        record.update(at=_now(), action="rollback", tag=body["lineage"][-1], previous=previous, run=run, reason=reason)
        body["history"].append(dict(record))

    _edit(params, change)
    return record


def run_id() -> str:
    """Who changes the registry: the Prefect flow run, else this process."""
    flow_run = os.environ.get("PREFECT__FLOW_RUN_ID")
    return f"prefect:{flow_run}" if flow_run else f"pid:{os.getpid()}@{os.uname().nodename}"
