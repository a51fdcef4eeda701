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

Exposure (docs/security.md):

- a bearer token (``RECFORGE_API_TOKEN``, the only setting read from the
  environment) guards every route but the health checks (/livez, /readyz,
  /healthz); with no token the service answers only requests that arrive on a
  loopback address (403 otherwise), and refuses to start when ``allowed_hosts``
  names a non-loopback host. ``recforge serve`` on a non-loopback
  ``serve.host`` makes a token and prints it once when none is set;
- the Host header must be a loopback name or one of ``allowed_hosts`` (400
  otherwise: DNS rebinding);
- POST bodies must be JSON (415: no text/plain or form bodies, which browsers
  send cross-origin without a preflight) and at most ``max_body_bytes`` (413,
  checked before anything is parsed);
- per-field limits in the request models (OpenAPI shows them), at most
  ``max_concurrency`` requests in flight per worker (429), explanations
  bounded per request (``max_explained`` items, ``explain_budget_s`` seconds);
- every 4xx answers ``{"error": str, "detail": str}`` as the schema declares,
  and is logged as one line, not a traceback.

Versions: every answer names the model version that computed it
(``X-Recforge-Model-Version``; ``model_version`` in /metadata). The Guard pins
the current engine to a request when it arrives; with ``follow_registry``
(``recforge serve --follow production``) each worker hot-swaps to each new
production version (recforge.follow) and a request in flight finishes on the
engine it was pinned to.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from bentoml.validators import DType, Shape
from pydantic import Field, ValidationError
from starlette.responses import JSONResponse

from recforge.errors import RecforgeError
from recforge.follow import VERSION_HEADER, EngineSlot, model_version, pin, unpin
from recforge.schemas import (
    MAX_ENCODE_CHARS,
    MAX_ENCODE_TEXTS,
    MAX_FEEDBACK_BATCH,
    MAX_HISTORY,
    MAX_TEXT_CHARS,
    AnyFeedbackEvent,
    BadRequestError,
    Explanation,
    FeedbackAck,
    Flag,
    K,
    NotFoundError,
    Recommendations,
    ServeArgs,
    is_loopback,
)
from recforge.schemas import ItemId as Id

log = logging.getLogger("recforge.service")
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz"})

