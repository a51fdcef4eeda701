"""Tiny trained packages for the tests of modules that read packages but never build them (blessing, follow).

Each package is built once and kept on disk by :mod:`tests.unit.build_cache` (keyed by its overrides and the
sources; the modules these tests mutate are not used to build packages, so a cached package is the one the
mutated code would have built).
"""

from __future__ import annotations

from pathlib import Path

from recforge.params import Params, load_params
from tests.conftest import tmp_overrides
from tests.unit.build_cache import build_once, source_key

# the modules whose tests use these packages: they read packages, never build them
READ_ONLY = {"recforge/blessing.py", "recforge/follow.py"}
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


def tiny_package(overrides: list[str], extra: list[str] | None = None) -> tuple[Params, Path]:
    """(params of the trained workspace plus ``extra`` overrides, its package directory); every path under one
    cached root (``extra`` moves what a test writes elsewhere: it is not part of the cache key)."""

    def build(staging: Path) -> None:
        from recforge.packaging import build_package
        from recforge.pipeline import run_pipeline

        params = load_params(None, tmp_overrides(staging) + overrides)
        run_pipeline(params)
        build_package(params, staging / "package")

    root = build_once("tiny-package", source_key(overrides, READ_ONLY), build, "package/manifest.json")
    return load_params(None, tmp_overrides(root) + overrides + list(extra or [])), root / "package"
