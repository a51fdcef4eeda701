"""train: fit every configured recommender twice and write its candidate lists.

Protocol (no stage ever trains on a test target):
- the ``val`` model is fitted on train; its lists for the validation users feed
  validation metrics, tuning and the re-ranker's training data;
- the ``full`` model is refitted on train + val; its lists for the test users
  feed the test metrics, and it is the model that gets served.

Both fits get the events weighted by review sentiment when the interactions
carry review text and ``train.sentiment_weighting`` is on
(recforge.sentiment.training_events); otherwise the plain events.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recforge import registry
from recforge.artifacts import atomic_dir, load_model_dir, write_meta, write_parquet
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps
from recforge.params import Params
from recforge.progress import Progress
from recforge.protocols import FitContext, Refittable, WarmRefit
from recforge.ranking import batched
from recforge.sentiment import training_events, weight_summary
from recforge.threads import BUDGET_ENV, available_cores, core_share, limit_threads, slow_malloc_note
from recforge.workspace import Workspace

log = logging.getLogger(__name__)


def run_train(params: Params, variant: str | None = None) -> None:
    """Fit recommender ``variant`` (default: every configured one) and write models and lists."""
    if variant is not None and variant not in params.recommenders:
        raise RecforgeError(f"train: '{variant}' is not in recommenders ({', '.join(params.recommenders)})")
    names = [variant] if variant is not None else list(params.recommenders)
    note = slow_malloc_note()
    if note:
        log.warning("train: %s", note)
    workers = train_workers(params.train.workers, len(names))
    if workers <= 1:
        workspace = Workspace(params)
        for name in names:
            train_model(workspace, name)
        return
    _train_parallel(params, names, workers)


def train_workers(value: int | str, models: int) -> int:
    """``train.workers`` as a count: ``auto`` is min(available cores, models); never more than the models."""
    from recforge.sizing import is_auto

    return max(1, min(models, available_cores() if is_auto(value) else int(value)))


def _train_parallel(params: Params, names: list[str], workers: int) -> None:
    """Train ``names`` on ``workers`` processes, each with ``cores // workers`` threads (RECFORGE_THREADS).

    The sequence models go first (they cost the most), the others fill the free workers. Each model is
    trained exactly as alone (train_model); only its thread count follows the workers. Processes are
    spawned, not forked, so no OpenMP or torch state is copied from this one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = core_share(workers)
    order = sorted(names, key=lambda name: params.plugin_of(name) != "sequential")
    log.info("train: %d recommenders on %d worker processes, %d thread(s) each", len(names), workers, threads)
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads, level)) as pool:
        futures = {name: pool.submit(_train_one, params, name) for name in order}
        for name, future in futures.items():
            future.result()  # the first error (a RecforgeError keeps its one-line message) stops the stage
            log.info("train: %s done", name)


def _init_worker(threads: int, level: int) -> None:
    import os

    os.environ[BUDGET_ENV] = str(threads)
    limit_threads(threads)  # BLAS/OpenMP/torch of this process: its share of the cores
    logging.basicConfig(level=level, format="%(asctime)s %(message)s")


def _train_one(params: Params, name: str) -> dict:
    return train_model(Workspace(params), name)