ARGS = bentoml.use_arguments(ServeArgs)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware in front of every route: Host, token, JSON content type, body size, error shape.

    One class, pure ASGI, so a request pays a few dictionary lookups and no
    extra task. ``GET /metadata`` is answered here (BentoML's own APIs are
    POST-only) and ``GET /docs.json`` serves BentoML's schema completed with
    what this layer answers (401, 403, 413, 415, 429, 504 and GET /metadata).
    """

    def __init__(self, app: Any, token: str | None = None, args: ServeArgs | None = None) -> None:
        self.app = app
        self.token = (token if token is not None else os.environ.get("RECFORGE_API_TOKEN") or "").encode()
        args = args or ARGS
        self.hosts = args.hosts()
        self.any_host = "*" in self.hosts
        self.max_body = args.max_body_bytes
        self._schema: bytes | None = None
        self._methods: dict[str, frozenset[str]] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        engine = _serving() if scope["type"] == "http" else None
        if engine is None:
            await self._guarded(scope, receive, send)
            return
        token = pin(engine)  # this request's engine, from its first line to its last (recforge.follow)
        try:
            await self._guarded(scope, receive, _Versioned(send, model_version(engine).encode("latin-1")))
        finally:
            unpin(token)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        method = scope.get("method")
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await self._answer(scope, receive, send, refusal)
            return
        allowed = self._allowed(path)
        if allowed is not None and method not in allowed and not (method == "HEAD" and "GET" in allowed):
            allow = ", ".join(sorted(allowed))
            await self._answer(scope, receive, send, _error(405, f"{method} is not allowed here", {"Allow": allow}))
            return
        if method in ("GET", "HEAD") and path.rstrip("/") == "/metadata":  # HEAD: the server sends no body
            await JSONResponse(_metadata(bentoml.get_current_service()))(scope, receive, send)
            return
        if method == "GET" and path == "/docs.json":
            await self._docs(scope, receive, send)
            return
        if method == "POST":
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media != b"application/json":
                await self._answer(
                    scope, receive, send, _error(415, "the request body must be JSON (Content-Type: application/json)")
                )
                return
            length = headers.get(b"content-length")
            if length is not None:
                if not length.isdigit() or int(length) > self.max_body:
                    await self._answer(scope, receive, send, self._too_large())
                    return
            else:  # chunked: read it here, up to the limit, before anything parses it
                body, more = bytearray(), True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_body:
                        await self._answer(scope, receive, send, self._too_large())
                        return
                receive = _replay(bytes(body))
        await self.app(scope, receive, _ErrorShape(scope, send))

    def _refusal(self, scope: dict, headers: dict[bytes, bytes]) -> JSONResponse | None:
        if not self.any_host:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            if _host_name(host) not in self.hosts:
                return _error(400, f"Host {host!r} is not served here (serve.allowed_hosts)")
        if not self.token:
            server = scope.get("server")
            if server and not is_loopback(str(server[0])):
                return _error(403, "this service has no API token: it answers on loopback only (RECFORGE_API_TOKEN)")
            return None
        supplied = headers.get(b"authorization", b"")
        supplied = supplied[7:].strip() if supplied[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(supplied, self.token):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return None

    def _allowed(self, path: str) -> frozenset[str] | None:
        """The methods the OpenAPI schema declares for ``path`` (None: a path it does not name).

        A declared path answers any other method with 405 and ``Allow`` here, before the content-type
        check (``POST /metrics`` is 405, not 415); HEAD goes on wherever GET is declared.
        """
        if self._methods is None:
            try:
                paths = openapi_schema()["paths"]
            except Exception:  # without the schema, routing answers as before
                log.exception("could not build the OpenAPI schema")
                paths = {}
            self._methods = {route: frozenset(m.upper() for m in item) for route, item in paths.items()}
        return self._methods.get(path)

    def _too_large(self) -> JSONResponse:
        return _error(413, f"the request body is larger than {self.max_body} bytes")

    async def _answer(self, scope: dict, receive: Any, send: Any, response: JSONResponse) -> None:
        log.warning(
            "%d %s %s: %s", response.status_code, scope.get("method"), scope.get("path"), response.body.decode()
        )
        await response(scope, receive, send)

    async def _docs(self, scope: dict, receive: Any, send: Any) -> None:
        if self._schema is None:
            try:
                self._schema = json.dumps(openapi_schema(secured=bool(self.token))).encode()
            except Exception:  # an exception here would hang until BentoML's traffic timeout
                log.exception("could not build the OpenAPI schema")
                await _error(500, "could not build the OpenAPI schema")(scope, receive, send)
                return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self._schema})


def _serving() -> Any:
    """The engine new requests get (None before the service is instantiated)."""
    try:
        return bentoml.get_current_service().engine
    except (BentoMLException, AttributeError):
        return None


def _metadata(service: Any) -> dict[str, Any]:
    """/metadata: the request's engine's, with the follower's state when the worker follows production."""
    follower = getattr(service, "follower", None)
    return {**service.engine.metadata(), "follow": follower.status() if follower is not None else None}


class _Versioned:
    """``send`` wrapper: the response names the model version that answered (``X-Recforge-Model-Version``)."""

    __slots__ = ("send", "version")

    def __init__(self, send: Any, version: bytes) -> None:
        self.send, self.version = send, version

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != VERSION_HEADER]
            message = {**message, "headers": [*headers, (VERSION_HEADER, self.version)]}
        await self.send(message)


