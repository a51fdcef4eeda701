"""Data spans: new events arrive as files in one directory, read in name order after the base data.

A span is one CSV or Parquet file of interactions in ``data.spans`` (default
``data/spans``), named so that name order is time order (``2024-01.csv``,
``0003.parquet``). Its columns are those the configured loader reads: the
canonical ``user_id, item_id, timestamp[, rating]``, ``data.column_map`` for
``table`` data, MovieLens' ``userId, movieId, rating, timestamp`` for
``movielens-*`` data. Items come from the base data's catalogue (the gate
reports a span event whose item is not in it).

``recforge data add-span FILE`` checks the file (name, size, that it loads and
holds events) and copies it in atomically (a temporary sibling, checked, then
renamed; a span is never rewritten: the same name with other content is an
error). Ingest reads the base data plus every span but the newest
``data.spans_held_out`` (the blessing's evaluation data, recforge.blessing) and
writes ``spans.json`` beside the canonical tables: the spans they hold and
those held out, each with name, sha256, event count and time range.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recforge.artifacts import atomic_path, read_json, sha256_file
from recforge.errors import RecforgeError
from recforge.params import Params

SPAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(csv|parquet)")
MAX_SPAN_BYTES = 1 << 30  # 1 GiB per span file
MAX_SPANS = 10_000
MANIFEST = "spans.json"
MOVIELENS_COLUMNS = {"user_id": "userId", "item_id": "movieId"}


@dataclass(frozen=True)
class SpanRecord:
    """What ingest records about one span."""

    name: str
    sha256: str
    events: int
    time_min: int | None
    time_max: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_span_name(name: str) -> str:
    """A span name becomes a file name: 1-100 letters, digits, ``.``, ``_``, ``-`` then ``.csv``/``.parquet``."""
    if not isinstance(name, str) or not SPAN_NAME.fullmatch(name) or ".." in name:
        raise RecforgeError(
            f"span name {name!r}: use letters, digits, '.', '_' or '-' (at most 100, no '..'), "
            "ending in .csv or .parquet"
        )
    return name


def span_dir(params: Params) -> Path:
    return Path(params.data.spans)


def span_files(params: Params) -> list[Path]:
    """Every span file in name order (staging left by a killed writer is skipped; other names are errors)."""
    root = span_dir(params)
    if not root.exists():
        return []
    if not root.is_dir():
        raise RecforgeError(f"data.spans: {root} is not a directory")
    names = sorted(entry.name for entry in root.iterdir() if not entry.name.startswith("."))
    if len(names) > MAX_SPANS:
        raise RecforgeError(f"{root}: {len(names)} spans, more than {MAX_SPANS}; merge old spans into the base data")
    for name in names:
        check_span_name(name)
        path = root / name
        if path.is_symlink() or not path.is_file():
            raise RecforgeError(f"{path}: a span must be a regular file")
    return [root / name for name in names]


def partition(params: Params) -> tuple[list[Path], list[Path]]:
    """(the spans ingest reads, the newest ``data.spans_held_out`` it holds out), each in name order."""
    files = span_files(params)
    held = params.data.spans_held_out
    cut = max(0, len(files) - held)
    return files[:cut], files[cut:]


def _column_map(params: Params) -> dict[str, str]:
    if params.data.format == "table":
        return {k: v for k, v in params.data.column_map.items() if k in ("user_id", "item_id", "timestamp", "rating")}
    if params.data.format.startswith("movielens"):
        return dict(MOVIELENS_COLUMNS)
    return {}


def read_span(path: Path, params: Params) -> pd.DataFrame:
    """The span's interactions (user_id, item_id, timestamp[, rating]) as the configured loader names them."""
    from recforge.data.loaders import load

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise RecforgeError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_SPAN_BYTES:
        raise RecforgeError(f"{path}: {size:,} bytes, more than the {MAX_SPAN_BYTES:,} a span may hold; split it")
    if path.suffix not in (".csv", ".parquet"):
        raise RecforgeError(f"{path}: a span is a .csv or .parquet file")
    data = params.data.model_copy(
        update={"format": "table", "path": str(path), "column_map": _column_map(params), "items_path": None}
    )
    frame = load(data).interactions
    if frame.empty:
        raise RecforgeError(f"{path}: no events")
    return frame.reset_index(drop=True)


