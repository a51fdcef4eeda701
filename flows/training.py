"""Prefect flows over the recforge stages: ``training``, ``batch_recommend``.

The flows are a thin layer over the stage table (``recforge.stages.STAGES``):
each task runs one stage, or one variant of it (one recommender of ``train``,
one encoder of ``encode``), through ``Stage.run(params, variant)``. What
Prefect adds:

- retries for failures that can be transient (I/O, a lost Dask worker); a
  ``RecforgeError`` (bad data, bad params, failed validation) is not retried;
- caching keyed on the stage's inputs (``flows.cache.stage_key``: the params
  keys, input paths and code the stage table lists, as dvc.yaml does), so an
  unchanged stage is skipped; a stamp next to the outputs makes sure a cached
  result is only used while the outputs it wrote are still on disk;
- artifacts: the validation summary and the metrics table;
- ``orchestration.runner: dask`` fits the recommenders (and encoders) in
  parallel on a Dask cluster through prefect-dask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import get_state_exception

from flows.cache import stage_key, stamp_valid, write_stamp
from flows.inputs import check_batch, check_run
from flows.runners import task_runner
from recforge.errors import RecforgeError, ValidationFailed
from recforge.locking import workspace_lock
from recforge.params import DEFAULT_PARAMS_FILE, Params, load_params
from recforge.reports import markdown_table
from recforge.stages import STAGE_ORDER, get_stage

# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _forward_logs(logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Send the stage's ``recforge`` log records to the Prefect run logger for the task's duration."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logger.log(record.levelno, "%s: %s", record.name, record.getMessage())

    handler = Forward(level=logging.INFO)
    targets = [logging.getLogger("recforge"), logging.getLogger("recforge_plugins")]
    saved = [target.level for target in targets]
    for target in targets:
        target.addHandler(handler)
        if target.level in (logging.NOTSET,) or target.level > logging.INFO:
            target.setLevel(logging.INFO)
    try:
        yield
    finally:
        for target, level in zip(targets, saved, strict=True):
            target.removeHandler(handler)
            target.setLevel(level)


def _transient(task, task_run, state) -> bool:
    """Retry unless the failure is the user's (a RecforgeError: bad data, params, validation)."""
    try:
        error = get_state_exception(state)
    except Exception:
        return True
    return not isinstance(error, RecforgeError)


def _cache_key(context, parameters: dict[str, Any]) -> str:
    return str(parameters["key"])


def _publish_validation(params: Params, failed: bool) -> None:
    """The validation report (reports/validation.md) as a markdown artifact."""
    report = Path(params.paths.reports_dir) / "validation.md"
    if not report.exists():
        return
    header = "# Data validation FAILED\n\n" if failed else ""
    create_markdown_artifact(
        header + report.read_text(),
        key="validation-report",
        description="Great Expectations gate: " + ("failed" if failed else "passed"),
    )


# ---------------------------------------------------------------- tasks


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
    cache_key_fn=_cache_key,
    persist_result=True,
    result_serializer="json",
)
def run_stage(stage: str, params: dict[str, Any], key: str, variant: str | None = None) -> dict[str, Any]:
    """Run one stage, or one ``variant`` of it (one recommender of train, one encoder of encode)."""
    logger = get_run_logger()
    settings = Params.model_validate(params)
    started = time.perf_counter()
    logger.info("stage %s%s starting", stage, f" ({variant})" if variant else "")
    with _forward_logs(logger):
        try:
            get_stage(stage).run(settings, variant)
        except ValidationFailed:
            _publish_validation(settings, failed=True)
            raise
    if get_stage(stage).dvc:
        write_stamp(settings, stage, key, variant)
    seconds = round(time.perf_counter() - started, 3)
    logger.info("stage %s done in %.2fs", stage, seconds)
    return {"stage": stage, "variant": variant, "seconds": seconds, "key": key}


# ---------------------------------------------------------------- flows


def _submit(runner, params: Params, stage: str, *, force: bool, variant: str | None = None):
    """Submit one stage (or variant); a stale stamp (outputs missing or from other inputs) forces a re-run."""
    key = stage_key(params, stage, variant)
    cached = get_stage(stage).dvc  # package writes outside the workspace: always run
    fresh = force or not cached or not stamp_valid(params, stage, key, variant)
    configured = run_stage.with_options(
        name=f"{stage}-{variant}" if variant else stage,
        refresh_cache=fresh,
        cache_key_fn=_cache_key if cached else None,
    )
    parameters = {"stage": stage, "params": params.to_dict(), "key": key, "variant": variant}
    if runner is None:
        return configured.submit(**parameters)
    return runner.submit(configured, parameters=parameters)


