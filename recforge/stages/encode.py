"""encode: item embeddings for every configured encoder (cached by content hash)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from recforge import registry
from recforge.artifacts import write_npy
from recforge.params import Params
from recforge.workspace import Workspace

log = logging.getLogger(__name__)


def item_texts(items, fields: list[str]) -> list[str]:
    """One string per item from the configured fields (missing fields are skipped)."""
    present = [f for f in fields if f in items]
    joined = items[present].fillna("").astype(str).agg(" ".join, axis=1) if present else items["item_id"].astype(str)
    return [text.replace("|", " ").strip() for text in joined]


def run_encode(params: Params) -> None:
    """Write ``<embeddings_dir>/<encoder>.npy`` for each name in encode.encoders.

    A cache under ``paths.cache_dir`` keyed by encoder, options and a hash of
    the texts means a second run re-encodes nothing.
    """
    workspace = Workspace(params)
    texts = item_texts(workspace.items, params.encode.fields)
    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    for name in params.encode.encoders:
        options = dict(params.encode.options.get(name, {}))
        key = hashlib.sha256(f"{name}|{sorted(options.items())}|{digest}".encode()).hexdigest()[:20]
        cached = Path(params.paths.cache_dir) / "embeddings" / f"{name}-{key}.npy"
        if cached.exists():
            vectors = np.load(cached, allow_pickle=False)
            log.info("encoder %s: %d items from cache", name, len(vectors))
        else:
            encoder = registry.encoders.create(name, **options)
            encoder.fit(texts)
            vectors = np.asarray(encoder.encode(texts, batch_size=params.encode.batch_size), dtype=np.float32)
            write_npy(vectors, cached)
        write_npy(vectors, Path(params.paths.embeddings_dir) / f"{name}.npy")
