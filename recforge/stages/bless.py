"""bless: score the last packaged candidate against production on the held-out spans (recforge.blessing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recforge.artifacts import read_json
from recforge.errors import RecforgeError
from recforge.params import Params


def run_bless(params: Params, variant: str | None = None) -> dict[str, Any]:
    """Write reports/blessing.{json,md} for the model ``recforge package`` stored last (reports/package.json)."""
    from recforge import production
    from recforge.blessing import bless

    record = Path(params.paths.reports_dir) / "package.json"
    if not record.exists():
        raise RecforgeError(f"{record}: nothing packaged yet; run `recforge stage package`")
    tag = production.check_tag(read_json(record).get("model_tag"))
    path, _ = production.store_entry(tag)
    return bless(params, tag, path)
