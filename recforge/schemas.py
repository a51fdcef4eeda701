"""The online service's typed arguments, HTTP answers and errors, as plain pydantic models.

:class:`recforge.engine.Engine` returns these answers and raises these errors;
the BentoML service in ``service/`` maps them to HTTP (404, 400) and reads
:class:`ServeArgs` with ``bentoml.use_arguments``. Any other server can reuse
them unchanged.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recforge.errors import RecforgeError

# Per-field limits of every endpoint (declared in the OpenAPI schema through the request models' Field
# constraints; the body size limit ServeArgs.max_body_bytes is checked before any of them is parsed).
MAX_K = 100  # the most items one request may ask for
MAX_ID_CHARS = 128  # a string id
MAX_TEXT_CHARS = 10_000  # /recommend/text
MAX_HISTORY = 1_000  # /recommend/history item ids
MAX_ENCODE_TEXTS = 64  # /encode texts per request (the batch size of the encoder)
MAX_ENCODE_CHARS = 5_000  # /encode characters per text
MAX_ECHOED_IDS = 10  # unknown ids echoed back in an answer (the rest only counted)
MAX_EXPLAINED = 10  # default: items one /recommend?explain=true explains
EXPLAIN_BUDGET_S = 5.0  # default: seconds one request may spend on explanations
MAX_BODY_BYTES = 1 << 20  # default: request body size limit (413 above it)
MAX_CONCURRENCY = 100  # default: requests in flight per worker (429 above it)
MAX_FEEDBACK_BATCH = 1_000  # /feedback events per request (recforge.feedback checks every limit)
MAX_REVIEW_CHARS = 5_000  # /feedback review text
RATING_MIN, RATING_MAX = 0.0, 5.0  # /feedback rating
MAX_FUTURE_S = 86_400  # a /feedback timestamp may run ahead of the server clock by at most a day

# Request fields are strict (no coercion): the OpenAPI schema says integer, string or boolean, and a request
# that sends another JSON type is refused with 400, never converted (lax pydantic would read `false` as the
# id 0, `0` as `explain: false` and `1.0` as `k: 1`).
ItemId = (
    Annotated[str, Field(strict=True, min_length=1, max_length=MAX_ID_CHARS)]
    | Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
)
K = Annotated[int, Field(strict=True, ge=1, le=MAX_K, description=f"number of items, 1..{MAX_K}")]
Flag = Annotated[bool, Field(strict=True)]


class NotFoundError(RecforgeError):
    """An id the request names is not in the packaged model (HTTP 404)."""


class BadRequestError(RecforgeError):
    """A request the engine cannot answer as asked (HTTP 400)."""


class RecommendedItem(BaseModel):
    item_id: str | int
    title: str
    score: float
    explanation: str | None = None


class Recommendations(BaseModel):
    items: list[RecommendedItem]
    model: str
    fallback: str | None = Field(None, description="'popular' when the personalised path could not be used")
    user_id: str | int | None = None
    unknown_item_ids: list[str | int] = Field(
        default_factory=list, description=f"the first {MAX_ECHOED_IDS} unknown item ids of the request"
    )
    unknown_item_count: int = Field(0, description="how many item ids of the request are unknown")
    unexplained: int = Field(
        0, description="items left without an explanation (the per-request cap or time budget was reached)"
    )


class Explanation(BaseModel):
    user_id: str | int
    item_id: str | int
    title: str
    explanation: str
    evidence: dict[str, Any]


# ids and texts of /feedback: no ASCII control characters in ids, no NUL in a review (PostgreSQL text holds none)
FeedbackId = (
    Annotated[str, Field(strict=True, min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]
    | Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
)
# declared at start-up, so it is never later than what recforge.feedback accepts at request time (now + a day)
FEEDBACK_TIMESTAMP_MAX = int(time.time()) + MAX_FUTURE_S


class _FeedbackFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: FeedbackId
    item_id: FeedbackId
    review: Annotated[str, Field(max_length=MAX_REVIEW_CHARS, pattern=r"^[^\x00]*$")] | None = None
    timestamp: Annotated[int, Field(ge=0, le=FEEDBACK_TIMESTAMP_MAX)] | None = Field(
        None, description="epoch seconds, at most a day ahead; default: server time"
    )
    event_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = (
        Field(None, description="idempotency key: an event_id sent again is not stored again")
    )


class FeedbackEvent(_FeedbackFields):
    """A ``POST /feedback`` event without a rating (strict types; recforge.feedback checks it again)."""

    event: Literal["view", "click", "purchase", "dislike"]


class RatingEvent(_FeedbackFields):
    """A ``POST /feedback`` rating: the only event that carries (and needs) a ``rating``."""

    event: Literal["rating"]
    rating: Annotated[float, Field(ge=RATING_MIN, le=RATING_MAX, allow_inf_nan=False)]


AnyFeedbackEvent = Annotated[FeedbackEvent | RatingEvent, Field(discriminator="event")]


class FeedbackAck(BaseModel):
    """``POST /feedback``'s answer, sent after the events are committed."""

    received: int
    stored: int
    duplicates: int = Field(description="events whose event_id was already stored (not stored again)")


