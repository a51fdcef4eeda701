"""Drift and skew of each new span against the reference: the data the production model was trained on.

Ingest's gate (recforge.stages.ingest) runs :func:`drift_checks` on every span
that production has not been trained on (every span before the first
promotion). The reference is the production package's train+val history
(``history.npz``, original ids through its id maps); with no production model
yet, it is the base data plus the spans before the one checked. Six statistics,
each over the span's events (thresholds ``validate.drift.<name>``; a value at
or above ``warn`` is a warning in reports/validation.md, at or above ``fail``
stops the run):

- ``unknown_users``: share of events from users the reference has no event of;
- ``unknown_items``: share of events on items the reference has no event on;
- ``rating_psi``: population stability index of the ratings,
  sum((s - r) * ln(s / r)) over the reference's rating values (or 10 quantile
  bins when it has more than 20 values), shares floored at 1e-4;
- ``events_per_user``: fold change max(x, 1/x) of the span's events per user
  against the reference's;
- ``predating``: share of events older than the reference's last event;
- ``duplicates``: share of events whose (user, item, timestamp) is in the
  reference or earlier in the span.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.params import DriftParams, Params
from recforge.validation import Check

log = logging.getLogger(__name__)

STATISTICS = ("unknown_users", "unknown_items", "rating_psi", "events_per_user", "predating", "duplicates")
PSI_FLOOR = 1e-4
MAX_RATING_VALUES = 20


@dataclass
class Reference:
    """What a span is compared with."""

    source: str
    users: pd.Index
    items: pd.Index
    ratings: np.ndarray | None
    events_per_user: float
    last_timestamp: int
    keys: np.ndarray  # hashes of (user, item, timestamp), sorted

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str) -> Reference:
        ratings = None
        if "rating" in frame:
            ratings = pd.to_numeric(frame["rating"], errors="coerce").dropna().to_numpy(np.float64)
        n_users = max(1, frame["user_id"].nunique())
        return cls(
            source=source,
            users=pd.Index(frame["user_id"].dropna().unique()),
            items=pd.Index(frame["item_id"].dropna().unique()),
            ratings=ratings,
            events_per_user=len(frame) / n_users,
            last_timestamp=int(pd.to_numeric(frame["timestamp"], errors="coerce").max()) if len(frame) else 0,
            keys=np.sort(_keys(frame)),
        )

    @classmethod
    def from_package(cls, directory: str | Path, source: str) -> Reference:
        """The production package's train+val history (what its models were fitted on)."""
        from recforge.packaging import Package

        package = Package.open(directory, verify=False)
        events = package.events()
        frame = pd.DataFrame(
            {
                "user_id": package.maps.user_ids.to_numpy()[events.user_ids],
                "item_id": package.maps.item_ids.to_numpy()[events.item_ids],
                "timestamp": events.timestamps,
            }
        )
        if events.ratings is not None:
            frame["rating"] = events.ratings.astype(np.float64)
        return cls.from_frame(frame, source)


def _keys(frame: pd.DataFrame) -> np.ndarray:
    if frame.empty:
        return np.zeros(0, dtype=np.uint64)
    columns = frame[["user_id", "item_id", "timestamp"]].copy()
    columns["timestamp"] = pd.to_numeric(columns["timestamp"], errors="coerce").astype("Int64")
    for column in ("user_id", "item_id"):  # 5.0 from a float column with gaps is the id 5
        values = columns[column]
        if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
            columns[column] = values.astype("Int64")
    return pd.util.hash_pandas_object(columns, index=False).to_numpy(np.uint64)


def psi(reference: np.ndarray, sample: np.ndarray) -> float:
    """Population stability index of ``sample`` against ``reference`` (see the module docstring)."""
    if len(reference) == 0 or len(sample) == 0:
        return 0.0
    values = np.unique(reference)
    if len(values) <= MAX_RATING_VALUES:
        ref_bins = np.searchsorted(values, reference)
        positions = np.searchsorted(values, sample).clip(0, len(values) - 1)
        known = values[positions] == sample
        sample_bins = np.where(known, positions, len(values))  # a value the reference never had: its own bin
        n_bins = len(values) + 1
    else:
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1]))
        ref_bins, sample_bins = np.searchsorted(edges, reference), np.searchsorted(edges, sample)
        n_bins = len(edges) + 1
    r = np.maximum(np.bincount(ref_bins, minlength=n_bins) / len(reference), PSI_FLOOR)
    s = np.maximum(np.bincount(sample_bins, minlength=n_bins) / len(sample), PSI_FLOOR)
    return float(np.sum((s - r) * np.log(s / r)))


