"""One production cycle: new spans? -> ingest (gate with drift) -> ... -> package -> bless -> promote.

``recforge cycle`` and the ``continuous`` Prefect flow run the same stages of
the stage table: the pipeline's (``STAGE_ORDER``: ingest with the gate and
drift, validate, split, encode, train, rerank, evaluate) then
``LOOP_STAGES`` (package into the model store, bless against production,
promote when blessed). A cycle starts only when the span directory holds a
span no registered version was trained or evaluated on (or there is no
production model yet). A gate failure raises ``ValidationFailed`` (exit 2)
before anything is packaged: production is untouched. A candidate that is
not blessed is registered with its blessing and production stays: the cycle
ends normally.
"""

from __future__ import annotations

import logging
from typing import Any

from recforge.locking import workspace_lock
from recforge.params import Params
from recforge.stages import LOOP_STAGES, STAGE_ORDER, get_stage

log = logging.getLogger(__name__)


def new_spans(params: Params) -> list[str]:
    """Spans that no registered version was trained or evaluated on, in name order."""
    from recforge import production
    from recforge.spans import span_files

    seen = production.seen_spans(params)
    return [path.name for path in span_files(params) if path.name not in seen]


def should_run(params: Params) -> tuple[bool, str]:
    """(whether a cycle has work, why)."""
    from recforge import production

    if production.current(params) is None:
        return True, "no production model yet"
    spans = new_spans(params)
    if not spans:
        return False, "no new spans since the last cycle"
    return True, f"new spans: {', '.join(spans)}"


def run_cycle(params: Params, *, run: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run one cycle under the workspace lock; returns reports/promotion.json's content (or why nothing ran)."""
    from recforge.stages.promote import run_promote

    with workspace_lock(params.paths.cache_dir):
        go, why = should_run(params)
        if not go and not force:
            log.info("cycle: nothing to do (%s)", why)
            return {"promoted": False, "ran": False, "reason": why}
        log.info("cycle: %s", why)
        for name in (*STAGE_ORDER, *LOOP_STAGES[:-1]):
            get_stage(name).run(params)
        result = run_promote(params, run=run)
    return {**result, "ran": True}
