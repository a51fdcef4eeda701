"""validate: the Great Expectations gate over the canonical tables; writes reports/validation.*."""

from __future__ import annotations

from recforge.data.loaders import Tables
from recforge.drift import recorded_checks
from recforge.params import Params
from recforge.validation import gate, prepared_suites, raw_suites, run_suites
from recforge.workspace import Workspace


def run_validate(params: Params, variant: str | None = None) -> None:
    """Check the canonical tables; raise ``ValidationFailed`` (exit 2) listing each failure."""
    workspace = Workspace(params)
    tables = Tables(workspace.interactions, workspace.items, workspace.users)
    n = params.validate_.max_examples
    checks = run_suites(raw_suites(tables, params), n) + run_suites(prepared_suites(tables, params), n)
    checks += recorded_checks(params)  # ingest's drift checks of the spans (their warnings stay in the report)
    gate(checks, params, params.paths.canonical_dir)