def train_model(workspace: Workspace, name: str) -> dict:
    params = workspace.params
    plugin = params.plugin_of(name)
    options = params.model_options(name)
    train, val = training_events(workspace, "train"), workspace.events("val")
    model_dir = Path(params.paths.models_dir) / name
    lists_dir = Path(params.paths.lists_dir) / name
    length = params.evaluate.list_length

    started = time.perf_counter()
    tuning = None
    if "tune" in options:
        # hyper-parameter search on the validation split (recforge.tuning); the best trial's
        # model is the val model and its options are used from here on
        from recforge.tuning import tune_model

        model, options, tuning = tune_model(plugin, options, train, workspace.context(validation=val))
    else:
        model = registry.recommenders.create(plugin, **options)
        model.fit(train, context=workspace.context(validation=val))
    val_fit_s = time.perf_counter() - started
    started = time.perf_counter()
    val_lists = recommend_frame(model, part_users(workspace, "val"), workspace.maps, length, label=f"{name} val lists")
    val_lists_s = time.perf_counter() - started

    # refit on train + val with whatever the validation fit chose (epochs, tuned settings), continuing
    # from the validation fit where the model offers it (WarmRefit) and its options ask for it
    full_options = dict(options)
    if isinstance(model, Refittable):
        full_options.update(model.refit_options())
    started = time.perf_counter()
    train_val = training_events(workspace, "train+val")
    full = (
        model.warm_refit(train_val, context=workspace.context(validation=None))
        if isinstance(model, WarmRefit)
        else None
    )
    refit = "scratch" if full is None else "warm"
    if full is None:
        full = registry.recommenders.create(plugin, **full_options)
        full.fit(train_val, context=workspace.context(validation=None))
    full_fit_s = time.perf_counter() - started
    started = time.perf_counter()
    test_lists = recommend_frame(
        full, part_users(workspace, "test"), workspace.maps, length, label=f"{name} test lists"
    )
    test_lists_s = time.perf_counter() - started

    meta = {
        "name": name,
        "plugin": plugin,
        "options": options,
        "refit_options": full_options,
        "refit": refit,
        # timings, all under one key (a rerun's outputs equal a clean run's but for this key)
        "fit_seconds": {
            "val": round(val_fit_s, 3),
            "full": round(full_fit_s, 3),
            "val_lists": round(val_lists_s, 3),
            "test_lists": round(test_lists_s, 3),
        },
    }
    if train_val.weights is not None:
        meta["event_weights"] = weight_summary(train_val)
    if tuning is not None:
        meta["configured_options"] = params.model_options(name)
        meta["tuning"] = tuning.to_dict()
    with atomic_dir(model_dir) as staging:
        for part, fitted in (("val", model), ("full", full)):
            (staging / part).mkdir()
            fitted.save(staging / part)
            write_meta(staging / part, {**meta, "part": part})
    write_parquet(val_lists, lists_dir / "val.parquet")
    write_parquet(test_lists, lists_dir / "test.parquet")
    log.info(
        "trained %s (%s): fit %.1fs + lists %.1fs (val), %s refit %.1fs + lists %.1fs (test)",
        name,
        plugin,
        val_fit_s,
        val_lists_s,
        refit,
        full_fit_s,
        test_lists_s,
    )
    return meta


def part_users(workspace: Workspace, part: str) -> np.ndarray:
    """The original ids of a split part's users in dense order, the order their list files keep: the rerank
    stage reads those files a batch at a time and needs each block of users together (recforge.rerank)."""
    users = workspace.frame(part)["user_id"].unique()
    return users[np.argsort(workspace.maps.user_index(users), kind="stable")]


def recommend_frame(
    model, user_ids, maps: IdMaps, k: int, batch_size: int = 1024, label: str = "lists"
) -> pd.DataFrame:
    """Top-k lists for original ``user_ids`` as (user_id, item_id, rank, score).

    The output arrays are allocated once, before the batches: small long-lived
    allocations between each batch's large temporary score matrices kept
    glibc's heap from ever being reused or trimmed (+9 GiB RSS for 500K users).
    """
    users = maps.user_index(user_ids)
    known = users >= 0
    user_ids, users = np.asarray(user_ids)[known], users[known]
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.zeros((len(users), k), dtype=np.float32)
    progress = Progress(label, len(users), unit=" users")
    for part in batched(len(users), batch_size):
        top, values = model.recommend(users[part], k=k, exclude_seen=True)
        items[part, : top.shape[1]] = top
        scores[part, : top.shape[1]] = values
        progress.advance(len(top))
    rows, cols = np.nonzero(items >= 0)
    return pd.DataFrame(
        {
            "user_id": user_ids[rows],
            "item_id": maps.item_ids.to_numpy()[items[rows, cols]],
            "rank": (cols + 1).astype(np.int32),
            "score": scores[rows, cols],
        }
    )


def load_model(params: Params, name: str, part: str = "full", context: FitContext | None = None):
    """Load a trained model, verifying its files against the recorded checksums."""
    directory = Path(params.paths.models_dir) / name / part
    if context is None:
        context = Workspace(params).context()
    model, _ = load_model_dir(
        directory, registry.recommenders, context, missing="no trained model; run `recforge stage train`"
    )
    return model
