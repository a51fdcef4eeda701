"""The data gate: Great Expectations 1.x suites derived from the schema and params.

Runs in an ephemeral GX context (nothing written under gx/). The gate checks the
raw loaded tables (so filtering cannot hide null ids or unknown items) and the
prepared tables (minimum interactions per user, non-empty text). The report is
written as JSON and Markdown; on failure ``ValidationFailed`` stops the run
before any downstream output is written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recforge.artifacts import write_json, write_text
from recforge.data.loaders import Tables
from recforge.errors import ValidationFailed
from recforge.params import Params
from recforge.reports import markdown_table

log = logging.getLogger(__name__)


@dataclass
class Check:
    table: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)

    def line(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("batch_id", "value_set"))
        text = f"{self.table}: {self.expectation}({args})"
        if self.unexpected_count:
            text += f" — {self.unexpected_count} unexpected, e.g. {self.examples}"
        return text


@dataclass
class Report:
    checks: list[Check]

    @property
    def success(self) -> bool:
        return all(check.success for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.success]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "evaluated": len(self.checks),
            "failed": len(self.failed),
            "checks": [check.__dict__ for check in self.checks],
        }

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation: {status}", "", f"{len(self.checks)} expectations, {len(self.failed)} failed.", ""]
        rows = [
            {
                "table": c.table,
                "expectation": c.expectation,
                "arguments": ", ".join(f"{k}={v}" for k, v in c.kwargs.items() if k not in ("batch_id", "value_set")),
                "result": "ok" if c.success else "**FAILED**",
                "unexpected": c.unexpected_count or "",
                "examples": ", ".join(map(str, c.examples)),
            }
            for c in self.checks
        ]
        return "\n".join(lines) + "\n" + markdown_table(rows, floatfmt=None)


def _seconds(date: str) -> int:
    return int(pd.Timestamp(date, tz="UTC").timestamp())


def raw_suites(tables: Tables, params: Params) -> dict[str, tuple[pd.DataFrame, list]]:
    """Expectations on the tables as loaded: schema, nulls, ranges, references."""
    import great_expectations as gx

    E = gx.expectations
    v = params.validate_
    inter = tables.interactions
    suites: dict[str, tuple[pd.DataFrame, list]] = {}
    checks = [E.ExpectTableRowCountToBeBetween(min_value=1)]
    checks += [E.ExpectColumnToExist(column=c) for c in ("user_id", "item_id", "timestamp")]
    for column in ("user_id", "item_id", "timestamp"):
        if column in inter:
            checks.append(E.ExpectColumnValuesToNotBeNull(column=column))
    if "rating" in inter:
        checks.append(E.ExpectColumnValuesToBeBetween(column="rating", min_value=v.rating_min, max_value=v.rating_max))
    if "timestamp" in inter:
        checks.append(
            E.ExpectColumnValuesToBeBetween(
                column="timestamp", min_value=_seconds(v.timestamp_min), max_value=_seconds(v.timestamp_max)
            )
        )
    if "item_id" in inter:
        known = tables.items["item_id"].dropna().unique().tolist()
        checks.append(E.ExpectColumnValuesToBeInSet(column="item_id", value_set=known))
    suites["interactions"] = (inter, checks)
    items = tables.items
    suites["items"] = (
        items,
        [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnToExist(column="item_id"),
            E.ExpectColumnValuesToNotBeNull(column="item_id"),
            E.ExpectColumnValuesToBeUnique(column="item_id"),
        ],
    )
    return suites


def prepared_suites(tables: Tables, params: Params) -> dict[str, tuple[pd.DataFrame, list]]:
    """Expectations after filtering: enough history per user, usable text."""
    import great_expectations as gx

    E = gx.expectations
    v = params.validate_
    counts = tables.interactions.groupby("user_id").size().rename("interactions").reset_index()
    suites = {
        "users (after filtering)": (
            counts,
            [
                E.ExpectTableRowCountToBeBetween(min_value=1),
                E.ExpectColumnValuesToBeBetween(column="interactions", min_value=v.min_interactions_per_user),
            ],
        )
    }
    if v.require_text:
        items = tables.items
        text = (items["title"].fillna("").astype(str) + " " + items["text"].fillna("").astype(str)).str.strip()
        frame = pd.DataFrame({"item_id": items["item_id"], "item_text": text})
        suites["items (text)"] = (frame, [E.ExpectColumnValueLengthsToBeBetween(column="item_text", min_value=1)])
    return suites


def run_suites(suites: dict[str, tuple[pd.DataFrame, list]], max_examples: int) -> list[Check]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    _quiet_progress(context)
    source = context.data_sources.add_pandas("recforge")
    results: list[Check] = []
    for index, (table, (frame, expectations)) in enumerate(suites.items()):
        asset = source.add_dataframe_asset(name=f"table_{index}")
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=f"recforge_{index}")
        for expectation in expectations:
            suite.add_expectation(expectation)
        outcome = batch.validate(
            suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": max_examples}
        )
        for item in outcome.results:
            result = item.result or {}
            examples = [_plain(x) for x in (result.get("partial_unexpected_list") or [])[:max_examples]]
            results.append(
                Check(
                    table=table,
                    expectation=item.expectation_config.type,
                    kwargs={k: _plain(v) for k, v in item.expectation_config.kwargs.items() if k != "batch_id"},
                    success=bool(item.success),
                    unexpected_count=result.get("unexpected_count"),
                    examples=examples,
                )
            )
    return results


def _quiet_progress(context) -> None:
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # older/newer GX without this knob: progress bars are cosmetic
        pass


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value][:20]
    return value


def write_report(report: Report, reports_dir: str | Path) -> Path:
    reports_dir = Path(reports_dir)
    write_json(report.to_dict(), reports_dir / "validation.json")
    write_text(report.to_markdown(), reports_dir / "validation.md")
    return reports_dir / "validation.json"


def gate(checks: list[Check], params: Params) -> Report:
    """Write the report; raise ``ValidationFailed`` listing each failed expectation."""
    report = Report(checks)
    path = write_report(report, params.paths.reports_dir)
    if not report.success:
        details = "; ".join(check.line() for check in report.failed)
        raise ValidationFailed(
            f"data validation failed ({len(report.failed)} expectations): {details} [report: {path}]", str(path)
        )
    log.info("validation passed: %d expectations", len(report.checks))
    return report
