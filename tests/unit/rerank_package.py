"""A tiny two-stage package (popularity + itemknn candidates, a LambdaRank re-ranker over tfidf features), built
once and kept on disk for the serving-path unit tests (tests/unit/test_mutation_serving.py,
tests/unit/test_mutation_online_rerank.py).

Building it costs ~10 s; mutation testing runs a fresh pytest session per mutant, so the package is cached in
``$RECFORGE_TEST_CACHE`` (default: ``<tmp>/recforge-rerank-package``) under a hash of the overrides and of the
sources that build it. The serving modules those tests mutate (they only read a package) are left out of the
hash, so a mutation run reuses the package its unmutated test run built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

OVERRIDES = [
    "recommenders={popularity: {}, itemknn: {neighbors: 10}}",
    "rerank.enabled=true",
    "rerank.folds=2",
    "rerank.candidates_per_model=10",
    "rerank.num_boost_round=10",
    "rerank.early_stopping_rounds=5",
    "encode.encoders=[tfidf]",
    "data.synthetic.num_users=40",
    "data.synthetic.num_items=30",
    "data.synthetic.num_interactions=600",
    "data.synthetic.num_topics=2",
    "evaluate.list_length=10",
]
# read a package, never build one: their mutants must not change the cache key
READ_ONLY = {"selection.py", "online_rerank.py", "explanation_cache.py", "exclusions.py", "schemas.py"}


def _key() -> str:
    import recforge

    import recforge_plugins as plugins

    digest = hashlib.sha256("\n".join(OVERRIDES).encode())
    for package in (recforge, plugins):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            if path.name not in READ_ONLY or path.parent != Path(recforge.__file__).parent:
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def rerank_package() -> Path:
    """The package directory, built on first use in a child process (concurrent builders each build, the first
    rename wins). A child, so that LightGBM's OpenMP threads never start in this process: mutation testing forks
    a worker per mutant from it, and a fork of a process whose OpenMP pool is running hangs in its next
    parallel region."""
    cache = Path(os.environ.get("RECFORGE_TEST_CACHE") or Path(tempfile.gettempdir()) / "recforge-rerank-package")
    target = cache / _key()
    if not (target / "manifest.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[2]  # the folder holding tests/ (and, under mutmut, recforge/)
        subprocess.run([sys.executable, "-m", "tests.unit.rerank_package", str(target)], cwd=root, check=True)
    return target


@contextmanager
def one_openmp_thread():
    """OpenMP (LightGBM) limited to one thread, as the service runs (recforge.threads.limit_threads): no thread
    pool starts, so the process stays safe to fork (see :func:`rerank_package`)."""
    import lightgbm  # noqa: F401 - loads libgomp, for threadpoolctl to find
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def open_with_models(directory: Path):
    """(the package, its models) opened as the service opens them, on the CPU; call it inside
    :func:`one_openmp_thread`."""
    from recforge.packaging import Package
    from recforge.protocols import FitContext

    package = Package.open(directory)
    context = FitContext(
        items=package.items, maps=package.maps, embeddings=package.embeddings, seed=package.params.seed, device="cpu"
    )
    return package, package.load_models(context)


def _build(target: Path) -> None:
    from recforge.packaging import build_package
    from recforge.params import load_params, paths_under
    from recforge.pipeline import run_pipeline

    work = Path(tempfile.mkdtemp(dir=target.parent, prefix="build-"))
    try:
        params = load_params(None, paths_under(work / "workspace") + OVERRIDES)
        run_pipeline(params)
        build_package(params, work / "package")
        try:
            (work / "package").rename(target)
        except OSError:  # another session renamed its build first
            if not (target / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    _build(Path(sys.argv[1]))
