"""split: train / val / test Parquet tables under paths.split_dir."""

from __future__ import annotations

import logging
from pathlib import Path

from recforge.artifacts import atomic_dir
from recforge.params import Params
from recforge.split import split
from recforge.workspace import Workspace

log = logging.getLogger(__name__)


def run_split(params: Params, variant: str | None = None) -> None:
    train, val, test = split(Workspace(params).interactions, params.split)
    with atomic_dir(params.paths.split_dir) as staging:
        for name, frame in (("train", train), ("val", val), ("test", test)):
            frame.to_parquet(Path(staging) / f"{name}.parquet", index=False)
    log.info("split: %d train, %d val, %d test events", len(train), len(val), len(test))
