"""Batch recommendations: top-K for every known user from a trained model, to Parquet.

The Prefect ``batch_recommend`` flow is a thin task around ``recommend_all``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recforge.artifacts import atomic_path
from recforge.errors import RecforgeError
from recforge.params import Params
from recforge.ranking import batched
from recforge.stages.train import load_model, recommend_frame
from recforge.workspace import Workspace

log = logging.getLogger(__name__)


def batch_model(params: Params, model: str | None = None) -> str:
    """The model to use: ``model``, else ``serve.model`` (unless ``auto``), else the first configured recommender."""
    served = params.serve.model if params.serve.model != "auto" else None
    name = model or served or next(iter(params.recommenders))
    if name not in params.recommenders:
        raise RecforgeError(f"model '{name}' is not configured (recommenders: {', '.join(params.recommenders)})")
    return name


def default_output(params: Params, model: str) -> str:
    return str(Path(params.paths.recs_dir) / "batch" / f"{model}.parquet")


def recommend_all(params: Params, model: str, k: int, output: str, batch_users: int = 10_000) -> dict[str, Any]:
    """Write top-``k`` for every known user from the ``full`` model to ``output`` (atomically, in batches)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    workspace = Workspace(params)
    fitted = load_model(params, model, "full", context=workspace.context())
    user_ids = workspace.maps.user_ids.to_numpy()
    rows = 0
    with atomic_path(output) as tmp:
        writer = None
        try:
            for part in batched(len(user_ids), batch_users):
                frame = recommend_frame(fitted, user_ids[part], workspace.maps, k)
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
                rows += len(frame)
                log.info("batch_recommend: %d / %d users", part.stop, len(user_ids))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no users: an empty file with the schema
            recommend_frame(fitted, user_ids[:0], workspace.maps, k).to_parquet(tmp, index=False)
    return {"model": model, "users": int(len(user_ids)), "rows": rows, "output": output}
