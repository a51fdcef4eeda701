"""Packages: what the pipeline trained, in one checked directory, with a manifest that covers it exactly.

``build_package`` copies what the pipeline trained (the ``full`` part of every
model, embeddings and fitted encoders, user profiles, id maps, the items
table, the train+val histories, params and metrics) into one directory with a
``manifest.json`` that records the sha256 of every file. :class:`Package`
reads one back, checking those checksums and each saved plugin's own
meta.json checksums (:func:`recforge.artifacts.load_model_dir`). The package's tag is
``recforge-model:d<data hash>-p<params hash>-c<content hash>`` (the content
hash covers every packaged file, so a model-store entry is never rewritten with
other content); ``recforge.bento`` stores it, builds the Bento pinned to that
tag and says how ``recforge serve`` runs it.

The manifest covers the package's files exactly: a file that is not listed, a
listed file that is missing, a key with ``..`` or an absolute key, a link or
an empty manifest is an error. What is copied in (models, the re-ranker,
embeddings, encoder states, profiles) is read once and checked on the copy,
against the checksums recorded in a model's or the re-ranker's meta.json where
there are some.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.artifacts import (
    check_relative_key,
    load_model_dir,
    plain,
    read_json,
    read_meta,
    sha256_file,
    verify_checksums,
)
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps, Interactions
from recforge.params import Params

log = logging.getLogger(__name__)

PACKAGE_FORMAT = 1
MODEL_NAME = "recforge-model"
# parts of params that do not change what is served (where files live, how it is served, where feedback goes)
UNHASHED_SECTIONS = ("paths", "serve", "orchestration", "feedback")
RERANK_LISTS = "rerank_lists.npz"  # every known user's re-ranked test-part list (dense items, scores)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE_DIR = PROJECT_ROOT / "service"


# ---- hashes ----------------------------------------------------------------------------------------------


def params_hash(params: Params) -> str:
    """sha256 of the params that change what is trained (paths and serving settings excluded)."""
    data = {k: v for k, v in params.to_dict().items() if k not in UNHASHED_SECTIONS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def data_hash(params: Params) -> str:
    """sha256 over the split tables and the items table the models were trained on."""
    digest = hashlib.sha256()
    files = [Path(params.paths.split_dir) / f"{part}.parquet" for part in ("train", "val", "test")]
    files.append(Path(params.paths.canonical_dir) / "items.parquet")
    for path in files:
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run the pipeline (`recforge run`) before packaging")
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def model_version(params: Params) -> str:
    """The model-store version: derived from the data and the params, so it pins exactly what was trained."""
    return f"d{data_hash(params)[:12]}-p{params_hash(params)[:12]}"


MANIFEST = "manifest.json"
# what the BentoML model store writes beside a package's files in an entry (top level only)
STORE_FILES = ("model.yaml",)


def package_checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file of a package but its manifest (models' meta.json included)."""
    directory = Path(directory)
    return {name: sha256_file(directory / name) for name in package_files(directory)}


def package_files(directory: Path, *, skip: tuple[str, ...] = (MANIFEST, *STORE_FILES)) -> list[str]:
    """Relative paths of every file under ``directory`` but the top-level ``skip`` ones, sorted.

    A link or anything but a regular file or a directory is an error: a package holds its files.
    """
    directory = Path(directory)
    names = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise RecforgeError(f"{path}: a link or special file; a package holds regular files only")
        names += [(Path(root) / name).relative_to(directory).as_posix() for name in files]
    return sorted(name for name in names if name not in skip)


def content_hash(file_checksums: dict[str, str]) -> str:
    """sha256 over a package's files (relative path and sha256 of each): what its model-store tag derives from."""
    return hashlib.sha256(json.dumps(sorted(file_checksums.items())).encode()).hexdigest()


def model_tag(manifest: dict[str, Any]) -> str:
    """The model-store tag of a package: its version (data and params hashes) and its content hash."""
    return f"{MODEL_NAME}:{manifest['version']}-c{manifest['content_hash'][:12]}"


