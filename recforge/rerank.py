"""The re-ranker's candidate tables: the union of the candidate models' lists, with features.

``part_data`` says what the features of a part may read (never that part's
own events: ``val`` rows see train, ``test`` rows see train + val);
``iter_part`` builds the table block by block; ``training_table`` adds the
labels; ``ranked_lists`` cuts scored rows to each user's top list. The stage
body is ``recforge.stages.rerank``; its protocol is documented there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge import registry
from recforge.artifacts import (
    load_model_dir,
    read_meta,
)
from recforge.candidates import candidate_frame, group_sizes, labels_for, positive_groups
from recforge.errors import RecforgeError
from recforge.features import FeatureContext, PartData
from recforge.params import Params
from recforge.progress import Progress
from recforge.workspace import Workspace

log = logging.getLogger(__name__)

NAME = "rerank"
HISTORY = {"val": "train", "test": "train+val"}
PROFILE_PART = {"val": "val", "test": "full"}  # profiles built from the same history (recforge.profiles.PARTS)


def candidate_models(params: Params) -> list[str]:
    """The recommenders whose lists feed the re-ranker (``rerank.models`` or all configured)."""
    chosen = params.rerank.models or list(params.recommenders)
    unknown = [m for m in chosen if m not in params.recommenders]
    if unknown:
        raise RecforgeError(f"rerank.models names unconfigured recommenders: {unknown}")
    return list(chosen)


def feature_encoders(params: Params) -> list[str]:
    """Encoders whose item embeddings give similarity features (``rerank.encoders`` or encode.encoders)."""
    return list(params.rerank.encoders if params.rerank.encoders is not None else params.encode.encoders)


def read_lists(params: Params, models: Sequence[str], part: str) -> dict[str, pd.DataFrame]:
    lists = {}
    for name in models:
        path = Path(params.paths.lists_dir) / name / f"{part}.parquet"
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run `recforge stage train` first")
        lists[name] = pd.read_parquet(path)
    return lists


def part_data(
    workspace: Workspace, part: str, models: Sequence[str], lists: dict[str, pd.DataFrame] | None = None
) -> PartData:
    """What features of ``part`` ('val' or 'test') may read: never that part's own events.

    ``lists``: the candidate lists to use instead of the train stage's (default: read them).
    """
    from recforge.profiles import settings_from_params

    params = workspace.params
    history = workspace.events(HISTORY[part])
    embeddings = {name: workspace.embeddings(name) for name in feature_encoders(params)}
    sentiment = None
    if params.rerank.sentiment:
        from recforge.sentiment import history_sentiment

        sentiment = history_sentiment(workspace, HISTORY[part])
    return PartData(
        part=part,
        history=history,
        maps=workspace.maps,
        items=workspace.items,
        lists=read_lists(params, models, part) if lists is None else lists,
        embeddings=embeddings,
        sentiment=sentiment,
        text_fields=params.encode.fields,
        profile_settings=settings_from_params(params),
        profiles=workspace.written_profiles(PROFILE_PART[part], list(embeddings)),
    )


def iter_part(
    workspace: Workspace,
    part: str,
    models: Sequence[str],
    llm_scorer=None,
    block_users: int | None = None,
    lists: dict[str, pd.DataFrame] | None = None,
) -> Iterator[pd.DataFrame]:
    """Candidate + feature frames of ``part`` for consecutive blocks of (dense) users.

    The history-wide state is computed once (:class:`FeatureContext`); each
    block holds at most ``block_users`` users (``rerank.block_users``), so
    memory grows with the block, not with the number of users. Blocks come in
    user order and each is sorted by user, so their concatenation equals the
    whole part's table. ``lists``: candidate lists instead of the train stage's.
    """
    data = part_data(workspace, part, models, lists)
    context = FeatureContext(data)
    per_model = workspace.params.rerank.candidates_per_model
    size = block_users or workspace.params.rerank.block_users
    # each list's kept rows in block order, as positions into the list: a block copies its own rows only (a
    # sorted copy of every whole list was 5-6 GiB at 10M events)
    keyed = {}
    for name, frame in data.lists.items():
        rows = np.flatnonzero(frame["rank"].to_numpy() <= per_model)
        block = data.maps.user_index(frame["user_id"].to_numpy()[rows]) // size
        order = np.argsort(block, kind="stable")
        keyed[name] = (frame, rows[order], block[order])
    n_blocks = (len(data.maps.user_ids) + size - 1) // size
    progress = Progress(f"rerank {part} candidates + features", n_blocks, unit=" user blocks")
    for b in range(n_blocks):
        lists = {}
        for name, (frame, rows, block) in keyed.items():
            lo, hi = np.searchsorted(block, [b, b + 1])
            lists[name] = frame.iloc[rows[lo:hi]]
        progress.advance()
        if not any(len(f) for f in lists.values()):
            continue
        yield context.add(candidate_frame(lists, data.maps, per_model), llm_scorer=llm_scorer)


def build_part(workspace: Workspace, part: str, models: Sequence[str], llm_scorer=None) -> pd.DataFrame:
    """The whole candidate + feature table of ``part`` (the blocks of :func:`iter_part`, concatenated)."""
    return pd.concat(list(iter_part(workspace, part, models, llm_scorer)), ignore_index=True)


def training_table(
    workspace: Workspace, models: Sequence[str] | None = None, llm_scorer=None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(features, labels, groups) the re-ranker trains on: val candidates, val targets only."""
    models = list(models or candidate_models(workspace.params))
    frame = build_part(workspace, "val", models, llm_scorer)
    labels = labels_for(frame, workspace.frame("val"))
    return frame, labels, group_sizes(frame)


