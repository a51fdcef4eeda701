"""Things the unit tests build once and keep on disk: tiny trained packages and workspaces.

Mutation testing (`make mutation`) runs a module's tests once per mutant, each in a fresh pytest session, so a
session fixture that trains would train again for every mutant. A build is kept in the temporary directory under
a key that hashes its settings and the sources that build it: every ``.py`` of recforge and of the built-in
plugins, except the modules named in ``skip``, those the tests mutate and that never build (their mutated copy
must reuse what the unmutated code built). A code change anywhere else builds again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def source_key(settings: object, skip: frozenset[str] | set[str] = frozenset()) -> str:
    """A hash of ``settings`` (JSON) and of the sources; ``skip``: module paths such as ``recforge/engine.py``."""
    import recforge

    import recforge_plugins

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for package in (recforge, recforge_plugins):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            name = f"{package.__name__}/{path.relative_to(root).as_posix()}"
            if name not in skip:
                digest.update(name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "recforge-test-cache"


def build_once(name: str, key: str, build: Callable[[Path], None], marker: str) -> Path:
    """``<tmp>/recforge-test-cache/<name>-<key>``: ``build(staging)`` fills a private directory, which is renamed
    into place once ``staging / marker`` exists, so tests running in parallel never see half a build (the loser
    of a race uses the winner's)."""
    target = cache_root() / f"{name}-{key}"
    if (target / marker).exists():
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{key}-", dir=cache_root()))
    try:
        build(staging)
        if not (staging / marker).exists():
            raise RuntimeError(f"the {name} build wrote no {marker}")
        try:
            staging.rename(target)
        except OSError:  # built meanwhile by another process
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
