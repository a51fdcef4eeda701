"""The ``continuous`` flow: one production cycle (recforge.cycle) as Prefect tasks.

new spans? -> the pipeline's stages (ingest with the drift gate ... evaluate) -> package -> bless ->
promote, each a ``run_stage`` task of flows.training (same cache keys, retries, validation artifact).
A candidate that is not blessed ends the run Completed with a ``not-promoted`` artifact giving the
reason; a promoted one gets a ``promoted`` artifact; a gate failure fails the run (production untouched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.inputs import check_run
from flows.runners import task_runner
from flows.training import _publish_validation, _run_stage
from recforge.artifacts import read_json
from recforge.locking import workspace_lock
from recforge.params import DEFAULT_PARAMS_FILE, load_params
from recforge.stages import LOOP_STAGES, STAGE_ORDER


@flow(name="continuous", description="new spans? -> ingest + drift gate -> train -> package -> bless -> promote")
def continuous(
    params_file: str = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None, force: bool = False
) -> dict[str, Any]:
    """One cycle; returns reports/promotion.json's content (or why nothing ran)."""
    from prefect.runtime import flow_run

    from recforge.cycle import should_run

    logger = get_run_logger()
    params = load_params(params_file, check_run(params_file, overrides))
    run = f"prefect:{flow_run.id}"
    go, why = should_run(params)
    if not go and not force:
        create_markdown_artifact(f"# Nothing to do\n\n{why}\n", key="not-promoted", description=why)
        return {"promoted": False, "ran": False, "reason": why}
    logger.info("cycle: %s", why)
    with workspace_lock(params.paths.cache_dir), task_runner(params) as runner:

        def record(label: str, future) -> None:
            future.wait()
            future.result()  # a failed stage fails the run

        for stage in (*STAGE_ORDER, *LOOP_STAGES[:-1]):
            _run_stage(runner, params, stage, force=force or stage in LOOP_STAGES, record=record)
            if stage == "validate":
                _publish_validation(params, failed=False)
        from recforge.stages.promote import run_promote

        result = run_promote(params, run=run)
    blessing = read_json(Path(params.paths.reports_dir) / "blessing.json")
    text = (Path(params.paths.reports_dir) / "blessing.md").read_text()
    if result["promoted"]:
        create_markdown_artifact(text, key="promoted", description=f"promoted {result['tag']}")
    else:
        create_markdown_artifact(
            f"# Not promoted\n\n{result['reason']}\n\n{text}",
            key="not-promoted",
            description=f"{blessing['decision']}: {result['reason']}"[:500],
        )
    logger.info("cycle: %s", "promoted" if result["promoted"] else f"not promoted ({result['reason']})")
    return {**result, "ran": True}
