"""The online service's typed arguments, HTTP answers and errors, as plain pydantic models.

:class:`recforge.engine.Engine` returns these answers and raises these errors;
the BentoML service in ``service/`` maps them to HTTP (404, 400) and reads
:class:`ServeArgs` with ``bentoml.use_arguments``. Any other server can reuse
them unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recforge.errors import RecforgeError

MAX_K = 100  # the most items one request may ask for


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
    unknown_item_ids: list[str | int] = Field(default_factory=list)


class Explanation(BaseModel):
    user_id: str | int
    item_id: str | int
    title: str
    explanation: str
    evidence: dict[str, Any]


class ServeArgs(BaseModel):
    """What the service serves and how: ``bentoml serve|build ... --arg key=value``.

    ``recforge package`` builds the Bento with these (a built Bento keeps the
    arguments it was built with) and ``recforge serve`` passes them
    (:func:`recforge.packaging.serve_command`). Exactly one of ``model_tag`` (an
    exact model-store tag, never ``:latest``) and ``package_dir`` (a package
    directory, for development) names what is served. The API token is not an
    argument: it comes from the environment (``RECFORGE_API_TOKEN``) only.
    """

    model_config = ConfigDict(extra="forbid")

    model_tag: str | None = Field(None, description="exact BentoML model-store tag, name:version")
    package_dir: str | None = Field(None, description="a package directory written by build_package")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: str | None = Field(None, description="the model /recommend uses (default: best validation NDCG)")
    workers: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="BLAS/OpenMP/torch threads per worker")
    access_log: bool = True

    @field_validator("model_tag")
    @classmethod
    def _pinned(cls, tag: str | None) -> str | None:
        if tag and (":" not in tag or tag.endswith(":latest")):
            raise ValueError(f"model_tag must be an exact name:version, got {tag!r}")
        return tag or None

    def cli(self) -> list[str]:
        """``--arg key=value`` for every argument that is set (None is left to the default)."""
        values = self.model_dump(exclude_none=True)
        return [
            part
            for key, value in values.items()
            for part in ("--arg", f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        ]
