"""Run stages in order (the CLI's ``run``; Prefect and DVC call the stages themselves)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from recforge.params import Params
from recforge.stages import STAGE_ORDER, get_stage

log = logging.getLogger(__name__)


def run_pipeline(
    params: Params,
    stages: list[str] | None = None,
    on_stage: Callable[[str, float], None] | None = None,
) -> dict[str, float]:
    """Run ``stages`` (default: all but package) and return seconds per stage."""
    timings: dict[str, float] = {}
    for name in stages or STAGE_ORDER:
        started = time.perf_counter()
        get_stage(name)(params)
        timings[name] = time.perf_counter() - started
        log.info("stage %s done in %.1fs", name, timings[name])
        if on_stage:
            on_stage(name, timings[name])
    return timings