def check_manifest(directory: Path, manifest: dict[str, Any], *, verify: bool = True) -> None:
    """The manifest lists exactly the package's files (and, with ``verify``, their sha256)."""
    expected = manifest.get("checksums")
    if not isinstance(expected, dict) or not expected:
        raise RecforgeError(f"{directory}: the manifest lists no files; repackage (`recforge package`)")
    for name, digest in expected.items():
        check_relative_key(name, where=f"{directory}/{MANIFEST}")
        if not isinstance(digest, str) or len(digest) != 64:
            raise RecforgeError(f"{directory}/{MANIFEST}: '{name}' has no sha256")
    present = set(package_files(directory))
    missing, unlisted = sorted(set(expected) - present), sorted(present - set(expected))
    if missing:
        raise RecforgeError(f"{directory}: listed in the manifest but missing: {', '.join(missing[:5])}; repackage")
    if unlisted:
        raise RecforgeError(f"{directory}: files not in the manifest: {', '.join(unlisted[:5])}; repackage")
    if verify:
        verify_checksums(directory, expected)


# ---- writing a package -----------------------------------------------------------------------------------


def _trained_models(params: Params) -> list[str]:
    names = [
        name for name in params.recommenders if (Path(params.paths.models_dir) / name / "full" / "meta.json").exists()
    ]
    missing = [name for name in params.recommenders if name not in names]
    if missing:
        raise RecforgeError(f"models not trained: {', '.join(missing)}; run `recforge stage train`")
    return names


