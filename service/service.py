"""recforge's BentoML service: one class, everything loaded once in ``__init__``.

All logic lives in :mod:`recforge.serving` (the ``Engine``); this file only maps
HTTP to it. What it serves, in order of precedence:

- ``RECFORGE_PACKAGE_DIR``: a package directory written by ``build_package``
  (development and tests; no model store needed);
- ``RECFORGE_MODEL_TAG``: an exact BentoML model-store tag (``name:version``);
- ``recforge_model.json`` beside this file: written by ``recforge package``
  into the Bento's build context, so a built Bento pins the exact model tag it
  was built with (never ``:latest``).

Security: every route but the health checks (/livez, /readyz, /healthz)
requires ``Authorization: Bearer <RECFORGE_API_TOKEN>`` when that variable is
set. Bind to 127.0.0.1 (the default of ``make serve`` and ``recforge serve``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os

# one BLAS/OpenMP thread per worker unless told otherwise: set before numpy and torch load (see limit_threads)
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, os.environ.get("RECFORGE_THREADS", "1"))
from pathlib import Path  # noqa: E402
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound
from pydantic import Field
from starlette.responses import JSONResponse

from recforge.errors import RecforgeError
from recforge.serving import MAX_K, BadRequestError, Explanation, NotFoundError, Recommendations

log = logging.getLogger("recforge.service")
HERE = Path(__file__).resolve().parent
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
TRIVIAL = [{"item_id": i, "title": f"item {i}", "score": 1.0} for i in range(10)]


def pinned_tag() -> str | None:
    """The exact model tag this service serves (env first, then the file ``recforge package`` wrote)."""
    tag = os.environ.get("RECFORGE_MODEL_TAG")
    if not tag and (HERE / "recforge_model.json").exists():
        tag = json.loads((HERE / "recforge_model.json").read_text())["tag"]
    if tag and (":" not in tag or tag.endswith(":latest")):
        raise RuntimeError(f"RECFORGE_MODEL_TAG must be an exact name:version, got {tag!r}")
    return tag or None


def _device() -> str:
    return os.environ.get("RECFORGE_DEVICE", "auto")


K = Annotated[int, Field(ge=1, le=MAX_K, description=f"number of items, 1..{MAX_K}")]
Id = str | int


class BearerToken:
    """ASGI middleware: a constant-time bearer-token check on every non-health route."""

    def __init__(self, app: Any, token: str | None = None) -> None:
        self.app = app
        self.token = (token or os.environ.get("RECFORGE_API_TOKEN") or "").encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.token and scope["type"] == "http" and scope.get("path") not in PUBLIC_PATHS:
            supplied = b""
            for name, value in scope.get("headers", []):
                if name == b"authorization" and value[:7].lower() == b"bearer ":
                    supplied = value[7:].strip()
            if not hmac.compare_digest(supplied, self.token):
                response = JSONResponse(
                    {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class GetMetadata:
    """ASGI middleware answering ``GET /metadata`` (BentoML's own APIs are POST-only)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET" and scope.get("path", "").rstrip("/") == "/metadata":
            response = JSONResponse(bentoml.get_current_service().engine.metadata())
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _errors(call):
    """Translate engine errors into HTTP errors with a message (the worker keeps running)."""
    try:
        return call()
    except NotFoundError as exc:
        raise NotFound(str(exc)) from None
    except (BadRequestError, RecforgeError, ValueError) as exc:
        raise InvalidArgument(str(exc)) from None


_TAG = pinned_tag()


@bentoml.service(
    name="recforge",
    resources={"gpu": 1} if _device() == "cuda" else {"cpu": "1"},
    workers=int(os.environ.get("RECFORGE_WORKERS", "1")),
    traffic={"timeout": 30},
    http={"host": "127.0.0.1"},
    logging={"access": {"enabled": os.environ.get("RECFORGE_ACCESS_LOG", "1") != "0", "skip_paths": ["/livez", "/readyz", "/metrics"]}},
)
class Recforge:
    """Online recommendations from the model that ``recforge package`` pinned.

    Endpoints whose work is a few small numpy products are ``async`` and run
    on the event loop (no thread hop); the text encoder releases the GIL in
    torch, so ``/recommend/text`` and ``/encode`` run in BentoML's threadpool.
    """

    if _TAG is not None:
        model_ref = bentoml.models.BentoModel(_TAG)

    def __init__(self) -> None:
        from recforge.serving import Engine, limit_threads

        package_dir = os.environ.get("RECFORGE_PACKAGE_DIR")
        if package_dir:
            directory = Path(package_dir)
        elif _TAG is not None:
            directory = Path(self.model_ref.path)
        else:
            raise RuntimeError("nothing to serve: run `recforge package`, or set RECFORGE_MODEL_TAG or RECFORGE_PACKAGE_DIR")
        self.engine = Engine.load(directory, device=_device(), model=os.environ.get("RECFORGE_MODEL") or None)
        limit_threads(int(os.environ.get("RECFORGE_THREADS", "1")))

    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: Id, k: K = 10, exclude_seen: bool = True, explain: bool = False) -> Recommendations:
        """Top-k for a user (original id); unknown users get the popular list with fallback='popular'."""
        call = lambda: _errors(lambda: self.engine.recommend(user_id, k, exclude_seen=exclude_seen, explain=explain))  # noqa: E731
        # explanations may run a generative model: keep them off the event loop
        return await asyncio.to_thread(call) if explain else call()

    @bentoml.api(route="/recommend/text")
    def recommend_text(self, text: Annotated[str, Field(min_length=1, max_length=10_000)], k: K = 10) -> Recommendations:
        """Cold start from a free-text description of someone's taste."""
        return _errors(lambda: self.engine.recommend_text(text, k))

    @bentoml.api(route="/recommend/history")
    async def recommend_history(self, item_ids: Annotated[list[Id], Field(max_length=1000)], k: K = 10) -> Recommendations:
        """An anonymous session: fold in an item history (oldest first); unknown items are listed."""
        return _errors(lambda: self.engine.recommend_history(item_ids, k))

    @bentoml.api(route="/similar-items")
    async def similar_items(self, item_id: Id, k: K = 10) -> Recommendations:
        """Items most similar to one item."""
        return _errors(lambda: self.engine.similar_items(item_id, k))

    @bentoml.api(route="/explain")
    def explain(self, user_id: Id, item_id: Id) -> Explanation:
        """Why ``item_id`` suits ``user_id``, grounded in the user's history."""
        return _errors(lambda: self.engine.explain(user_id, item_id))

    @bentoml.api(route="/encode", batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=50)
    def encode(self, texts: list[str]) -> np.ndarray:
        """Text embeddings from the served encoder; concurrent requests are batched together."""
        return _errors(lambda: self.engine.encode_texts(texts))

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict:
        """Model tag, data hash, metrics, counts and an example user id (also served on GET)."""
        return self.engine.metadata()

    @bentoml.api(route="/trivial")
    async def trivial(self) -> list[dict]:
        """A constant answer: the ceiling of this machine for the benchmark."""
        return TRIVIAL


Recforge.add_asgi_middleware(BearerToken)  # outermost: checked before anything else answers
Recforge.add_asgi_middleware(GetMetadata)
