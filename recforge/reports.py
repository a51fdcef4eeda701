"""Markdown for reports, benchmark tables and Prefect artifacts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def markdown_table(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, floatfmt: str | None = ".4f") -> str:
    """A GitHub markdown table of ``rows`` (a frame, or dicts sharing the first one's keys), ending in a newline.

    Floats are written with ``floatfmt`` (None: ``str``), None as an empty
    cell; ``|`` inside a cell is escaped and line breaks become spaces, so a
    cell never breaks the table. No rows and no columns: ``(no rows)``.
    """
    if isinstance(rows, pd.DataFrame):
        columns = [str(c) for c in rows.columns]
        records = [list(record.values()) for record in rows.to_dict("records")]
    else:
        columns = [str(c) for c in rows[0]] if rows else []
        records = [[row.get(c) for c in rows[0]] for row in rows]
    if not columns:
        return "(no rows)\n"
    lines = ["| " + " | ".join(_escape(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(v, floatfmt) for v in record) + " |" for record in records]
    return "\n".join(lines) + "\n"


def _cell(value: Any, floatfmt: str | None) -> str:
    if value is None:
        return ""
    if floatfmt is not None and isinstance(value, (float, np.floating)):
        return format(value, floatfmt)
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")