def statistics(span: pd.DataFrame, reference: Reference) -> dict[str, float | None]:
    """The six statistics of ``span`` against ``reference`` (None where they do not apply: no ratings)."""
    n = max(1, len(span))
    times = pd.to_numeric(span["timestamp"], errors="coerce").to_numpy(np.float64)
    keys = _keys(span)
    seen = np.isin(keys, reference.keys)
    repeated = pd.Series(keys).duplicated().to_numpy()
    per_user = len(span) / max(1, span["user_id"].nunique())
    ratio = per_user / reference.events_per_user if reference.events_per_user else 1.0
    rating_psi = None
    if reference.ratings is not None and "rating" in span and len(reference.ratings):
        rating_psi = psi(reference.ratings, pd.to_numeric(span["rating"], errors="coerce").dropna().to_numpy())
    return {
        "unknown_users": float((~span["user_id"].isin(reference.users)).sum() / n),
        "unknown_items": float((~span["item_id"].isin(reference.items)).sum() / n),
        "rating_psi": rating_psi,
        "events_per_user": float(max(ratio, 1.0 / ratio)) if ratio > 0 else float("inf"),
        "predating": float((times < reference.last_timestamp).sum() / n),
        "duplicates": float((seen | repeated).sum() / n),
    }


def span_checks(name: str, span: pd.DataFrame, reference: Reference, drift: DriftParams) -> list[Check]:
    """One Check per statistic: failed at or above ``fail``; a warning at or above ``warn``."""
    checks = []
    for statistic, value in statistics(span, reference).items():
        if value is None:
            continue
        limits = getattr(drift, statistic)
        check = Check(
            table=f"span {name} (drift vs {reference.source})",
            expectation=f"drift.{statistic}",
            kwargs={"value": round(value, 4), "warn": limits.warn, "fail": limits.fail},
            success=value < limits.fail,
        )
        check.warning = check.success and value >= limits.warn
        checks.append(check)
    return checks


def drift_checks(params: Params, base: pd.DataFrame) -> list[Check]:
    """Every new span (read or held out by ingest) against the reference; ``base``: the base data's events."""
    from recforge import production
    from recforge.spans import read_span, span_files

    drift = params.validate_.drift
    files = span_files(params)
    if not drift.enabled or not files:
        return []
    version = production.current_version(params)
    frames = {path.name: read_span(path, params) for path in files}
    checks: list[Check] = []
    if version is not None:
        trained = set(version.get("spans") or [])
        reference = Reference.from_package(version["package_path"], "production")
        for name, frame in frames.items():
            if name not in trained:
                checks += span_checks(name, frame, reference, drift)
        return checks
    before = [base]
    for name, frame in frames.items():  # no production yet: each span against what precedes it
        reference = Reference.from_frame(pd.concat(before, ignore_index=True), "earlier data")
        checks += span_checks(name, frame, reference, drift)
        before.append(frame)
    return checks


RECORD = "drift.json"


def write_record(directory: Path, checks: list[Check]) -> None:
    """The drift checks of the spans the canonical tables hold, beside them (the validate stage reports them)."""
    import json

    rows = [check.__dict__ for check in checks if check.expectation.startswith("drift.")]
    (Path(directory) / RECORD).write_text(json.dumps(rows, indent=2) + "\n")


def recorded_checks(params: Params) -> list[Check]:
    """The drift checks ingest recorded (all passed; warnings kept), so the validate stage's report keeps them."""
    from recforge.artifacts import read_json

    path = Path(params.paths.canonical_dir) / RECORD
    return [Check(**row) for row in read_json(path)] if path.exists() else []