def _copy_file_checked(source: Path, dest: Path) -> str:
    """Copy one regular file, reading it once; the copy is read back and must hash the same. Its sha256."""
    if source.is_symlink() or not source.is_file():
        raise RecforgeError(f"{source}: not a regular file; refusing to package it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(dest, "xb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
    if sha256_file(dest) != digest.hexdigest():
        raise RecforgeError(f"{dest}: the copy of {source} differs from what was read; package again")
    return digest.hexdigest()


def _copy_checked(
    source: Path, dest: Path, *, recorded: bool = False, missing: str = "no trained model"
) -> dict[str, str]:
    """Copy a file or a tree (no links) checked; {path relative to ``dest``'s package root: sha256}.

    ``recorded``: ``source`` is a model directory whose meta.json checksums are verified before the
    copy and again on the copy.
    """
    if recorded:
        read_meta(source, missing=missing)
    if source.is_dir() and not source.is_symlink():
        names = package_files(source, skip=())
        copied = {name: _copy_file_checked(source / name, dest / name) for name in names}
    else:
        copied = {"": _copy_file_checked(source, dest)}
    if recorded:
        read_meta(dest)
    return {(dest / name).as_posix(): digest for name, digest in copied.items()}


def _copy_artifacts(params: Params, models: list[str], dest: Path) -> tuple[list[str], dict[str, str]]:
    """Models, the re-ranker, embeddings, encoder states and profiles, each copied checked.

    Returns the encoders and the sha256 of every copied file (by path relative to ``dest``).
    """
    from recforge.profiles import UserProfiles
    from recforge.workspace import Workspace

    copied: dict[str, str] = {}
    for name in models:
        source = Path(params.paths.models_dir) / name / "full"
        copied |= _copy_checked(source, dest / "models" / name, recorded=True)
    rerank_dir = Path(params.paths.models_dir) / "rerank"
    if params.rerank.enabled and rerank_dir.exists():
        copied |= _copy_checked(
            rerank_dir, dest / "rerank", recorded=True, missing="no trained re-ranker; run `recforge stage rerank`"
        )
    embeddings = Path(params.paths.embeddings_dir)
    encoders = []
    if embeddings.exists():
        n_items = len(Workspace(params).items)
        for path in sorted(embeddings.glob("*.npy")):
            copied |= _copy_checked(path, dest / "embeddings" / path.name)
            rows = len(np.load(dest / "embeddings" / path.name, allow_pickle=False))  # the copy, without pickle
            if rows != n_items:
                raise RecforgeError(f"{path}: {rows} rows for {n_items} items; re-run `recforge stage encode`")
            encoders.append(path.stem)
        if (embeddings / "encoders").exists():
            copied |= _copy_checked(embeddings / "encoders", dest / "embeddings" / "encoders")
    profiles = Path(params.paths.profiles_dir) / "full"
    if profiles.exists():
        copied |= _copy_checked(profiles, dest / "profiles")
        try:
            UserProfiles.load(dest / "profiles")  # the copy: every encoder's profiles are there and load
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise RecforgeError(f"{profiles}: unreadable profiles ({exc}); re-run `recforge stage encode`") from None
    return encoders, {str(Path(name).relative_to(dest)): digest for name, digest in copied.items()}


def _precompute_rerank(params: Params, workspace: Any, dest: Path) -> None:
    """Write every known user's re-ranked list (:data:`RERANK_LISTS`) when a re-ranker was trained.

    The rerank stage's ``lists/rerank/test.parquet`` is exactly what a known
    user with no new events is served: the top ``evaluate.list_length`` of the
    test part, candidates from the train + val refits and features over the
    train + val history. It covers the users with test events; any other known
    user is scored here through the stage's own code path
    (:func:`recforge.rerank.test_lists_for`). Stored as CSR over dense users:
    ``indptr`` [n_users + 1], ``items`` (dense, int32, best first), ``scores``
    (float32), ``length`` (the list length).
    """
    folder = dest / "rerank"
    if not (folder / "meta.json").exists() or read_json(folder / "meta.json").get("fallback"):
        return
    from recforge.rerank import NAME, test_lists_for

    path = Path(params.paths.lists_dir) / NAME / "test.parquet"
    if not path.exists():  # the re-ranker still answers, online, for every request
        log.warning("%s: not found; no precomputed re-ranked lists (run `recforge stage rerank`)", path)
        return
    maps = workspace.maps
    lists = pd.read_parquet(path)
    missing = maps.user_ids[~maps.user_ids.isin(lists["user_id"].unique())]
    if len(missing):
        scorer = None
        if params.rerank.llm_scorer:
            from recforge.llm_scorer import LLMScorer

            scorer = LLMScorer(params)
        log.info("package: scoring %d known users without test events through the re-ranker", len(missing))
        lists = pd.concat([lists, test_lists_for(workspace, missing.to_numpy(), scorer)], ignore_index=True)
    users, items = maps.user_index(lists["user_id"]), maps.item_index(lists["item_id"])
    if (users < 0).any() or (items < 0).any():
        raise RecforgeError(f"{path}: ids not in the workspace's id maps; re-run `recforge stage rerank`")
    order = np.lexsort((lists["rank"].to_numpy(), users))
    counts = np.bincount(users, minlength=len(maps.user_ids))
    np.savez(
        dest / RERANK_LISTS,
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=items[order].astype(np.int32),
        scores=lists["score"].to_numpy(np.float32)[order],
        length=np.int64(params.evaluate.list_length),
    )


def build_package(params: Params, dest: str | Path) -> dict[str, Any]:
    """Copy the trained pipeline into ``dest`` (an empty or new directory); returns the manifest."""
    from recforge.workspace import Workspace

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(params)
    models = _trained_models(params)
    metrics_path = Path(params.paths.metrics_file)
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    encoders, copied = _copy_artifacts(params, models, dest)

    workspace.items.to_parquet(dest / "items.parquet", index=False)
    pd.DataFrame({"user_id": workspace.maps.user_ids}).to_parquet(dest / "users.parquet", index=False)
    events = workspace.events("train+val")
    bounds = events.bounds
    history = {
        "indptr": bounds.astype(np.int64),
        "items": events.item_ids.astype(np.int32),
        "timestamps": events.timestamps.astype(np.int64),
    }
    if events.ratings is not None:
        history["ratings"] = events.ratings.astype(np.float32)
    np.savez(dest / "history.npz", **history)  # time order per user: what the re-ranker's features read
    _precompute_rerank(params, workspace, dest)

    clean = params.to_dict()
    clean["serve"]["api_token"] = None  # never bake a secret into an artifact
    (dest / "params.json").write_text(json.dumps(clean, indent=2))
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))

    counts = {"users": int(events.n_users), "items": int(events.n_items), "interactions": int(len(events))}
    busiest = int(np.argmax(np.diff(bounds))) if events.n_users else 0
    files = package_checksums(dest)
    changed = sorted(name for name, digest in copied.items() if files.get(name) != digest)
    if changed:
        raise RecforgeError(f"{dest}: changed while packaging: {', '.join(changed[:5])}; package again")
    manifest = {
        "format": PACKAGE_FORMAT,
        "name": MODEL_NAME,
        "version": model_version(params),
        "data_hash": data_hash(params),
        "params_hash": params_hash(params),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {name: read_json(dest / "models" / name / "meta.json")["plugin"] for name in models},
        "encoders": encoders,
        "rerank": (dest / "rerank").exists(),
        "counts": counts,
        "example_user_id": plain(workspace.maps.user_ids[busiest]) if events.n_users else None,
        "content_hash": content_hash(files),
        "checksums": files,
    }
    manifest["tag"] = model_tag(manifest)  # the model-store tag (the manifest itself is not in the content hash)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


