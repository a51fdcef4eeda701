"""rerank: the second stage (LightGBM LambdaRank over candidate features).

With ``rerank.enabled: false`` (the default until a re-ranker is configured)
the stage has nothing to do and writes nothing.
"""

from __future__ import annotations

import logging

from recforge.params import Params

log = logging.getLogger(__name__)


def run_rerank(params: Params) -> None:
    if not params.rerank.enabled:
        log.info("rerank disabled (rerank.enabled: false)")
        return
    from recforge.rerank import run as run_two_stage

    run_two_stage(params)
