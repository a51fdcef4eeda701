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
LIST_COLUMNS = ["user_id", "item_id", "rank", "score"]  # what candidate_frame reads of a list
LIST_BATCH_ROWS = 1 << 20  # list rows read from a file at a time


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


def list_paths(params: Params, models: Sequence[str], part: str) -> dict[str, Path]:
    """Each model's list file of ``part`` (the train stage writes them); RecforgeError if one is missing, is not
    a parquet file or lacks a column of LIST_COLUMNS (only the file's footer is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {}
    for name in models:
        path = Path(params.paths.lists_dir) / name / f"{part}.parquet"
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run `recforge stage train` first")
        try:
            columns = set(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise RecforgeError(
                f"{path}: not a readable parquet file ({exc}); run `recforge stage train` again"
            ) from exc
        missing = [column for column in LIST_COLUMNS if column not in columns]
        if missing:
            raise RecforgeError(f"{path}: a candidate list needs the columns {LIST_COLUMNS}; missing {missing}")
        paths[name] = path
    return paths


def read_lists(params: Params, models: Sequence[str], part: str) -> dict[str, pd.DataFrame]:
    """Each model's whole list frame of ``part`` (small data and tests; the stage streams the files)."""
    return {name: pd.read_parquet(path) for name, path in list_paths(params, models, part).items()}


def list_batches(source: pd.DataFrame | Path, per_model: int, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """A list's rows ranked within ``per_model``: a frame whole, a list file ``rows`` (default
    ``LIST_BATCH_ROWS``) rows at a time, never the whole file: eight models' lists at 10M events were 6.4 GB."""
    if isinstance(source, pd.DataFrame):
        yield source[source["rank"] <= per_model]
        return
    import pyarrow.parquet as pq

    with pq.ParquetFile(source) as handle:
        for batch in handle.iter_batches(batch_size=rows or LIST_BATCH_ROWS, columns=LIST_COLUMNS):
            frame = batch.to_pandas()
            yield frame[frame["rank"] <= per_model]


def part_data(
    workspace: Workspace, part: str, models: Sequence[str], lists: dict[str, pd.DataFrame] | None = None
) -> PartData:
    """What features of ``part`` ('val' or 'test') may read: never that part's own events.

    ``lists``: the candidate lists to use instead of the train stage's (default: their files, which
    :func:`iter_part` reads a batch at a time).
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
        lists=list_paths(params, models, part) if lists is None else lists,
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
    sources = {name: _Blocks(source, data.maps, size, per_model) for name, source in data.lists.items()}
    n_blocks = (len(data.maps.user_ids) + size - 1) // size
    progress = Progress(f"rerank {part} candidates + features", n_blocks, unit=" user blocks")
    for b in range(n_blocks):
        lists = {name: blocks.take(b) for name, blocks in sources.items()}
        progress.advance()
        if not any(len(f) for f in lists.values()):
            continue
        yield context.add(candidate_frame(lists, data.maps, per_model), llm_scorer=llm_scorer)


class _Blocks:
    """One list's rows block by block (block = dense user // ``size``), in block order: ``take(b)`` for
    b = 0, 1, ... gives block b's rows (an empty frame where the list has none).

    A frame is indexed whole: its kept rows as positions in block order, so a block copies only its own
    rows and the list may be in any order. A file is read a batch at a time and must list its users in
    dense order (the train stage writes it so): memory holds one batch and one block, not the list.
    """

    def __init__(self, source: pd.DataFrame | Path, maps, size: int, per_model: int) -> None:
        if not isinstance(source, pd.DataFrame) and not _in_dense_order(source, maps):
            log.warning(
                "%s: users not in dense order, so the list is read whole; `recforge stage train` rewrites it", source
            )
            source = pd.read_parquet(source, columns=LIST_COLUMNS)
        self.maps, self.size, self.source = maps, size, source
        if isinstance(source, pd.DataFrame):
            self.empty = source.iloc[:0]
            rows = np.flatnonzero(source["rank"].to_numpy() <= per_model)
            block = maps.user_index(source["user_id"].to_numpy()[rows]) // size
            order = np.argsort(block, kind="stable")
            rows, block = rows[order], block[order]
            self._blocks = ((int(block[lo]), source.iloc[rows[lo:hi]]) for lo, hi in _runs(block, -2))
        else:
            import pyarrow.parquet as pq

            self.empty = pq.read_schema(source).empty_table().select(LIST_COLUMNS).to_pandas()
            self._blocks = self._from_file(list_batches(source, per_model))
        self._next = next(self._blocks, None)

    def take(self, b: int) -> pd.DataFrame:
        while self._next is not None and self._next[0] < b:  # rows of unknown users (block -1)
            self._next = next(self._blocks, None)
        if self._next is None or self._next[0] != b:
            return self.empty
        rows = self._next[1]
        self._next = next(self._blocks, None)
        return rows

    def _from_file(self, batches: Iterator[pd.DataFrame]) -> Iterator[tuple[int, pd.DataFrame]]:
        current, pending = -1, []
        for frame in batches:
            block = self.maps.user_index(frame["user_id"].to_numpy())
            keep = block >= 0
            frame, block = frame[keep], block[keep] // self.size
            if not len(block):
                continue
            if block[0] < current or np.any(np.diff(block) < 0):
                raise RecforgeError(
                    f"{self.source}: users are not in dense order; run `recforge stage train` again to rewrite it"
                )
            runs = _runs(block, current)  # the blocks that start in this batch
            head = runs[0][0] if runs else len(block)
            if head:  # the batch's first rows continue the pending block
                pending.append(frame.iloc[:head])
            for lo, hi in runs:
                if pending:
                    yield current, pd.concat(pending)  # candidate_frame reads values, not the index
                current, pending = int(block[lo]), [frame.iloc[lo:hi]]
        if pending:
            yield current, pd.concat(pending)


def _runs(block: np.ndarray, before: int) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal values in sorted ``block`` that differs from the value ``before`` it."""
    starts = np.flatnonzero(np.diff(block, prepend=before)).tolist()
    return list(zip(starts, [*starts[1:], len(block)][: len(starts)], strict=True))


def _in_dense_order(path: Path, maps) -> bool:
    """Whether a list file gives its (known) users in dense order, read a batch of its user column at a time."""
    import pyarrow.parquet as pq

    last = -1
    with pq.ParquetFile(path) as handle:
        for batch in handle.iter_batches(batch_size=LIST_BATCH_ROWS, columns=["user_id"]):
            users = maps.user_index(batch.column("user_id").to_pandas())
            users = users[users >= 0]
            if len(users) and (users[0] < last or np.any(np.diff(users) < 0)):
                return False
            last = users[-1] if len(users) else last
    return True


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
