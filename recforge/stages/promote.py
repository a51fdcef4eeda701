"""promote: register the blessed candidate and make it production (recforge.production); a rejected one is
registered with its blessing and production stays. Writes reports/promotion.json."""

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
    production.register(
        params,
        tag,
        run=run,
        metrics=metrics,
        blessing=blessing,
        spans=[s["name"] for s in spans["spans"]],
        evaluated=[s["name"] for s in spans["held_out"]],
    )
    promoted = blessing["decision"] == "blessed" and (current is None or current.tag != tag)
    if promoted:
        production.promote(params, tag, reason=f"blessed: {blessing['reason']}", run=run)
    result = {
        "promoted": promoted,
        "tag": tag,
        "production": production.current(params).tag if production.current(params) else None,
        "previous": current.tag if current else None,
        "decision": blessing["decision"],
        "reason": blessing["reason"],
        "run": run,
    }
    write_json(result, Path(params.paths.reports_dir) / "promotion.json")
    return result