# ---- reading a package -----------------------------------------------------------------------------------


@dataclass
class Package:
    """A package directory, opened: manifest and params read, every file checked against the manifest."""

    directory: Path
    manifest: dict[str, Any]
    params: Params
    verify: bool = True

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = True) -> Package:
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            raise RecforgeError(f"{directory}: not a recforge package (no manifest.json); run `recforge package`")
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise RecforgeError(f"{directory}: package format {found} is not {PACKAGE_FORMAT}")
        check_manifest(directory, manifest, verify=verify)  # the file list always, the sha256s with verify
        params = Params.model_validate(read_json(directory / "params.json"))
        return cls(directory=directory, manifest=manifest, params=params, verify=verify)

    @cached_property
    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.directory / "items.parquet")

    @cached_property
    def maps(self) -> IdMaps:
        users = pd.read_parquet(self.directory / "users.parquet")["user_id"]
        return IdMaps(
            user_ids=pd.Index(users.to_numpy(), name="user_id"),
            item_ids=pd.Index(self.items["item_id"].to_numpy(), name="item_id"),
        )

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.directory / "metrics.json")

    @property
    def encoders(self) -> list[str]:
        """Encoders with packaged item embeddings (in name order)."""
        return list(self.manifest.get("encoders", []))

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, items): each user's train+val items in time order."""
        with np.load(self.directory / "history.npz", allow_pickle=False) as data:
            return data["indptr"], data["items"]

    def events(self) -> Interactions:
        """The train+val history as Interactions (with timestamps and ratings: what the re-ranker's features read)."""
        with np.load(self.directory / "history.npz", allow_pickle=False) as data:
            indptr, item_ids = data["indptr"], data["items"]
            timestamps = data["timestamps"] if "timestamps" in data else np.zeros(len(item_ids), np.int64)
            ratings = data.get("ratings")
        return Interactions(
            user_ids=np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr)),
            item_ids=item_ids,
            timestamps=timestamps,
            ratings=ratings,
            n_users=len(indptr) - 1,
            n_items=len(self.items),
        )

    def rerank_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """(indptr, items, scores, list length): every known user's re-ranked list; None when not packaged."""
        path = self.directory / RERANK_LISTS
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return data["indptr"], data["items"].astype(np.int64), data["scores"], int(data["length"])

    @property
    def profiles_dir(self) -> Path:
        """Where the package keeps the encode stage's user profiles (train+val)."""
        return self.directory / "profiles"

    def profiles(self, encoders: list[str]) -> dict[str, np.ndarray]:
        """The packaged user profile vectors (train+val, as the encode stage wrote them) of those ``encoders``
        that have them; empty when the package carries no profiles."""
        from recforge.profiles import UserProfiles

        loaded = UserProfiles.load_available(self.profiles_dir, encoders)
        return dict(loaded.vectors) if loaded is not None else {}

    def embeddings(self, name: str) -> np.ndarray:
        path = self.directory / "embeddings" / f"{name}.npy"
        if not path.exists():
            raise RecforgeError(f"{path}: no embeddings for encoder '{name}' in the package")
        return np.load(path, allow_pickle=False)

    def load_models(self, context: Any) -> dict[str, Any]:
        """Every packaged recommender, loaded once through the plugin registry."""
        from recforge import registry

        return {
            name: load_model_dir(self.directory / "models" / name, registry.recommenders, context, verify=self.verify)[
                0
            ]
            for name in self.manifest["models"]
        }

    def load_encoder(self, name: str) -> Any:
        """Encoder ``name`` as the encode stage fitted it (its saved state), or None when it cannot be loaded."""
        from recforge import registry

        state = self.directory / "embeddings" / "encoders" / name
        try:
            return registry.encoders.get(name).load(state)
        except Exception as exc:
            log.warning("text encoder %s unavailable (%s); /recommend/text falls back to popular", name, exc)
            return None
