"""Helpers for running the stages from an orchestrator (Prefect flows, Dask).

Nothing here contains stage logic. It answers three questions for the flows:

- what does a stage read and write? (``stage_spec``: the params keys, input
  paths and output paths, the same information dvc.yaml declares);
- has anything a stage reads changed? (``stage_key``: a hash of the relevant
  params, the input files' contents and the stage's code; ``stamp_valid``:
  are the outputs on disk still the ones written for that key?);
- where do independent tasks run? (``task_runner``: in-process threads or a
  Dask cluster, an existing one at ``orchestration.dask_address`` or a
  LocalCluster; ``dask_client`` and ``train_dask_ranker`` for the re-ranker's
  ``rerank.distributed: true`` path with lightgbm's DaskLGBMRanker).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recforge.artifacts import read_json, write_json
from recforge.params import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """What one stage run reads and writes (paths are resolved against params.paths)."""

    name: str
    params: tuple[str, ...]
    deps: tuple[Path, ...]
    outs: tuple[Path, ...]
    code: tuple[str, ...] = field(default_factory=tuple)  # module names whose source is part of the key


def _model_dirs(params: Params, models: list[str]) -> tuple[Path, ...]:
    paths = params.paths
    return tuple(Path(root) / name for name in models for root in (paths.models_dir, paths.lists_dir))


def stage_spec(params: Params, stage: str, model: str | None = None, encoder: str | None = None) -> StageSpec:
    """The inputs and outputs of ``stage`` (``model`` for one fit of train, ``encoder`` for one encoder)."""
    p = params.paths
    canonical, split = Path(p.canonical_dir), Path(p.split_dir)
    embeddings = Path(p.embeddings_dir)
    module = f"recforge.stages.{stage}"
    if stage == "ingest":
        data_paths = [params.data.path, params.data.metadata_path, params.data.items_path]
        return StageSpec(stage, ("data", "validate"), tuple(Path(d) for d in data_paths if d), (canonical,),
                         (module, "recforge.data.loaders", "recforge.validation"))
    if stage == "validate":
        reports = Path(p.reports_dir)
        return StageSpec(stage, ("validate",), (canonical,), (reports / "validation.json",), (module, "recforge.validation"))
    if stage == "split":
        return StageSpec(stage, ("split",), (canonical,), (split,), (module, "recforge.split"))
    if stage == "encode":
        if encoder:  # one encoder's item vectors, profiles off: the parallel part of encode
            return StageSpec(stage, ("encode.fields", "encode.batch_size", f"encode.options.{encoder}"),
                             (canonical / "items.parquet",), (embeddings / f"{encoder}.npy",), (module,))
        outs = (embeddings, Path(p.profiles_dir)) if params.encode.profiles else (embeddings,)
        outs = outs if params.encode.encoders or params.encode.profiles else ()
        return StageSpec(stage, ("encode",), (canonical, split), outs, (module, "recforge.profiles"))
    if stage == "train":
        models = [model] if model else list(params.recommenders)
        keys = (*(f"recommenders.{m}" for m in models), "evaluate.list_length", "seed")
        deps = (canonical, split, embeddings, Path(p.profiles_dir))
        return StageSpec(stage, keys, deps, _model_dirs(params, models), (module,))
    if stage == "rerank":
        outs = _model_dirs(params, ["rerank"]) if params.rerank.enabled else ()
        keys = ("rerank", "recommenders", "encode.encoders", "evaluate.list_length", "seed")
        deps = (canonical, split, embeddings, Path(p.profiles_dir), *_model_dirs(params, list(params.recommenders)))
        return StageSpec(stage, keys, deps, outs, (module, "recforge.rerank"))
    if stage == "evaluate":
        from recforge.stages.evaluate import model_names

        lists = tuple(Path(p.lists_dir) / name for name in model_names(params))
        outs = (Path(p.metrics_file), Path(p.recs_dir), Path(p.plots_dir) / "ndcg_at_k.csv")
        return StageSpec(stage, ("evaluate", "recommenders", "rerank.enabled"), (canonical, split, *lists), outs,
                         (module, "recforge.metrics"))
    # stages this module does not know (package, stages added later): everything is an input
    return StageSpec(stage, ("",), (Path(p.models_dir), Path(p.lists_dir), Path(p.metrics_file)), (), (module,))


def select_params(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of dotted ``keys`` ("" is the whole params) as a flat dict."""
    raw = params.to_dict()
    selected: dict[str, Any] = {}
    for key in keys:
        node: Any = raw
        for part in filter(None, key.split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        selected[key] = node
    return selected


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    return []


def hash_paths(paths: tuple[Path, ...] | list[Path]) -> str:
    """sha256 over the contents (and relative names) of every file under ``paths``."""
    digest = hashlib.sha256()
    for root in paths:
        digest.update(f"\x00{root}".encode())
        for file in _files(Path(root)):
            digest.update(f"\x01{file.relative_to(root) if file != root else file.name}".encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _code_hash(modules: tuple[str, ...], extra_sources: list[str]) -> str:
    import importlib

    digest = hashlib.sha256()
    for name in modules:
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError):
            source = f"<missing {name}>"
        digest.update(source.encode())
    for source in extra_sources:
        digest.update(source.encode())
    return digest.hexdigest()


def stage_key(params: Params, stage: str, model: str | None = None, encoder: str | None = None) -> str:
    """A hash of everything ``stage`` reads: its params keys, input files and code."""
    spec = stage_spec(params, stage, model=model, encoder=encoder)
    extra: list[str] = []
    if stage == "train" and model:
        extra.append(_plugin_source(params, model))
    payload = {
        "stage": stage,
        "model": model,
        "encoder": encoder,
        "params": select_params(params, spec.params),
        "inputs": hash_paths(spec.deps),
        "code": _code_hash(spec.code, extra),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _plugin_source(params: Params, model: str) -> str:
    from recforge import registry

    try:
        cls = registry.recommenders.get(params.plugin_of(model))
        return inspect.getsource(inspect.getmodule(cls))
    except Exception:  # a broken plugin fails loudly in the stage itself, not here
        return f"<unknown plugin {params.plugin_of(model)}>"


def outputs_digest(paths: tuple[Path, ...]) -> str:
    """A cheap fingerprint (names, sizes, mtimes) of the outputs; a missing output changes it."""
    digest = hashlib.sha256()
    for root in paths:
        files = _files(Path(root))
        digest.update(f"{root}\x00{len(files)}\n".encode())
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stamp_path(params: Params, stage: str, model: str | None, encoder: str | None) -> Path:
    suffix = f"-{model}" if model else f"-{encoder}" if encoder else ""
    return Path(params.paths.cache_dir) / "stages" / f"{stage}{suffix}.json"


def write_stamp(params: Params, stage: str, key: str, model: str | None = None, encoder: str | None = None) -> None:
    """Record that the outputs now on disk were written for ``key``."""
    spec = stage_spec(params, stage, model=model, encoder=encoder)
    write_json({"key": key, "outputs": outputs_digest(spec.outs)}, _stamp_path(params, stage, model, encoder))


def stamp_valid(params: Params, stage: str, key: str, model: str | None = None, encoder: str | None = None) -> bool:
    """True when the outputs on disk are exactly those written for ``key`` (so skipping is safe)."""
    path = _stamp_path(params, stage, model, encoder)
    if not path.exists():
        return False
    try:
        stamp = read_json(path)
    except (OSError, ValueError):
        return False
    spec = stage_spec(params, stage, model=model, encoder=encoder)
    return stamp.get("key") == key and stamp.get("outputs") == outputs_digest(spec.outs)


# ---------------------------------------------------------------- task runners / Dask


def task_runner(params: Params):
    """The Prefect task runner for ``orchestration.runner``.

    ``local``: a thread pool with ``orchestration.dask_workers`` threads (tasks
    in one process). ``dask``: prefect-dask's DaskTaskRunner on the cluster at
    ``orchestration.dask_address``, or a LocalCluster of ``dask_workers``
    single-threaded worker processes.
    """
    settings = params.orchestration
    if settings.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": settings.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=settings.dask_workers)


@contextlib.contextmanager
def dask_client(params: Params) -> Iterator[Any]:
    """A ``distributed.Client`` for ``params.orchestration``: the configured address or a LocalCluster.

    Inside a Prefect flow running on the DaskTaskRunner, the current worker's
    client is reused, so no second cluster is started.
    """
    from distributed import Client, LocalCluster, get_client

    try:
        current = get_client()
    except ValueError:
        current = None
    if current is not None:
        yield current
        return
    settings = params.orchestration
    if settings.dask_address:
        with Client(settings.dask_address) as client:
            yield client
        return
    with LocalCluster(
        n_workers=settings.dask_workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        yield client


def _group_partitions(group: np.ndarray, parts: int) -> list[tuple[int, int, int, int]]:
    """Split groups into ``parts`` contiguous blocks: (first group, last group, first row, last row)."""
    bounds = np.concatenate([[0], np.cumsum(group)])
    edges = np.unique(np.linspace(0, len(group), parts + 1).round().astype(int))
    return [(int(a), int(b), int(bounds[a]), int(bounds[b])) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def train_dask_ranker(
    X: np.ndarray,
    y: np.ndarray,
    group: np.ndarray,
    params: Params,
    *,
    client: Any | None = None,
    eval_set: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    **lgbm_options: Any,
):
    """Train a LambdaRank model with lightgbm's ``DaskLGBMRanker``; return a local ``LGBMRanker``.

    ``X`` [n_rows, n_features], ``y`` graded relevance per row and ``group``
    (rows per query, in row order) are split into one partition per Dask worker
    along query boundaries, so no query straddles two workers. Hyper-parameters
    come from ``params.rerank`` (num_leaves, learning_rate, num_boost_round);
    ``lgbm_options`` override them. ``eval_set`` (X, y, group) is accepted for
    signature parity but DaskLGBMRanker is trained for a fixed number of rounds.
    With ``client`` None, ``dask_client(params)`` supplies one.
    """
    import dask.array as da
    from lightgbm import DaskLGBMRanker

    X = np.ascontiguousarray(X, dtype=np.float64)
    y, group = np.asarray(y), np.asarray(group, dtype=np.int64)
    if group.sum() != len(X) or len(y) != len(X):
        raise ValueError(f"rows: X {len(X)}, y {len(y)}, sum(group) {group.sum()} must agree")
    options: dict[str, Any] = {
        "objective": "lambdarank",
        "num_leaves": params.rerank.num_leaves,
        "learning_rate": params.rerank.learning_rate,
        "n_estimators": params.rerank.num_boost_round,
        "random_state": params.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }
    options.update(lgbm_options)
    if eval_set is not None:
        log.info("train_dask_ranker: eval_set ignored (DaskLGBMRanker trains a fixed number of rounds)")

    def fit(active) -> Any:
        workers = max(1, len(active.scheduler_info().get("workers", {})))
        blocks = _group_partitions(group, workers)
        row_chunks = tuple(r1 - r0 for _, _, r0, r1 in blocks)
        group_chunks = tuple(g1 - g0 for g0, g1, _, _ in blocks)
        dX = da.from_array(X, chunks=(row_chunks, X.shape[1]))
        dy = da.from_array(y, chunks=(row_chunks,))
        dg = da.from_array(group, chunks=(group_chunks,))
        model = DaskLGBMRanker(client=active, **options)
        model.fit(dX, dy, group=dg)
        log.info("DaskLGBMRanker: %d rows, %d queries on %d workers", len(X), len(group), workers)
        return model.to_local()

    if client is not None:
        return fit(client)
    with dask_client(params) as active:
        return fit(active)


def env_without_telemetry(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Prefect/DVC/GX subprocesses with analytics and telemetry off."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "DVC_NO_ANALYTICS": "1",
            "GX_ANALYTICS_ENABLED": "False",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "recforge,recforge_plugins",
        }
    )
    return env