def describe(name: str, path: Path, frame: pd.DataFrame) -> SpanRecord:
    times = pd.to_numeric(frame["timestamp"], errors="coerce").dropna()
    return SpanRecord(
        name=name,
        sha256=sha256_file(path),
        events=int(len(frame)),
        time_min=int(times.min()) if len(times) else None,
        time_max=int(times.max()) if len(times) else None,
    )


def add_span(params: Params, file: str | Path, name: str | None = None) -> tuple[SpanRecord, bool]:
    """Check ``file`` and copy it into ``data.spans`` as ``name`` (default: its file name), atomically.

    Returns (its record, whether it was added: False when the same content is there already).
    """
    source = Path(file)
    if not source.exists():
        raise RecforgeError(f"{source}: file not found")
    name = check_span_name(name or source.name)
    if Path(name).suffix != source.suffix:
        raise RecforgeError(f"span name {name!r}: keep the file's suffix ({source.suffix})")
    frame = read_span(source, params)  # raises on a file the loader cannot read
    record = describe(name, source, frame)
    dest = span_dir(params) / name
    if dest.exists():
        if sha256_file(dest) == record.sha256:
            return record, False
        raise RecforgeError(f"{dest}: a span of that name holds other events; spans are never rewritten")
    newer = [path.name for path in span_files(params) if path.name > name]
    if newer:
        raise RecforgeError(
            f"span {name!r} sorts before {newer[0]!r}, which is there already; spans are read in name order: "
            "name it so it sorts last"
        )
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
        if sha256_file(tmp) != record.sha256:
            raise RecforgeError(f"{source}: changed while it was copied; add it again")
    return record, True


def with_spans(raw: Any, params: Params) -> tuple[Any, list[SpanRecord], list[SpanRecord]]:
    """The base ``raw`` tables with the read spans' events appended; (tables, read records, held-out records)."""
    from dataclasses import replace

    used, held = partition(params)
    frames, records = [], []
    for path in used:
        frame = read_span(path, params)
        frames.append(frame)
        records.append(describe(path.name, path, frame))
    held_records = [describe(path.name, path, read_span(path, params)) for path in held]
    if not frames:
        return raw, records, held_records
    base = raw.interactions
    columns = list(base.columns)
    extra = [frame.reindex(columns=columns) for frame in frames]
    if "rating" not in base:
        extra = [frame.drop(columns=["rating"], errors="ignore") for frame in extra]
    interactions = pd.concat([base, *extra], ignore_index=True)
    return replace(raw, interactions=interactions), records, held_records


def with_held_out(raw: Any, params: Params) -> Any:
    """``raw`` plus the held-out spans' events: what the gate checks (the evaluation data is gated too)."""
    from dataclasses import replace

    _, held = partition(params)
    if not held:
        return raw
    frames = [read_span(path, params).reindex(columns=list(raw.interactions.columns)) for path in held]
    return replace(raw, interactions=pd.concat([raw.interactions, *frames], ignore_index=True))


def write_manifest(directory: Path, read: list[SpanRecord], held: list[SpanRecord]) -> None:
    """``spans.json`` in the canonical tables' (staging) directory."""
    import json

    body = {"spans": [r.to_dict() for r in read], "held_out": [r.to_dict() for r in held]}
    (Path(directory) / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")


def read_manifest(params: Params) -> dict[str, list[dict[str, Any]]]:
    """The spans the canonical tables hold and those held out (empty lists before any span)."""
    path = Path(params.paths.canonical_dir) / MANIFEST
    if not path.exists():
        return {"spans": [], "held_out": []}
    body = read_json(path)
    return {"spans": list(body.get("spans", [])), "held_out": list(body.get("held_out", []))}
