"""The data gate: Great Expectations 1.x suites derived from the schema and params.

Runs in an ephemeral GX context (nothing written under gx/). The gate checks the
raw loaded tables (so filtering cannot hide null ids or unknown items) and the
prepared tables (minimum interactions per user, non-empty text). The report is
written as JSON and Markdown; on failure ``ValidationFailed`` stops the run
before any downstream output is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.artifacts import write_json, write_text
from recforge.data.loaders import Tables
from recforge.errors import ValidationFailed
from recforge.params import Params, ValidateParams
from recforge.reports import markdown_table

log = logging.getLogger(__name__)

DAY = 86_400
PER_USER = "users (after filtering)"
PER_USER_TABLES = {PER_USER}
INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass
class Check:
    table: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # 1-based rows of the table as loaded (data rows of a CSV)
    warning: bool = False  # passed, but past a warning threshold (recforge.drift)

    def arguments(self) -> str:
        """The expectation's arguments, a long value set left out."""
        return ", ".join(
            f"{k}={v}"
            for k, v in self.kwargs.items()
            if k != "batch_id" and not (k == "value_set" and isinstance(v, list) and len(v) > 3)
        )

    def line(self) -> str:
        text = f"{self.table}: {self.expectation}({self.arguments()})"
        if self.unexpected_count:
            # no square brackets: the CLI prints with rich, which would read [inf] as markup
            text += f" — {self.unexpected_count} unexpected, e.g. {', '.join(map(repr, self.examples))}"
            if self.rows:
                text += f" at row{'s' if len(self.rows) > 1 else ''} {', '.join(map(str, self.rows))}"
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

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.success and check.warning]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "evaluated": len(self.checks),
            "failed": len(self.failed),
            "warnings": len(self.warnings),
            "checks": [check.__dict__ for check in self.checks],
        }

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation: {status}", "", f"{len(self.checks)} expectations, {len(self.failed)} failed.", ""]
        if self.warnings:
            lines += [f"**{len(self.warnings)} warnings:**", "", *(f"- {c.line()}" for c in self.warnings), ""]
        rows = [
            {
                "table": c.table,
                "expectation": c.expectation,
                "arguments": c.arguments(),
                "result": ("warning" if c.warning else "ok") if c.success else "**FAILED**",
                "unexpected": c.unexpected_count or "",
                "examples": ", ".join(map(str, c.examples)),
            }
            for c in self.checks
        ]
        return "\n".join(lines) + "\n" + markdown_table(rows, floatfmt=None)