def _host_name(host: str) -> str:
    """The name of a Host header without its port (``[::1]:3000`` -> ``[::1]``, ``localhost:3000`` -> ``localhost``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _ErrorShape:
    """``send`` wrapper: a 4xx body becomes ``{"error": str, "detail": str}`` (the declared schema) and one log line.

    BentoML answers a validation error with ``detail`` as a list and an
    ``InvalidArgument`` with a one-element list; only 4xx bodies are touched.
    """

    __slots__ = ("scope", "send", "start")

    def __init__(self, scope: dict, send: Any) -> None:
        self.scope, self.send, self.start = scope, send, None

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            if 400 <= message["status"] < 500:
                self.start = message
                return
        elif self.start is not None and message["type"] == "http.response.body":
            if message.get("more_body"):  # an error body in parts: not BentoML's, passed on unchanged
                start, self.start = self.start, None
                await self.send(start)
            else:
                body, error = _error_body(message.get("body", b""))
                log.warning(
                    "%d %s %s: %s", self.start["status"], self.scope.get("method"), self.scope.get("path"), error
                )
                headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await self.send({**self.start, "headers": headers})
                self.start = None
                await self.send({"type": "http.response.body", "body": body})
                return
        await self.send(message)


def _error_body(raw: bytes) -> tuple[bytes, str]:
    try:
        data = json.loads(raw)
    except ValueError:
        data = {"error": raw.decode("utf-8", "replace").strip() or "bad request"}
    if isinstance(data, list):
        data = data[0] if data and isinstance(data[0], dict) else {"error": json.dumps(data)}
    if not isinstance(data, dict):
        data = {"error": str(data)}
    detail = data.get("detail")
    if isinstance(detail, list):  # pydantic errors: name each field and what is wrong with it
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', '')}"
            for e in detail
            if isinstance(e, dict)
        ]
        data = {"error": "; ".join(problems[:5]) or str(data.get("error")), "detail": str(data.get("error", ""))}
    answer = {"error": str(data.get("error") or "bad request")}
    if data.get("detail") is not None:
        answer["detail"] = str(data["detail"])
    return json.dumps(answer).encode(), answer["error"]


class _ClientErrorsOneLine(logging.Filter):
    """Drops BentoML's traceback for a client error (the Guard logs it as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError | json.JSONDecodeError):
            return False
        return not (isinstance(error, BentoMLException) and int(error.error_code) < 500)


ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error"],
}
GUARD_ANSWERS = {
    "401": "missing or wrong bearer token",
    "403": "no API token is set and the request did not arrive on loopback",
    "413": "request body too large",
    "415": "the request body is not JSON",
    "429": "too many requests in flight",
    "504": "not answered within the time limit",
}


REF = "#/components/schemas/{model}"


