"""encode: item embeddings for every configured encoder (cached by content hash), and user profiles.

Outputs (paths from params.yaml):

    <embeddings_dir>/<encoder>.npy            [n_items, dim] float32, rows = items table
    <embeddings_dir>/encoders/<encoder>/      the fitted encoder's state (JSON + npz), to embed new text
    <profiles_dir>/{val,full}/                user profiles (see recforge.profiles)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from recforge.artifacts import atomic_dir, write_npy
from recforge.encoding import (
    cache_key,
    embedding_cache_dir,
    encode_items,
    encoder_state_dir,
    load_encoder_state,
    text_digest,
)
from recforge.params import Params
from recforge.text import item_texts
from recforge.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = ["run_encode", "write_profiles"]


def _encode_user_texts(params: Params, name: str, encoder, texts: list[str], item_digest: str) -> np.ndarray:
    """Embeddings of the users' own texts (cached like the items; empty texts give zero rows)."""
    options = dict(params.encode.options.get(name, {}))
    key = cache_key(name, options, item_digest + text_digest(texts))
    cached = embedding_cache_dir(params) / f"{name}-users-{key}.npy"
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
        digest = text_digest(item_texts(workspace.items, params.encode.fields))
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
    digest = text_digest(texts)
    if variant is not None:
        encode_items(params, variant, texts, digest)
        return
    vectors: dict[str, np.ndarray] = {}
    encoders: dict[str, Any] = {}
    # the stage's outputs exist even when empty (no encoders, no profiles): dvc.yaml tracks them
    for directory in (params.paths.embeddings_dir, params.paths.profiles_dir):
        Path(directory).mkdir(parents=True, exist_ok=True)
    for name in params.encode.encoders:
        item_vectors, state, encoder = encode_items(params, name, texts, digest)
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
