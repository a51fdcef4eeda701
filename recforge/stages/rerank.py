"""rerank: the second stage (LightGBM LambdaRank over candidate features).

With ``rerank.enabled: false`` (the default until a re-ranker is configured)
the stage has nothing to do and writes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from recforge.params import Params

log = logging.getLogger(__name__)


def run_rerank(params: Params, variant: str | None = None) -> None:
    if not params.rerank.enabled:
        log.info("rerank disabled (rerank.enabled: false)")
        Path(params.paths.models_dir, "rerank").mkdir(parents=True, exist_ok=True)  # dvc.yaml's out, empty
        return
    from recforge.rerank import run as run_two_stage

    run_two_stage(params)