def _openapi30(schema: Any, components: dict[str, Any]) -> Any:
    """A pydantic JSON schema in OpenAPI 3.0 terms: ``$defs`` into ``components``, ``anyOf [..., null]`` as nullable."""
    if isinstance(schema, list):
        return [_openapi30(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = dict(schema)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = _openapi30(definition, components)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option != {"type": "null"}]
        nullable = len(options) < len(schema["anyOf"])
        if len(options) == 1 and "$ref" not in options[0]:
            del schema["anyOf"]
            schema.update(options[0])
            if nullable:
                schema["nullable"] = True
        else:  # OpenAPI 3.0 reads nullable beside a type: on each member
            schema["anyOf"] = [{**option, "nullable": True} if nullable else option for option in options]
    return {key: _openapi30(value, components) for key, value in schema.items()}


def openapi_schema(secured: bool = False) -> dict[str, Any]:
    """BentoML's schema of this service, completed with what the Guard answers and ``GET /metadata``.

    Every API's JSON body is declared required (the Guard refuses a POST without one: 415); with
    ``secured`` (an API token is set) every route but the health checks declares the bearer scheme.
    """
    spec = Recforge.openapi_spec.asdict()
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    if secured:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, item in spec["paths"].items():
        for operation in item.values():
            operation["responses"] = responses = {str(k): v for k, v in operation.get("responses", {}).items()}
            if path in PUBLIC_PATHS:
                continue
            if secured:
                operation["security"] = [{"bearer": []}]
            for status, description in GUARD_ANSWERS.items():
                responses.setdefault(status, {"description": description, "content": error})
            if path not in ("/metrics", "/docs.json", "/"):
                responses.setdefault("400", {"description": "bad request", "content": error})
    # BentoML flattens each anyOf to its first member (an id ``str | int`` becomes a string, an optional field
    # loses null): every request and answer model is declared from its own pydantic schema instead
    schemas = spec["components"]["schemas"]
    for api in Recforge.apis.values():
        operation = spec["paths"][api.route]["post"]
        request = _openapi30(api.input_spec.model_json_schema(ref_template=REF), schemas)
        operation["requestBody"]["content"]["application/json"]["schema"] = request
        operation["requestBody"]["required"] = True
        if issubclass(api.output_spec, Recommendations | Explanation):
            answer = _openapi30(api.output_spec.model_json_schema(ref_template=REF), schemas)
            operation["responses"]["200"]["content"]["application/json"]["schema"] = answer
    metadata = spec["paths"].get("/metadata", {}).get("post")
    if metadata is not None:
        get = copy.deepcopy(metadata)
        get.pop("requestBody", None)
        get["operationId"] = f"{get.get('operationId', 'metadata')}_get"
        spec["paths"]["/metadata"]["get"] = get
    return spec


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
    traffic={"timeout": 30, "max_concurrency": ARGS.max_concurrency},
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

    engine = EngineSlot()  # the request's pinned engine, else the current one; assigning it is the switch
    follower = None

    def __init__(self) -> None:
        from recforge.engine import Engine
        from recforge.threads import limit_threads

        if ARGS.package_dir:
            directory = Path(ARGS.package_dir)
        elif ARGS.model_tag is not None:
            directory = Path(self.model_ref.path)
        else:
            raise RuntimeError(
                "nothing to serve: run `recforge package`, or pass --arg model_tag=... or --arg package_dir=..."
            )
        if not os.environ.get("RECFORGE_API_TOKEN") and not all(is_loopback(h) for h in ARGS.hosts() - {"*"}):
            raise RuntimeError(
                f"allowed_hosts {ARGS.allowed_hosts!r} names a non-loopback host but RECFORGE_API_TOKEN is not set: "
                "a public service needs a token (`recforge serve` makes one)"
            )
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrorsOneLine())
        load = lambda path: Engine.load(  # noqa: E731 - the same arguments for the first and every followed package
            path,
            device=ARGS.device,
            model=ARGS.model,
            max_explained=ARGS.max_explained,
            explain_budget_s=ARGS.explain_budget_s,
            feedback_url=ARGS.feedback_url,
            feedback_staleness_s=ARGS.feedback_staleness_s,
            feedback_foldin=ARGS.feedback_foldin,
        )
        self.engine = load(directory)
        limit_threads(ARGS.threads)  # after loading: plugins may set their own thread counts while they load
        if ARGS.follow_registry:
            from recforge.follow import Follower

            slot = inspect.getattr_static(type(self), "engine")
            self.follower = Follower(self, slot, Path(ARGS.follow_registry), ARGS.poll_s, load).start()

    @bentoml.api(route="/recommend")
    async def recommend(
        self, user_id: Id, k: K = 10, exclude_seen: Flag = True, explain: Flag = False
    ) -> Recommendations:
        """Top-k for a user (original id); unknown users get the popular list with fallback='popular'."""
        call = lambda: _errors(lambda: self.engine.recommend(user_id, k, exclude_seen=exclude_seen, explain=explain))  # noqa: E731
        # explanations may run a generative model: keep them off the event loop
        return await asyncio.to_thread(call) if explain else call()

    @bentoml.api(route="/recommend/text")
    def recommend_text(
        self, text: Annotated[str, Field(strict=True, min_length=1, max_length=MAX_TEXT_CHARS)], k: K = 10
    ) -> Recommendations:
        """Cold start from a free-text description of someone's taste."""
        return _errors(lambda: self.engine.recommend_text(text, k))

    @bentoml.api(route="/recommend/history")
    async def recommend_history(
        self, item_ids: Annotated[list[Id], Field(max_length=MAX_HISTORY)], k: K = 10
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
    def encode(
        self,
        texts: Annotated[
            list[Annotated[str, Field(strict=True, max_length=MAX_ENCODE_CHARS)]],
            Field(min_length=1, max_length=MAX_ENCODE_TEXTS),
        ],
    ) -> Annotated[np.ndarray, Shape((-1, -1)), DType("float32")]:
        """Text embeddings from the served encoder; concurrent requests are batched together."""
        return _errors(lambda: self.engine.encode_texts(texts))

    if ARGS.feedback_url:  # no store, no route (404): nothing would be recorded

        @bentoml.api(route="/feedback")
        def feedback(
            self, events: Annotated[list[AnyFeedbackEvent], Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)]
        ) -> FeedbackAck:
            """Record what users did (1 to 1,000 events); answered only after the events are committed."""
            return _errors(lambda: self.engine.record_feedback([e.model_dump(exclude_none=True) for e in events]))

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict:
        """Model tag and version, data hash, metrics, counts, an example user id, follow state (also on GET)."""
        return _metadata(self)


Recforge.add_asgi_middleware(Guard)  # before anything of ours answers (BentoML's traffic limits come first)
