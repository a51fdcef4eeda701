"""An encoder fitted as the encode stage fits it, and the encode cache.

Where the encode stage leaves a fitted encoder's state, how it is loaded back,
and the cache of item embeddings under ``paths.cache_dir`` keyed by encoder,
options and a hash of the texts. The encode stage (:mod:`recforge.stages.encode`)
writes through it; a model's fit reads through it
(:meth:`recforge.workspace.Workspace.encoder_and_embeddings`, the
``FitContext.encoder_and_embeddings`` a content model asks). It reads no
workspace itself: the items or texts are always handed in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge import registry
from recforge.artifacts import atomic_dir
from recforge.params import Params
from recforge.text import item_texts

log = logging.getLogger(__name__)


def text_digest(texts: Sequence[str]) -> str:
    """A short content hash of ``texts`` (part of a cache key)."""
    return hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]


def cache_key(name: str, options: dict[str, Any], digest: str) -> str:
    """The cache key of encoder ``name`` with ``options`` over texts hashed to ``digest``."""
    return hashlib.sha256(f"{name}|{sorted(options.items())}|{digest}".encode()).hexdigest()[:20]


def encoder_state_dir(params: Params, name: str) -> Path:
    """Where the encode stage leaves the fitted state of encoder ``name``."""
    return Path(params.paths.embeddings_dir) / "encoders" / name


def load_encoder_state(name: str, directory: Path):
    """An encoder restored from a directory written by its ``save``."""
    cls = registry.encoders.get(name)
    return cls.load(directory)


def fitted_encoder(params: Params, name: str, texts: Sequence[str]):
    """Encoder ``name`` as the encode stage fitted it: loaded from its saved state when
    present, otherwise created with ``encode.options[name]`` and fitted on ``texts``
    (the items' texts)."""
    state = encoder_state_dir(params, name)
    if state.exists() and any(state.iterdir()):
        try:
            return load_encoder_state(name, state)
        except Exception as exc:  # a stale or foreign state: refit rather than fail
            log.warning("encoder %s: could not load %s (%s); refitting", name, state, exc)
    encoder = registry.encoders.create(name, **dict(params.encode.options.get(name, {})))
    encoder.fit(list(texts))
    return encoder


def embedding_cache_dir(params: Params) -> Path:
    """The folder of cached item and user embeddings (one entry per encoder, options and text digest)."""
    return Path(params.paths.cache_dir) / "embeddings"


def encode_items(params: Params, name: str, texts: list[str], digest: str):
    """(vectors, encoder state directory, the encoder when fitted here, else None) for one encoder,
    from the cache when possible."""
    options = dict(params.encode.options.get(name, {}))
    cache = embedding_cache_dir(params) / f"{name}-{cache_key(name, options, digest)}"
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


def encoder_and_embeddings(params: Params, name: str, items: pd.DataFrame):
    """(fitted encoder, item embeddings) for encoder ``name`` through the encode cache.

    For models that need an encoder the encode stage was not configured with:
    the first call encodes and caches, later calls (the refit, the next run) load.
    """
    texts = item_texts(items, params.encode.fields)
    vectors, state, encoder = encode_items(params, name, texts, text_digest(texts))
    return (encoder if encoder is not None else load_encoder_state(name, state)), vectors


def stage_encoder(params: Params, name: str, items: pd.DataFrame):
    """(fitted encoder, item embeddings) for a model's fit (``FitContext.encoder_and_embeddings``).

    The encode stage's outputs when it wrote embeddings for ``name`` (its
    saved encoder state, refitted if that is missing or stale); otherwise
    both through the encode cache (:func:`encoder_and_embeddings`).
    """
    path = Path(params.paths.embeddings_dir) / f"{name}.npy"
    if path.exists():
        vectors = np.load(path, allow_pickle=False)
        if len(vectors) == len(items):
            return fitted_encoder(params, name, item_texts(items, params.encode.fields)), vectors
    return encoder_and_embeddings(params, name, items)
