"""Tiny trained packages for the tests of modules that read packages but never build them (blessing, follow).

Training even the smallest pipeline takes seconds, and mutation testing runs a module's tests once per mutant in
a fresh session: each package is built once and kept on disk (the temporary directory, or
``$RECFORGE_TEST_PACKAGES``), keyed by a hash of its overrides and of recforge's source, so a code change builds
it again. A build goes to a private directory renamed into place at the end: tests running in parallel never see
half a package, and the loser of a race uses the winner's. The modules these tests mutate are not used to build
packages, so a cached package is the one the mutated code would have built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from recforge.params import Params, load_params
from tests.conftest import tmp_overrides

RECFORGE = Path(__file__).resolve().parents[2] / "recforge"
# smaller than tests.conftest.TINY: a pipeline that trains in a few seconds
SMALL = [
    "data.synthetic.num_users=40",
    "data.synthetic.num_items=30",
    "data.synthetic.num_interactions=600",
    "data.synthetic.num_topics=2",
    "encode.encoders=[]",
    "rerank.enabled=false",
]
POPULARITY = [*SMALL, "recommenders={popularity: {}}"]
ITEMKNN = [*SMALL, "recommenders={itemknn: {neighbors: 10}}"]


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(RECFORGE.rglob("*.py")):
        digest.update(path.relative_to(RECFORGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache() -> Path:
    return Path(os.environ.get("RECFORGE_TEST_PACKAGES") or Path(tempfile.gettempdir()) / "recforge-test-packages")


def tiny_package(overrides: list[str], extra: list[str] | None = None) -> tuple[Params, Path]:
    """(params of the trained workspace plus ``extra`` overrides, its package directory); every path under one
    cached root (``extra`` moves what a test writes elsewhere: it is not part of the cache key)."""
    key = hashlib.sha256(json.dumps([overrides, _source_hash()]).encode()).hexdigest()[:20]
    root = _cache() / key
    if not (root / "package" / "manifest.json").exists():
        from recforge.packaging import build_package
        from recforge.pipeline import run_pipeline

        _cache().mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_cache()))
        params = load_params(None, tmp_overrides(staging) + overrides)
        run_pipeline(params)
        build_package(params, staging / "package")
        try:
            staging.rename(root)
        except OSError:  # built meanwhile by another process: use that one
            shutil.rmtree(staging, ignore_errors=True)
    return load_params(None, tmp_overrides(root) + overrides + list(extra or [])), root / "package"