def positive_users(labels: np.ndarray, groups: np.ndarray) -> int:
    """How many groups (users, in consecutive blocks of ``groups`` rows) have a positive label."""
    return int(positive_groups(labels, groups).sum())


def make_reranker(params: Params, features: list[str] | None = None, positive_users: int | None = None):
    """The configured re-ranker plugin; ``auto`` folds/repeats/num_leaves are chosen from ``positive_users`` (the
    validation users whose held-out item is among the candidates; recforge.sizing)."""
    from recforge.sizing import is_auto, rerank_folds, rerank_leaves, rerank_repeats

    cfg = params.rerank
    if any(is_auto(value) for value in (cfg.folds, cfg.repeats, cfg.num_leaves)) and positive_users is None:
        raise ValueError("rerank.folds/repeats/num_leaves 'auto' need the number of validation users with a positive")
    options: dict[str, Any] = {
        "folds": rerank_folds(cfg.folds, positive_users or 0),
        "repeats": rerank_repeats(cfg.repeats, positive_users or 0),
        "num_leaves": rerank_leaves(cfg.num_leaves, positive_users or 0),
        "learning_rate": cfg.learning_rate,
        "num_boost_round": cfg.num_boost_round,
        "early_stopping_rounds": cfg.early_stopping_rounds,
        "seed": params.seed,
    }
    if cfg.distributed:
        orchestration = params.orchestration
        options.update(
            {
                "distributed": True,
                "dask_address": orchestration.dask_address,
                "dask_workers": orchestration.dask_workers,
            }
        )
    options.update(cfg.options)
    if features is not None:
        options["features"] = features
    return registry.rerankers.create(cfg.plugin, **options)


def ranked_lists(frame: pd.DataFrame, scores: np.ndarray, k: int, maps=None) -> pd.DataFrame:
    """Top-``k`` (user_id, item_id, rank, score) per user from row scores (ties: lower item).

    ``frame`` has the dense ``user`` and ``item`` of each row, and their original ids (``user_id``,
    ``item_id``) unless ``maps`` (:class:`recforge.interactions.IdMaps`) is given: the ids of the
    kept rows are then looked up after the cut, so millions of scored rows never carry their ids.
    One index sort (numpy), no copy of the table.
    """
    users = frame["user"].to_numpy()
    items = frame["item"].to_numpy()
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((items, -scores, users))
    ordered = users[order]
    first = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] - 1))  # where each user's rows start
    rank = np.arange(1, len(order) + 1) - np.repeat(first, np.diff(np.append(first, len(order))))
    keep = rank <= k
    rows = order[keep]
    if maps is None:
        user_ids, item_ids = frame["user_id"].to_numpy()[rows], frame["item_id"].to_numpy()[rows]
    else:
        user_ids, item_ids = maps.user_ids.to_numpy()[users[rows]], maps.item_ids.to_numpy()[items[rows]]
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "item_id": item_ids,
            "rank": rank[keep].astype(np.int32),
            "score": scores[rows].astype(np.float32),
        }
    )


def test_lists_for(workspace: Workspace, user_ids: Sequence[Any], llm_scorer=None) -> pd.DataFrame:
    """The rerank stage's test-part lists for ``user_ids`` (original ids), computed as the stage computes them.

    The train stage writes test-part candidate lists only for the users with
    test events; this scores any other known user the same way: each candidate
    model's ``full`` refit (train + val) gives its top ``evaluate.list_length``
    (:func:`recforge.stages.train.recommend_frame`), then :func:`iter_part`
    over the train + val history, the trained re-ranker and
    :func:`ranked_lists`. Used by packaging to precompute every known user's list.
    """
    from recforge.stages.train import load_model, recommend_frame

    params = workspace.params
    length = params.evaluate.list_length
    reranker, meta = load_reranker(params)
    models = list(meta["models"])
    context = workspace.context()
    lists = {
        name: recommend_frame(load_model(params, name, "full", context), user_ids, workspace.maps, length)
        for name in models
    }
    blocks = [
        ranked_lists(block, reranker.rerank(block), length)
        for block in iter_part(workspace, "test", models, llm_scorer, lists=lists)
    ]
    if not blocks:
        return pd.DataFrame({"user_id": [], "item_id": [], "rank": [], "score": []})
    return pd.concat(blocks, ignore_index=True)


def load_reranker(params: Params):
    """The trained re-ranker (checksums verified) and its meta.json."""
    directory = Path(params.paths.models_dir) / NAME
    meta = read_meta(directory, missing="no trained re-ranker; run `recforge stage rerank`")
    if meta.get("fallback"):
        raise RecforgeError(
            f"{directory}: no re-ranker was trained (too little validation data; lists use {meta['fallback']})"
        )
    return load_model_dir(directory, registry.rerankers, meta=meta)
