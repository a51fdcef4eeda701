"""A tiny two-stage package (popularity + itemknn candidates, a LambdaRank re-ranker over tfidf features), built
once and kept on disk for the serving-path unit tests (tests/unit/test_mutation_serving.py,
tests/unit/test_mutation_online_rerank.py).

Building it costs ~10 s, so it is kept on disk by :mod:`tests.unit.build_cache`; the serving modules those tests
mutate (they only read a package) are left out of its key.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from tests.unit.build_cache import build_once, source_key

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
READ_ONLY = {
    "recforge/selection.py",
    "recforge/online_rerank.py",
    "recforge/explanation_cache.py",
    "recforge/exclusions.py",
    "recforge/schemas.py",
}


def rerank_package() -> Path:
    """The package directory, built on first use in a child process. A child, so that LightGBM's OpenMP threads
    never start in this process: mutation testing forks a worker per mutant from it, and a fork of a process
    whose OpenMP pool is running hangs in its next parallel region."""

    def build(staging: Path) -> None:
        root = Path(__file__).resolve().parents[2]  # the folder holding tests/ (and, under mutmut, recforge/)
        subprocess.run([sys.executable, "-m", "tests.unit.rerank_package", str(staging)], cwd=root, check=True)

    return build_once("rerank-package", source_key(OVERRIDES, READ_ONLY), build, "package/manifest.json") / "package"


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


def _build(staging: Path) -> None:
    from recforge.packaging import build_package
    from recforge.params import load_params, paths_under
    from recforge.pipeline import run_pipeline

    params = load_params(None, paths_under(staging / "workspace") + OVERRIDES)
    run_pipeline(params)
    build_package(params, staging / "package")
    shutil.rmtree(staging / "workspace")


if __name__ == "__main__":
    _build(Path(sys.argv[1]))
