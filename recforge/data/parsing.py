"""Parsing helpers of the loaders: reading CSV and JSON lines, numbers, timestamps and text.

Every helper raises ``RecforgeError`` naming the file (and the line, row or
column when known) for a value that does not parse; a missing value stays
missing for the data gate (recforge.validation) to report.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.errors import RecforgeError

# One JSON line (a review, an item's metadata) is at most this long: a file that is one
# endless line is refused before it is held in memory.
MAX_JSON_LINE_BYTES = 16 * 2**20
_INT64_MAX = float(np.iinfo(np.int64).max)


def _need(path: Path) -> Path:
    if not path.exists():
        raise RecforgeError(f"{path}: file not found")
    if not path.is_file():
        raise RecforgeError(f"{path}: not a file")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:300]


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(_need(path), **kwargs)
    except pd.errors.EmptyDataError:
        raise RecforgeError(f"{path}: empty file") from None
    except UnicodeDecodeError as exc:
        raise RecforgeError(
            f"{path}: not {kwargs.get('encoding', 'UTF-8')} text (byte {exc.object[exc.start : exc.start + 1]!r} "
            f"at offset {exc.start} of a read block)"
        ) from None
    except (ValueError, TypeError, OverflowError, OSError, MemoryError, IndexError) as exc:
        # ParserError and the C parser's errors are ValueErrors; they name the line themselves
        raise RecforgeError(f"{path}: malformed file ({_first_line(exc)})") from None


def _read_fields(path: Path, names: list[str], **kwargs) -> pd.DataFrame:
    """A headerless file with exactly ``len(names)`` fields per line (an extra field is an error, not an index)."""
    frame = _read_csv(path, header=None, **kwargs)
    if frame.shape[1] != len(names):
        raise RecforgeError(
            f"{path}: expected {len(names)} fields per line ({', '.join(names)}), found {frame.shape[1]}"
        )
    frame.columns = names
    return frame


def _require_columns(frame: pd.DataFrame, columns: list[str], source: Path | str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:20])) + (", ..." if len(frame.columns) > 20 else "")
        raise RecforgeError(f"{source}: missing column(s) {', '.join(missing)} (found: {found})")


def _where(source: Path | str, column: str, position: int, lines: list[int] | None) -> str:
    """``file:line`` for line-oriented files, else the data row (1-based, after any header)."""
    if lines is not None:
        return f"{source}:{lines[position]}: {column}"
    return f"{source}: data row {position + 1}, column {column}"


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(column: pd.Series, source: Path | str, name: str, lines: list[int] | None = None) -> pd.Series:
    """Float values of a numeric column; missing values stay NaN, anything else that is not a number is an error."""
    if _is_number_dtype(column):
        return column.astype(float)
    values = pd.Series(column.to_numpy(dtype=object), index=column.index)
    bad_type = values.map(_not_scalar)
    parsed = pd.to_numeric(values.where(~bad_type), errors="coerce").astype(float)
    bad = (values.notna() & parsed.isna()) | bad_type
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise RecforgeError(f"{_where(source, name, position, lines)}: not a number: {_show(values.iloc[position])}")
    return parsed


def _is_number_dtype(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _not_scalar(value) -> bool:
    """True for what JSON gives that is no number or date: booleans, lists, objects."""
    return isinstance(value, (bool, np.bool_, list, dict))


def _to_seconds(column: pd.Series, source: Path | str, name: str = "timestamp", lines: list[int] | None = None):
    """Integer Unix seconds from numbers or dates; a missing value stays missing (nullable Int64) for the gate."""
    if pd.api.types.is_integer_dtype(column) and not pd.api.types.is_bool_dtype(column):
        limit = np.iinfo(np.int64).max  # an int: compared as float, 2**63 .. 2**63 + 1023 passed and wrapped
        if column.dtype == np.uint64 and len(column) and column.max() > limit:
            position = int(np.flatnonzero(column.to_numpy() > limit)[0])
            raise RecforgeError(f"{_where(source, name, position, lines)}: timestamp out of range")
        return column.astype(np.int64 if not column.hasnans else "Int64")
    if pd.api.types.is_datetime64_any_dtype(column):
        seconds = _datetime_seconds(pd.to_datetime(column, utc=True))
    else:
        values = column if pd.api.types.is_float_dtype(column) else None
        if values is None:
            raw = pd.Series(column.to_numpy(dtype=object), index=column.index)
            bad_type = raw.map(_not_scalar)
            if bad_type.any():
                position = int(np.flatnonzero(bad_type.to_numpy())[0])
                raise RecforgeError(
                    f"{_where(source, name, position, lines)}: neither a number nor a date: {_show(raw.iloc[position])}"
                )
            numeric = pd.to_numeric(raw, errors="coerce")
            if not (raw.notna() & numeric.isna()).any():
                values = numeric.astype(float)
        if values is not None:
            finite = values.isna() | (np.isfinite(values) & (values.abs() < _INT64_MAX))
            if not finite.all():
                position = int(np.flatnonzero(~finite.to_numpy())[0])
                raise RecforgeError(
                    f"{_where(source, name, position, lines)}: timestamp out of range: {_show(values.iloc[position])}"
                )
            seconds = values
        else:
            seconds = _date_seconds(raw, source, name, lines)
    if pd.api.types.is_float_dtype(seconds):
        seconds = np.trunc(seconds)  # fractions of a second dropped, as astype(int64) does
    if seconds.isna().any():
        return seconds.astype("Int64")
    return seconds.astype(np.int64)


def _datetime_seconds(parsed: pd.Series) -> pd.Series:
    return (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)


def _date_seconds(raw: pd.Series, source: Path | str, name: str, lines: list[int] | None) -> pd.Series:
    try:
        return _datetime_seconds(pd.to_datetime(raw, utc=True)).astype(float)
    except (ValueError, TypeError, OverflowError):
        pass
    try:
        coerced = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError):
        coerced = pd.Series(pd.NaT, index=raw.index)
    bad = raw.notna() & coerced.isna()
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise RecforgeError(
            f"{_where(source, name, position, lines)}: neither a number nor a date: {_show(raw.iloc[position])}"
        )
    raise RecforgeError(f"{source}: {name} column mixes date formats or time zones; give Unix seconds or ISO dates")


def _text(column: pd.Series) -> pd.Series:
    """Text cells: missing -> '', anything else as a string (a number, a JSON list)."""
    return column.map(lambda v: v if isinstance(v, str) else ("" if _missing(v) else str(v))).astype(str)


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array is not missing
        return False


def _json_rows(path: Path) -> tuple[list[dict], list[int]]:
    """The objects of a JSON-lines file (optionally gzipped) and the line number of each."""
    _need(path)
    rows: list[dict] = []
    line_numbers: list[int] = []
    line_no = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            while True:
                raw = handle.readline(MAX_JSON_LINE_BYTES + 1)
                if not raw:
                    break
                line_no += 1
                if len(raw) > MAX_JSON_LINE_BYTES:
                    raise RecforgeError(f"{path}:{line_no}: line longer than {MAX_JSON_LINE_BYTES // 2**20} MiB")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise RecforgeError(
                        f"{path}:{line_no}: not UTF-8 (byte {raw[exc.start : exc.start + 1]!r} at column {exc.start + 1})"
                    ) from None
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.__class__.__name__
                    raise RecforgeError(f"{path}:{line_no}: malformed JSON line ({reason})") from None
                if not isinstance(value, dict):
                    raise RecforgeError(f"{path}:{line_no}: expected a JSON object, found {_json_kind(value)}")
                rows.append(value)
                line_numbers.append(line_no)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise RecforgeError(
            f"{path}: truncated or corrupt gzip file after line {line_no} ({_first_line(exc)})"
        ) from None
    except OSError as exc:
        raise RecforgeError(f"{path}: cannot read ({_first_line(exc)})") from None
    return rows, line_numbers


def _json_kind(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _json_frame(path: Path) -> tuple[pd.DataFrame, list[int]]:
    rows, lines = _json_rows(path)
    try:
        frame = pd.DataFrame.from_records(rows)
    except (ValueError, TypeError) as exc:
        raise RecforgeError(f"{path}: unusable JSON records ({_first_line(exc)})") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True), lines