def _seconds(date: str) -> int:
    stamp = pd.Timestamp(date)
    return int((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp())


def timestamp_bounds(v: ValidateParams, now: float | None = None) -> tuple[int, int]:
    """[min, max] Unix seconds: a null ``timestamp_max`` is now + the margin, rounded up to the next UTC midnight
    (so the report's bound changes once a day, not on every run)."""
    if v.timestamp_max is not None:
        return _seconds(v.timestamp_min), _seconds(v.timestamp_max)
    latest = (time.time() if now is None else now) + v.timestamp_margin_days * DAY
    return _seconds(v.timestamp_min), int(math.ceil(latest / DAY) * DAY)


def id_kinds(column: pd.Series) -> pd.Series:
    """Per id: ``int64`` (an integer that Parquet stores as int64), ``str``, or what is wrong with it
    (``int out of int64 range: 10**30``, ``float: 1.5``, ``list: [1]`` ...); a missing id stays missing
    (the not-null expectation reports it). Integral floats count as ``int64``: a CSV id column with a
    missing cell is read as floats."""
    if pd.api.types.is_bool_dtype(column):
        return column.map(lambda v: f"bool: {v!r}", na_action="ignore")
    if pd.api.types.is_integer_dtype(column):
        if column.dtype == np.uint64:
            values = column.to_numpy()
            return pd.Series(
                np.where(values > INT64_MAX, [f"int out of int64 range: {v}" for v in values], "int64"),
                index=column.index,
                dtype=object,
            )
        return pd.Series(np.where(column.isna(), None, "int64"), index=column.index, dtype=object)
    if pd.api.types.is_string_dtype(column) and not pd.api.types.is_object_dtype(column):
        return pd.Series(np.where(column.isna(), None, "str"), index=column.index, dtype=object)
    return pd.Series([_id_kind(v) for v in column.to_numpy(dtype=object)], index=column.index, dtype=object)


def _id_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bool, np.bool_)):
        return f"bool: {value!r}"
    if isinstance(value, (int, np.integer)):
        return "int64" if -INT64_MAX - 1 <= int(value) <= INT64_MAX else f"int out of int64 range: {_short(value)}"
    if isinstance(value, (float, np.floating)):
        if value != value:
            return None
        if math.isfinite(value) and float(value).is_integer() and abs(value) <= 2**63 - 1024:
            return "int64"
        return f"float: {_short(value)}"
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return f"{type(value).__name__}: {_short(value)}"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def id_type_frame(frame: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A frame of id kinds per column and, per column, the one kind its ids must all have (the more common of
    ``int64`` and ``str``): ids of one type that Parquet can store, before anything is written."""
    kinds = pd.DataFrame({c: id_kinds(frame[c]) for c in columns if c in frame}, index=frame.index)
    expected = []
    for column in kinds.columns:
        counts = kinds[column].value_counts()
        kind = "str" if counts.get("str", 0) > counts.get("int64", 0) else "int64"
        other = kinds[column].isin(["str", "int64"]) & (kinds[column] != kind)
        if other.any():  # the odd ones out, with their values: "str: u1" in an integer column
            values = frame.loc[other, column]
            kinds.loc[other, column] = [f"{k}: {_short(v)}" for k, v in zip(kinds.loc[other, column], values)]
        expected.append((column, kind))
    return kinds, expected


def raw_suites(tables: Tables, params: Params) -> dict[str, tuple[pd.DataFrame, list]]:
    """Expectations on the tables as loaded: schema, nulls, ranges, references."""
    import great_expectations as gx

    E = gx.expectations
    v = params.validate_
    inter = tables.interactions
    suites: dict[str, tuple[pd.DataFrame, list]] = {}
    checks = [E.ExpectTableRowCountToBeBetween(min_value=1)]
    checks += [E.ExpectColumnToExist(column=c) for c in ("user_id", "item_id", "timestamp")]
    for column in ("user_id", "item_id", "timestamp", "rating"):
        if column in inter:
            checks.append(E.ExpectColumnValuesToNotBeNull(column=column))
    if "rating" in inter:  # finite bounds (ValidateParams), so infinities fail too
        checks.append(E.ExpectColumnValuesToBeBetween(column="rating", min_value=v.rating_min, max_value=v.rating_max))
    if "timestamp" in inter:
        low, high = timestamp_bounds(v)
        checks.append(E.ExpectColumnValuesToBeBetween(column="timestamp", min_value=low, max_value=high))
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
    # id types before Parquet: all int64 or all strings per column (10**30 or a mix would crash the write)
    for table, frame in (("interactions", inter), ("items", items)):
        kinds, expected = id_type_frame(frame, ["user_id", "item_id"])
        if expected:
            suites[f"{table} (id types)"] = (
                kinds,
                [E.ExpectColumnValuesToBeInSet(column=c, value_set=[kind]) for c, kind in expected],
            )
    return suites


def prepared_suites(tables: Tables, params: Params) -> dict[str, tuple[pd.DataFrame, list]]:
    """Expectations after filtering: enough history per user, usable text."""
    import great_expectations as gx

    E = gx.expectations
    v = params.validate_
    counts = tables.interactions.groupby("user_id").size().rename("interactions").reset_index()
    suites = {
        PER_USER: (
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
    # this module sets its own level to INFO and logs a temporary docs directory per context
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
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
        # rows are shown where the frame's rows are the loaded table's (not the per-user counts)
        positional = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
        for item in outcome.results:
            result = item.result or {}
            examples = _unique(_plain(x) for x in (result.get("partial_unexpected_list") or []))
            rows = []
            if positional and table not in PER_USER_TABLES:
                rows = [int(i) + 1 for i in (result.get("partial_unexpected_index_list") or [])[:max_examples]]
            results.append(
                Check(
                    table=table,
                    expectation=item.expectation_config.type,
                    kwargs={k: _plain(v) for k, v in item.expectation_config.kwargs.items() if k != "batch_id"},
                    success=bool(item.success),
                    unexpected_count=result.get("unexpected_count"),
                    examples=examples[:max_examples],
                    rows=rows,
                )
            )
    return results


def _unique(values) -> list[Any]:
    """Values in first-seen order without repeats (lists included, so by repr)."""
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(repr(value), value)
    return list(seen.values())


def _quiet_progress(context) -> None:
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # older/newer GX without this knob: progress bars are cosmetic
        pass


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        with contextlib.suppress(ValueError, AttributeError):
            value = value.item()  # numpy scalar -> Python; a NaN among them still becomes None below
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


def gate(checks: list[Check], params: Params, source: str | Path | None = None) -> Report:
    """Write the report; raise ``ValidationFailed`` naming ``source`` (the data checked) and each failed
    expectation, on one line."""
    report = Report(checks)
    path = write_report(report, params.paths.reports_dir)
    if not report.success:
        details = "; ".join(check.line() for check in report.failed)
        where = f" for {source}" if source else ""
        raise ValidationFailed(
            f"data validation failed{where} ({len(report.failed)} expectations): {details} (report: {path})",
            str(path),
        )
    for check in report.warnings:
        log.warning("validation warning: %s", check.line())
    log.info("validation passed: %d expectations", len(report.checks))
    return report
