"""recforge's BentoML service: one class, everything loaded once in ``__init__``.

All logic lives in :mod:`recforge.engine` (the ``Engine``); this file only maps
HTTP to it. What it serves and how come from its typed arguments
(:class:`recforge.schemas.ServeArgs`, read with ``bentoml.use_arguments``):

- ``model_tag``: an exact BentoML model-store tag (``name:version``);
  ``recforge package`` builds the Bento with it, so a built Bento pins the
  exact model it was built with (never ``:latest``);
- ``package_dir``: a package directory written by ``build_package``
  (development and tests; no model store needed);
- ``device``, ``model``, ``workers``, ``threads``, ``access_log``.

``bentoml serve service:Recforge --arg package_dir=/path --arg device=cpu``;
``recforge serve`` passes them from ``serve:`` in params.yaml.

Security: every route but the health checks (/livez, /readyz, /healthz)
requires ``Authorization: Bearer <RECFORGE_API_TOKEN>`` when that environment
variable is set (the only setting read from the environment). Bind to
127.0.0.1 (the default of ``make serve`` and ``recforge serve``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound
from pydantic import Field
from starlette.responses import JSONResponse

from recforge.errors import RecforgeError
from recforge.schemas import MAX_K, BadRequestError, Explanation, NotFoundError, Recommendations, ServeArgs

log = logging.getLogger("recforge.service")
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz"})

ARGS = bentoml.use_arguments(ServeArgs)


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
        if (
            scope["type"] == "http"
            and scope.get("method") == "GET"
            and scope.get("path", "").rstrip("/") == "/metadata"
        ):
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


@bentoml.service(
    name="recforge",
    resources={"gpu": 1} if ARGS.device == "cuda" else {"cpu": "1"},
    workers=ARGS.workers,
    traffic={"timeout": 30},
    http={"host": "127.0.0.1"},
    logging={"access": {"enabled": ARGS.access_log, "skip_paths": ["/livez", "/readyz", "/metrics"]}},
)
class Recforge:
    """Online recommendations from the model that ``recforge package`` pinned.

    Endpoints whose work is a few small numpy products are ``async`` and run
    on the event loop (no thread hop); the text encoder releases the GIL in
    torch, so ``/recommend/text`` and ``/encode`` run in BentoML's threadpool.
    """

    if ARGS.model_tag is not None:
        model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        from recforge.engine import Engine, limit_threads

        if ARGS.package_dir:
            directory = Path(ARGS.package_dir)
        elif ARGS.model_tag is not None:
            directory = Path(self.model_ref.path)
        else:
            raise RuntimeError(
                "nothing to serve: run `recforge package`, or pass --arg model_tag=... or --arg package_dir=..."
            )
        self.engine = Engine.load(directory, device=ARGS.device, model=ARGS.model)
        limit_threads(ARGS.threads)  # after loading: plugins may set their own thread counts while they load

    @bentoml.api(route="/recommend")
    async def recommend(
        self, user_id: Id, k: K = 10, exclude_seen: bool = True, explain: bool = False
    ) -> Recommendations:
        """Top-k for a user (original id); unknown users get the popular list with fallback='popular'."""
        call = lambda: _errors(lambda: self.engine.recommend(user_id, k, exclude_seen=exclude_seen, explain=explain))  # noqa: E731
        # explanations may run a generative model: keep them off the event loop
        return await asyncio.to_thread(call) if explain else call()

    @bentoml.api(route="/recommend/text")
    def recommend_text(
        self, text: Annotated[str, Field(min_length=1, max_length=10_000)], k: K = 10
    ) -> Recommendations:
        """Cold start from a free-text description of someone's taste."""
        return _errors(lambda: self.engine.recommend_text(text, k))

    @bentoml.api(route="/recommend/history")
    async def recommend_history(
        self, item_ids: Annotated[list[Id], Field(max_length=1000)], k: K = 10
    ) -> Recommendations:
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


Recforge.add_asgi_middleware(BearerToken)  # outermost: checked before anything else answers
Recforge.add_asgi_middleware(GetMetadata)
