"""promote: infra-validate the blessed candidate (recforge.infra, unless promote.infra_validate is false),
register it and make it production (recforge.production); a rejected one, or one that fails its
infra-validation, is registered with its blessing (and infra-validation) and production stays. Writes
reports/promotion.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recforge.artifacts import read_json, write_json
from recforge.params import Params


def run_promote(params: Params, variant: str | None = None, *, run: str | None = None) -> dict[str, Any]:
    from recforge import production
    from recforge.blessing import read_blessing
    from recforge.spans import read_manifest

    blessing = read_blessing(params)
    tag = production.check_tag(blessing["candidate"]["tag"])
    run = run or production.run_id()
    metrics_file = Path(params.paths.metrics_file)
    metrics = read_json(metrics_file) if metrics_file.exists() else None
    spans = read_manifest(params)
    current = production.current(params)
    promoted = blessing["decision"] == "blessed" and (current is None or current.tag != tag)
    reason = blessing["reason"]
    infra = None
    if promoted and params.promote.infra_validate:
        from recforge.infra import validate

        infra = validate(params, tag)
        if not infra["passed"]:
            promoted, reason = False, f"infra-validation failed: {infra['reason']}"
    production.register(
        params,
        tag,
        run=run,
        metrics=metrics,
        blessing=blessing,
        spans=[s["name"] for s in spans["spans"]],
        evaluated=[s["name"] for s in spans["held_out"]],
        infra=infra,
    )
    if promoted:
        why = f"blessed: {reason}" + (f"; infra-validated: {infra['reason']}" if infra else "")
        production.promote(params, tag, reason=why[: production.MAX_REASON], run=run)
    result = {
        "promoted": promoted,
        "tag": tag,
        "production": production.current(params).tag if production.current(params) else None,
        "previous": current.tag if current else None,
        "decision": blessing["decision"],
        "reason": reason,
        "infra_validation": infra,
        "run": run,
    }
    write_json(result, Path(params.paths.reports_dir) / "promotion.json")
    return result
