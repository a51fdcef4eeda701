"""encode: item embeddings for every configured encoder (cached by content hash), and user profiles.

Outputs (paths from params.yaml):

    <embeddings_dir>/<encoder>.npy            [n_items, dim] float32, rows = items table
    <embeddings_dir>/encoders/<encoder>/      the fitted encoder's state (JSON + npz), to embed new text
    <profiles_dir>/{val,full}/                user profiles (see recforge.profiles)
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recforge import registry
from recforge.artifacts import atomic_dir, write_npy
from recforge.params import Params
from recforge.text import item_texts
from recforge.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = [
    "item_texts",
    "run_encode",
    "fitted_encoder",
    "encoder_and_embeddings",
    "stage_encoder",
    "encoder_state_dir",
    "write_profiles",
]


def _digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]


def _cache_key(name: str, options: dict[str, Any], digest: str) -> str:
    return hashlib.sha256(f"{name}|{sorted(options.items())}|{digest}".encode()).hexdigest()[:20]


def encoder_state_dir(params: Params, name: str) -> Path:
    """Where the encode stage leaves the fitted state of encoder ``name``."""
    return Path(params.paths.embeddings_dir) / "encoders" / name


def load_encoder_state(name: str, directory: Path):
    """An encoder restored from a directory written by its ``save``."""
    cls = registry.encoders.get(name)
    return cls.load(directory)


def fitted_encoder(params: Params, name: str, texts: Sequence[str] | None = None):
    """Encoder ``name`` as the encode stage fitted it: loaded from its saved state when
    present, otherwise created with ``encode.options[name]`` and fitted on ``texts``
    (default: the items' texts)."""
    state = encoder_state_dir(params, name)
    if state.exists() and any(state.iterdir()):
        try:
            return load_encoder_state(name, state)
        except Exception as exc:  # a stale or foreign state: refit rather than fail
            log.warning("encoder %s: could not load %s (%s); refitting", name, state, exc)
    encoder = registry.encoders.create(name, **dict(params.encode.options.get(name, {})))
    if texts is None:
        texts = item_texts(Workspace(params).items, params.encode.fields)
    encoder.fit(list(texts))
    return encoder


def _encode_items(params: Params, name: str, texts: list[str], digest: str):
    """(vectors, encoder state directory) for one encoder, from the cache when possible."""
    options = dict(params.encode.options.get(name, {}))
    cache = Path(params.paths.cache_dir) / "embeddings" / f"{name}-{_cache_key(name, options, digest)}"
    if (cache / "items.npy").exists() and (cache / "encoder").exists():
        vectors = np.load(cache / "items.npy", allow_pickle=False)
        log.info("encoder %s: %d items from cache", name, len(vectors))
        return vectors, cache / "encoder", None
    encoder = registry.encoders.create(name, **options)
    encoder.fit(texts)
    vectors = np.asarray(encoder.encode(texts, batch_size=params.encode.batch_size), dtype=np.float32)
    with atomic_dir(cache) as staging:
        np.save(staging / "items.npy", vectors, allow_pickle=False)
        encoder.save(staging / "encoder")
    log.info("encoder %s: encoded %d items (dim %d)", name, len(vectors), vectors.shape[1])
    return vectors, cache / "encoder", encoder


def encoder_and_embeddings(params: Params, name: str, items=None):
    """(fitted encoder, item embeddings) for encoder ``name`` through the encode cache.

    For models that need an encoder the encode stage was not configured with:
    the first call encodes and caches, later calls (the refit, the next run) load.
    """
    if items is None:
        items = Workspace(params).items
    texts = item_texts(items, params.encode.fields)
    vectors, state, encoder = _encode_items(params, name, texts, _digest(texts))
    return (encoder if encoder is not None else load_encoder_state(name, state)), vectors


def stage_encoder(params: Params, name: str, items=None):
    """(fitted encoder, item embeddings) for a model's fit (``FitContext.encoder_and_embeddings``).

    The encode stage's outputs when it wrote embeddings for ``name`` (its
    saved encoder state, refitted if that is missing or stale); otherwise
    both through the encode cache (:func:`encoder_and_embeddings`).
    """
    if items is None:
        items = Workspace(params).items
    path = Path(params.paths.embeddings_dir) / f"{name}.npy"
    if path.exists():
        vectors = np.load(path, allow_pickle=False)
        if len(vectors) == len(items):
            return fitted_encoder(params, name, item_texts(items, params.encode.fields)), vectors
    return encoder_and_embeddings(params, name, items)


def _encode_user_texts(params: Params, name: str, encoder, texts: list[str], item_digest: str) -> np.ndarray:
    """Embeddings of the users' own texts (cached like the items; empty texts give zero rows)."""
    options = dict(params.encode.options.get(name, {}))
    key = _cache_key(name, options, item_digest + _digest(texts))
    cached = Path(params.paths.cache_dir) / "embeddings" / f"{name}-users-{key}.npy"
    if cached.exists():
        return np.load(cached, allow_pickle=False)
    present = [i for i, t in enumerate(texts) if t]
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if present:
        encoded = encoder.encode([texts[i] for i in present], batch_size=params.encode.batch_size)
        vectors = np.zeros((len(texts), encoded.shape[1]), dtype=np.float32)
        vectors[present] = encoded
    write_npy(vectors, cached)
    return vectors


def write_profiles(
    params: Params, workspace: Workspace, vectors: dict[str, np.ndarray], encoders: dict[str, Any]
) -> None:
    """User profiles from train events (part 'val') and from train + val (part 'full')."""
    from recforge.profiles import PARTS, build_profiles, settings_from_params, user_texts

    settings = settings_from_params(params)
    texts, has_text = user_texts(workspace.users, workspace.maps, params.encode.user_fields)
    text_vectors = {}
    if has_text.any():
        digest = _digest(item_texts(workspace.items, params.encode.fields))
        for name, encoder in encoders.items():
            text_vectors[name] = _encode_user_texts(params, name, encoder, texts, digest)
    for part, events_name in PARTS.items():
        profiles = build_profiles(
            workspace.events(events_name),
            workspace.maps,
            workspace.items,
            vectors,
            settings,
            fields=params.encode.fields,
            user_text_vectors=text_vectors,
            has_text=has_text,
        )
        profiles.save(Path(params.paths.profiles_dir) / part)
    log.info("profiles for %d users (%d with own text)", len(workspace.maps.user_ids), int(has_text.sum()))


def run_encode(params: Params, variant: str | None = None) -> None:
    """Write ``<embeddings_dir>/<encoder>.npy`` (+ the fitted encoder) for each name in
    encode.encoders, and the user profiles when encode.profiles is on.

    A cache under ``paths.cache_dir`` keyed by encoder, options and a hash of
    the texts means a second run re-encodes nothing. With ``variant`` (one
    encoder) only that encoder's cache entry is filled: the part of the stage
    that can run in parallel; the whole stage then writes the outputs.
    """
    workspace = Workspace(params)
    texts = item_texts(workspace.items, params.encode.fields)
    digest = _digest(texts)
    if variant is not None:
        _encode_items(params, variant, texts, digest)
        return
    vectors: dict[str, np.ndarray] = {}
    encoders: dict[str, Any] = {}
    # the stage's outputs exist even when empty (no encoders, no profiles): dvc.yaml tracks them
    for directory in (params.paths.embeddings_dir, params.paths.profiles_dir):
        Path(directory).mkdir(parents=True, exist_ok=True)
    for name in params.encode.encoders:
        item_vectors, state, encoder = _encode_items(params, name, texts, digest)
        write_npy(item_vectors, Path(params.paths.embeddings_dir) / f"{name}.npy")
        with atomic_dir(encoder_state_dir(params, name)) as staging:
            shutil.copytree(state, staging, dirs_exist_ok=True)
        vectors[name] = item_vectors
        encoders[name] = encoder
    if params.encode.profiles:
        if not (Path(params.paths.split_dir) / "train.parquet").exists():
            log.warning("no split yet: user profiles skipped (run `recforge stage split` first)")
            return
        needs_text = workspace.users is not None
        for name in list(encoders):
            if encoders[name] is None and needs_text:
                encoders[name] = load_encoder_state(name, encoder_state_dir(params, name))
        write_profiles(params, workspace, vectors, encoders)
