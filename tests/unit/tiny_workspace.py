"""One tiny trained workspace (popularity on tiny synthetic data, tfidf embeddings and profiles), cached on disk.

For the mutation tests of modules the pipeline does not run (recforge/explain.py, recforge/packaging.py): mutmut
starts a fresh pytest session per mutant, so a session fixture would retrain for every mutant. The workspace is
trained once into ``<tmp>/recforge-test-workspace/<key>`` and read (never written) by the tests; ``key`` hashes
the overrides and every source file the pipeline may run (the modules under test excluded: their mutated copies
must reuse the workspace the unmutated code trained). A run that dies half way leaves no ``done`` marker and the
next one trains again; an flock keeps two processes from training the same workspace at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
from pathlib import Path

from recforge.params import Params, load_params
from tests.conftest import TINY, tmp_overrides

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
NOT_IN_PIPELINE = {"explain.py", "packaging.py"}


def _key(overrides: list[str], stages: list[str]) -> str:
    import recforge

    import recforge_plugins

    digest = hashlib.sha256(repr((overrides, stages)).encode())
    for package in (recforge, recforge_plugins):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            if path.name not in NOT_IN_PIPELINE:
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def workspace_params(*extra: str, rerank: bool = False) -> Params:
    """Params of the cached trained workspace (trained on first use), with ``extra`` overrides on top;
    ``rerank``: the two-stage one."""
    overrides, stages = (RERANK_OVERRIDES, RERANK_STAGES) if rerank else (OVERRIDES, STAGES)
    root = Path(tempfile.gettempdir()) / "recforge-test-workspace" / _key(overrides, stages)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            from recforge.pipeline import run_pipeline

            shutil.rmtree(root, ignore_errors=True)
            run_pipeline(load_params(None, tmp_overrides(root) + overrides), stages=stages)
            (root / "done").write_text("trained\n")
    return load_params(None, tmp_overrides(root) + overrides + list(extra))
