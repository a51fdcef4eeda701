"""Run stages in order (the CLI's ``run``; Prefect and DVC call the stages through the stage table)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from recforge.locking import workspace_lock
from recforge.params import Params
from recforge.stages import STAGE_ORDER, get_stage

log = logging.getLogger(__name__)


def run_pipeline(
    params: Params,
    stages: list[str] | None = None,
    on_stage: Callable[[str, float], None] | None = None,
) -> dict[str, float]:
    """Run ``stages`` (default: all but package) under the workspace lock; return seconds per stage."""
    timings: dict[str, float] = {}
    with workspace_lock(params.paths.cache_dir):
        for name in stages or STAGE_ORDER:
            started = time.perf_counter()
            get_stage(name).run(params)
            timings[name] = time.perf_counter() - started
            log.info("stage %s done in %.1fs", name, timings[name])
            if on_stage:
                on_stage(name, timings[name])
    return timings