class ServeArgs(BaseModel):
    """What the service serves and how: ``bentoml serve|build ... --arg key=value``.

    ``recforge package`` builds the Bento with these (a built Bento keeps the
    arguments it was built with) and ``recforge serve`` passes them
    (:func:`recforge.bento.serve_command`). Exactly one of ``model_tag`` (an
    exact model-store tag, never ``:latest``) and ``package_dir`` (a package
    directory, for development) names what is served. The API token is not an
    argument: it comes from the environment (``RECFORGE_API_TOKEN``) only.
    """

    model_config = ConfigDict(extra="forbid")

    model_tag: str | None = Field(None, description="exact BentoML model-store tag, name:version")
    package_dir: str | None = Field(None, description="a package directory written by build_package")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: str | None = Field(None, description="the model /recommend uses (default: serve.model, auto)")
    workers: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="BLAS/OpenMP/torch threads per worker")
    access_log: bool = True
    allowed_hosts: str = Field(
        "", description="comma-separated Host header names answered besides the loopback names ('*': any)"
    )
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1024, description="request body limit (413 above)")
    max_concurrency: int = Field(MAX_CONCURRENCY, ge=1, description="requests in flight per worker (429 above)")
    max_explained: int = Field(MAX_EXPLAINED, ge=0, le=MAX_K, description="items one request explains")
    explain_budget_s: float = Field(EXPLAIN_BUDGET_S, gt=0, description="seconds one request spends explaining")
    feedback_url: str | None = Field(None, description="the feedback store (absolute SQLite path or postgresql://)")
    feedback_staleness_s: float = Field(1.0, ge=0, le=60, description="exclusion sets reused this long at most")
    feedback_foldin: bool = Field(False, description="fold a user's new interests into their history")
    follow_registry: str | None = Field(
        None, max_length=1024, description="follow this production registry (absolute path; recforge.follow)"
    )
    poll_s: float = Field(2.0, ge=0.1, le=300, description="seconds between two reads of the followed registry")

    @field_validator("follow_registry")
    @classmethod
    def _registry(cls, path: str | None) -> str | None:
        if path and (not path.startswith("/") or not path.endswith(".json") or not path.isprintable()):
            raise ValueError(f"follow_registry must be an absolute path to a .json file, got {path!r}")
        return path or None

    @field_validator("model_tag")
    @classmethod
    def _pinned(cls, tag: str | None) -> str | None:
        if tag and (":" not in tag or tag.endswith(":latest")):
            raise ValueError(f"model_tag must be an exact name:version, got {tag!r}")
        return tag or None

    def hosts(self) -> frozenset[str]:
        """Host header names the service answers: the loopback names and ``allowed_hosts``."""
        return LOOPBACK_NAMES | {h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()}

    def cli(self) -> list[str]:
        """``--arg key=value`` for every argument that is set (None is left to the default)."""
        values = self.model_dump(exclude_none=True)
        return [
            part
            for key, value in values.items()
            for part in ("--arg", f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        ]


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback
