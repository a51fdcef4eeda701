"""ingest: load the configured format, gate the raw tables, filter, write canonical Parquet."""

from __future__ import annotations

import logging
from pathlib import Path

from recforge.artifacts import atomic_dir
from recforge.data.loaders import load, prepare
from recforge.drift import drift_checks, write_record
from recforge.params import Params
from recforge.spans import with_held_out, with_spans, write_manifest
from recforge.validation import gate, prepared_suites, raw_suites, run_suites

log = logging.getLogger(__name__)


def run_ingest(params: Params, variant: str | None = None) -> None:
    """Write data/canonical/{interactions,items[,users]}.parquet.

    The validation gate runs here on the raw and the filtered tables, so bad
    data never replaces the previous canonical tables. The base data is read
    with every span of ``data.spans`` but the held-out newest (recforge.spans);
    ``spans.json`` records which. Each span production has not been trained
    on is checked for drift and skew against production's data (recforge.drift).
    """
    base = load(params.data)
    raw, spans, held = with_spans(base, params)
    source = params.data.path or f"data.format={params.data.format}"
    checks = []
    if params.validate_.enabled:
        # the held-out spans (the blessing's evaluation data) are gated too
        checks = run_suites(raw_suites(with_held_out(raw, params), params), params.validate_.max_examples)
        checks += drift_checks(params, base.interactions)  # each new span against production's data
        if not all(check.success for check in checks):
            gate(checks, params, source)  # raises with the failed expectations
    tables = prepare(raw, params.data, params.split)  # the split: review texts read training reviews only
    if params.validate_.enabled:
        gate(checks + run_suites(prepared_suites(tables, params), params.validate_.max_examples), params, source)
    with atomic_dir(params.paths.canonical_dir) as staging:
        tables.interactions.to_parquet(Path(staging) / "interactions.parquet", index=False)
        tables.items.to_parquet(Path(staging) / "items.parquet", index=False)
        if tables.users is not None:
            tables.users.to_parquet(Path(staging) / "users.parquet", index=False)
        write_manifest(Path(staging), spans, held)
        write_record(Path(staging), checks)
    log.info(
        "ingested %d interactions, %d users, %d items (%d spans, %d held out)",
        len(tables.interactions),
        tables.interactions["user_id"].nunique(),
        len(tables.items),
        len(spans),
        len(held),
    )