def _run_stage(runner, params: Params, stage: str, *, force: bool, record) -> None:
    """A stage's variants in parallel on ``runner``; then the whole stage, unless dvc.yaml
    splits it into one stage per variant (train) so the variants are the stage."""
    spec = get_stage(stage)
    variants = spec.variant_names(params)
    parallel = spec.foreach or len(variants) > 1
    if parallel and (spec.foreach or force or not stamp_valid(params, stage, stage_key(params, stage))):
        futures = {
            f"{stage}-{v}": _submit(runner, params, stage, force=force or not spec.foreach, variant=v) for v in variants
        }
        for label, future in futures.items():
            record(label, future)
    if not spec.foreach:
        record(stage, _submit(None, params, stage, force=force))


def metrics_rows(metrics: dict[str, dict], k: int) -> list[dict[str, Any]]:
    """One row per model: the test metrics at ``k`` and the validation NDCG@k."""
    rows = []
    for name, values in metrics.items():
        row: dict[str, Any] = {"model": name}
        for metric in ("ndcg", "recall", "mrr", "map", "coverage"):
            value = values.get(f"{metric}@{k}")
            row[f"{metric}@{k}"] = None if value is None else round(float(value), 4)
        row["users"] = values.get("users")
        val = values.get("val", {}).get(f"ndcg@{k}")
        row[f"val ndcg@{k}"] = None if val is None else round(float(val), 4)
        rows.append(row)
    return rows


@flow(name="training", description="ingest -> validate -> split -> encode -> fit -> rerank -> evaluate [-> package]")
def training(
    params_file: str = DEFAULT_PARAMS_FILE,
    overrides: list[str] | None = None,
    package: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run the recforge pipeline as Prefect tasks.

    ``params_file`` plus ``overrides`` (``section.key=value``, as ``-S``) give
    the params. ``package`` adds the BentoML packaging stage when it exists.
    ``force`` ignores cached stage results. Returns the metrics and, per
    stage, whether it ran or was served from the cache.
    """
    logger = get_run_logger()
    params = load_params(params_file, check_run(params_file, overrides))
    logger.info("params %s, overrides %s, runner %s", params_file, overrides or [], params.orchestration.runner)
    states: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def record(label: str, future) -> None:
        future.wait()
        state = future.state
        states[label] = state.name
        if state.is_completed():
            seconds[label] = future.result().get("seconds", 0.0)
        else:
            future.result()  # raises the task's error: the flow run fails

    with workspace_lock(params.paths.cache_dir), task_runner(params) as runner:
        for stage in STAGE_ORDER + (["package"] if package else []):
            _run_stage(runner, params, stage, force=force, record=record)
            if stage == "validate":
                _publish_validation(params, failed=False)

    metrics = json.loads(Path(params.paths.metrics_file).read_text())
    k = params.evaluate.k
    rows = metrics_rows(metrics, k)
    create_table_artifact(
        rows, key="metrics", description=f"test metrics at K={k} (validation NDCG in the last column)"
    )
    stage_rows = [{"stage": label, "state": states[label], "seconds": seconds.get(label)} for label in states]
    create_markdown_artifact(
        f"# recforge training\n\n## Test metrics (K={k})\n\n{markdown_table(rows, floatfmt=None)}\n\n"
        f"## Stages\n\n{markdown_table(stage_rows, floatfmt=None)}\n",
        key="training-summary",
        description="metrics table and which stages ran or came from the cache",
    )
    return {"metrics": metrics, "stages": states, "seconds": seconds}


@task(retries=1, retry_delay_seconds=2, retry_condition_fn=_transient)
def recommend_all(params: dict[str, Any], model: str, k: int, output: str, batch_users: int) -> dict[str, Any]:
    """Top-``k`` for every known user from the ``full`` model, written to one Parquet file."""
    from recforge.batch import recommend_all as write_all

    with _forward_logs(get_run_logger()):
        return write_all(Params.model_validate(params), model, k, output, batch_users)


@flow(name="batch_recommend", description="top-K for every user from a trained model, to Parquet")
def batch_recommend(
    params_file: str = DEFAULT_PARAMS_FILE,
    overrides: list[str] | None = None,
    model: str | None = None,
    k: int = 10,
    output: str | None = None,
    batch_users: int = 10_000,
) -> dict[str, Any]:
    """Write ``<recs_dir>/batch/<model>.parquet`` (user_id, item_id, rank, score; original ids).

    ``model`` defaults to ``serve.model`` or the first configured recommender.
    """
    params = load_params(params_file, check_run(params_file, overrides))
    check_batch(k, batch_users, output, params.paths.recs_dir)
    from recforge.batch import batch_model, default_output

    name = batch_model(params, model)
    target = output or default_output(params, name)
    summary = recommend_all(params.to_dict(), name, k, target, batch_users)
    create_markdown_artifact(
        f"# batch recommendations\n\n{markdown_table([summary], floatfmt=None)}\n",
        key="batch-recommend",
        description=f"top-{k} for all users from {name}",
    )
    return summary
