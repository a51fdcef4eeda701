"""One function per pipeline stage: ``run_<stage>(params) -> None``.

The CLI (``recforge stage NAME``), dvc.yaml and the Prefect flows call exactly
these. Each is idempotent and writes its outputs atomically.
"""

from __future__ import annotations

from collections.abc import Callable

from recforge.params import Params

STAGE_ORDER = ["ingest", "validate", "split", "encode", "train", "rerank", "evaluate"]


def get_stage(name: str) -> Callable[[Params], None]:
    """The stage function called ``name`` (imported lazily: stages pull heavy libraries)."""
    import importlib

    from recforge.errors import RecforgeError

    known = STAGE_ORDER + ["package"]
    if name not in known:
        raise RecforgeError(f"unknown stage '{name}' (stages: {', '.join(known)})")
    module = importlib.import_module(f"recforge.stages.{name}")
    return getattr(module, f"run_{name}")
