"""One tiny trained workspace (popularity on tiny synthetic data, tfidf embeddings and profiles), cached on disk.

For the mutation tests of modules the pipeline does not run (recforge/explain.py, recforge/packaging.py): mutmut
starts a fresh pytest session per mutant, so a session fixture would retrain for every mutant. The workspace is
trained once into ``<tmp>/recforge-test-cache/workspace-<key>`` (:mod:`tests.unit.build_cache`'s key: the
overrides and every source file but the modules under test, whose mutated copies must reuse the workspace the
unmutated code trained) and read (never written) by the tests; it is trained in place, not renamed, since a
workspace's files may name their paths. A run that dies half way leaves no ``done`` marker and the
next one trains again; an flock keeps two processes from training the same workspace at once.
"""

from __future__ import annotations

import fcntl
import shutil

from recforge.params import Params, load_params
from tests.conftest import TINY, tmp_overrides
from tests.unit.build_cache import cache_root, source_key

OVERRIDES = [*TINY, "recommenders={popularity: {}}", "rerank.enabled=false", "encode.encoders=[tfidf]"]
STAGES = ["ingest", "validate", "split", "encode", "train", "evaluate"]
# the smallest two-stage workspace: popularity and itemknn candidates, a LambdaRank re-ranker of a few rounds
RERANK_OVERRIDES = [
    *TINY,
    "recommenders={popularity: {}, itemknn: {neighbors: 10}}",
    "encode.encoders=[tfidf]",
    "rerank.enabled=true",
    "rerank.folds=2",
    "rerank.candidates_per_model=10",
    "rerank.num_boost_round=5",
    "rerank.early_stopping_rounds=2",
    "evaluate.list_length=5",
    "device=cpu",  # no torch import to pick a device (seconds per mutant)
]
RERANK_STAGES = ["ingest", "validate", "split", "encode", "train", "rerank", "evaluate"]
NOT_IN_PIPELINE = {"recforge/explain.py", "recforge/packaging.py"}


def workspace_params(*extra: str, rerank: bool = False) -> Params:
    """Params of the cached trained workspace (trained on first use), with ``extra`` overrides on top;
    ``rerank``: the two-stage one."""
    overrides, stages = (RERANK_OVERRIDES, RERANK_STAGES) if rerank else (OVERRIDES, STAGES)
    root = cache_root() / f"workspace-{source_key([overrides, stages], NOT_IN_PIPELINE)}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            from recforge.pipeline import run_pipeline

            shutil.rmtree(root, ignore_errors=True)
            run_pipeline(load_params(None, tmp_overrides(root) + overrides), stages=stages)
            (root / "done").write_text("trained\n")
    return load_params(None, tmp_overrides(root) + overrides + list(extra))
