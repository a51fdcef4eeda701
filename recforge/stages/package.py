"""package: the trained pipeline -> BentoML model store -> a Bento.

1. :func:`recforge.bento.store_package` copies the served artifacts (every
   model's ``full`` part, embeddings and encoder states, profiles, id maps,
   items, histories, params without secrets, metrics), each copied checked,
   into the model-store entry ``recforge-model:d<data hash>-p<params hash>-c<content
   hash>`` (the content hash covers every file: an entry is reused only for the
   same files and never rewritten); its manifest lists exactly the package's
   files with their sha256, checked again when the service loads it.
2. :func:`recforge.bento.build_bento` runs ``bentoml build`` on a staging
   copy of ``service/`` with the service's arguments (``--arg``), the exact
   model tag among them, so the Bento bundles and serves exactly this model
   (never ``:latest``).

``BENTOML_HOME`` chooses the store (default ``~/bentoml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recforge.params import Params


def run_package(params: Params, variant: str | None = None, *, build: bool | None = None) -> dict[str, Any]:
    """Save the trained pipeline to the model store and (with ``serve.build``, or ``build``) build the Bento.

    Returns ``{"model_tag": ..., "bento_tag": ... | None, ...}`` and writes the
    same to ``<reports_dir>/package.json``, with the arguments the Bento was
    built with (``recforge serve`` compares them with the params it is given).
    The stage has no variants (``variant`` is always None).
    """
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    from recforge.artifacts import write_json
    from recforge.bento import build_bento, serve_args, store_package

    tag, manifest = store_package(params)
    args = serve_args(params, model_tag=tag)
    bento_tag = build_bento(args) if (params.serve.build if build is None else build) else None
    result = {
        "model_tag": tag,
        "bento_tag": bento_tag,
        "models": manifest["models"],
        "data_hash": manifest["data_hash"],
        "serve_args": args.model_dump() if bento_tag else None,
    }
    write_json(result, Path(params.paths.reports_dir) / "package.json")
    return result
