"""The train stage's worker processes (train.workers): the same models as one after the other."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recforge.errors import RecforgeError
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from recforge.stages.train import run_train, train_workers
from recforge.threads import BUDGET_ENV, available_cores
from tests.conftest import tmp_overrides

MODELS = (
    "recommenders={popularity: {}, itemknn: {}, "
    "gru: {plugin: sequential, cell: gru, dim: 16, max_len: 10, epochs: 2, batch_size: 64, threads: 1}}"
)
SMALL = [
    "data.synthetic.num_users=150",
    "data.synthetic.num_items=60",
    "data.synthetic.num_interactions=2500",
    MODELS,
    "rerank.enabled=false",
    "encode.encoders=[tfidf]",
]


def _lists(params) -> dict[str, pd.DataFrame]:
    root = Path(params.paths.lists_dir)
    return {
        f"{m}/{p}": pd.read_parquet(root / m / f"{p}.parquet")
        for m in ("popularity", "itemknn", "gru")
        for p in ("val", "test")
    }


def test_two_workers_train_the_same_models(tmp_path) -> None:
    """Catches a worker training on other data or params (a model's lists would differ), a model skipped or
    trained twice into the same directory, and errors lost in a worker."""
    params = load_params(None, tmp_overrides(tmp_path) + SMALL)
    run_pipeline(params)
    alone = _lists(params)
    parallel = load_params(None, tmp_overrides(tmp_path) + SMALL + ["train.workers=2"])
    for path in Path(params.paths.lists_dir).glob("*/*.parquet"):
        path.unlink()
    run_train(parallel)
    together = _lists(parallel)
    assert set(together) == set(alone)
    for key, frame in alone.items():
        pd.testing.assert_frame_equal(together[key], frame, obj=key)


def test_workers_rule(monkeypatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, "3")
    assert available_cores() == 3
    assert train_workers("auto", 8) == 3 and train_workers("auto", 2) == 2 and train_workers(5, 2) == 2
    assert train_workers(1, 8) == 1
    with pytest.raises(RecforgeError, match="train.workers"):
        load_params(None, ["train.workers=0"])


@pytest.mark.parametrize("workers", [0, -1, True, 1.5, "2"])
def test_a_local_cluster_needs_a_whole_number_of_workers(workers) -> None:
    """Catches a LocalCluster started with no worker (a flow that waits for ever) or a count that is not a
    whole number, before any process starts."""
    from recforge.threads import local_cluster

    with pytest.raises(ValueError, match="at least one worker"):
        local_cluster(workers)


def test_the_train_stage_warns_when_started_with_dasks_malloc_trim(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Catches a remote Dask worker's slow allocator (MALLOC_TRIM_THRESHOLD_, 1.7 times slower torch epochs)
    going unmentioned, and a warning given to a process started without it."""
    import logging

    from recforge.threads import slow_malloc_note

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert slow_malloc_note() is None
    params = load_params(None, tmp_overrides(tmp_path) + SMALL)
    run_pipeline(params, ["ingest", "validate", "split", "encode"])
    with caplog.at_level(logging.WARNING, logger="recforge"):
        run_train(params, "popularity")
    assert "MALLOC_TRIM_THRESHOLD_" not in caplog.text
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with caplog.at_level(logging.WARNING, logger="recforge"):
        run_train(params, "popularity")
    warned = [r.getMessage() for r in caplog.records if "MALLOC_TRIM_THRESHOLD_=65536" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("train: this process was started with"), warned
