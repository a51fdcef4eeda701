"""params.yaml: the single source of configuration, validated with pydantic.

DVC reads the same file (per-key ``params:`` in dvc.yaml) and Prefect flows
take it plus overrides. Overrides use the syntax of ``dvc exp run -S``:
``section.key=value`` where value is parsed as YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recforge.errors import RecforgeError

DEFAULT_PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathsParams(_Section):
    canonical_dir: str = "data/canonical"
    split_dir: str = "data/split"
    embeddings_dir: str = "artifacts/embeddings"
    profiles_dir: str = "artifacts/profiles"
    models_dir: str = "artifacts/models"
    lists_dir: str = "artifacts/lists"
    recs_dir: str = "artifacts/recs"
    reports_dir: str = "reports"
    metrics_file: str = "metrics/metrics.json"
    plots_dir: str = "plots"
    cache_dir: str = ".recforge-cache"


class SyntheticParams(_Section):
    num_users: int = Field(1000, ge=2)
    num_items: int = Field(500, ge=2)
    num_interactions: int = Field(30_000, ge=10)
    num_topics: int = Field(8, ge=1)
    drift: float = Field(0.3, ge=0.0, le=1.0)
    popularity_skew: float = Field(1.0, ge=0.0)
    seed: int | None = None  # None: the top-level seed
    # a ``review`` column whose sentiment tells liked events from bad experiences (recforge.data.synthetic)
    reviews: bool = False
    bad_experiences: float = Field(0.2, ge=0.0, lt=1.0)  # share of events that are bad experiences (with reviews)


class DataParams(_Section):
    format: Literal["synthetic", "movielens-100k", "movielens-1m", "movielens-latest", "amazon-reviews", "table"] = (
        "synthetic"
    )
    path: str | None = None
    metadata_path: str | None = None
    column_map: dict[str, str] = Field(default_factory=dict)
    items_path: str | None = None
    min_rating: float | None = None
    kcore: int | None = Field(None, ge=0)
    duplicates: Literal["last", "first", "keep"] = "last"
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    # new events arrive as span files here (recforge.spans; `recforge data add-span FILE`); ingest reads the
    # base data plus every span in name order but the newest ``spans_held_out``, which are the blessing's
    # evaluation data (recforge.blessing: no model trains on them before they are scored)
    spans: str = "data/spans"
    spans_held_out: int = Field(1, ge=0, le=1000)


class DriftThreshold(_Section):
    """A drift statistic's thresholds: a value at or above ``warn`` is a warning, at or above ``fail`` stops."""

    warn: float = Field(ge=0.0)
    fail: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> DriftThreshold:
        if self.warn > self.fail:
            raise ValueError(f"warn {self.warn} is above fail {self.fail}")
        return self


def _threshold(warn: float, fail: float) -> Any:
    return Field(default_factory=lambda: DriftThreshold(warn=warn, fail=fail))


class DriftParams(_Section):
    """Drift and skew of each new span against the reference (recforge.drift; docs/lifecycle.md).

    Shares are of the span's events: ``unknown_users`` (users the reference has no event of),
    ``unknown_items`` (items without a reference event), ``predating`` (older than the reference's
    last event), ``duplicates`` (a user, item and timestamp already in the reference or earlier in
    the span). ``rating_psi``: population stability index of the rating distribution.
    ``events_per_user``: the fold change max(r, 1/r) of the span's events per user against the
    reference's (a short span has fewer events per user than a long history: the band is wide).
    """

    enabled: bool = True
    unknown_users: DriftThreshold = _threshold(0.5, 1.0)
    unknown_items: DriftThreshold = _threshold(0.2, 0.5)
    rating_psi: DriftThreshold = _threshold(0.1, 0.25)
    events_per_user: DriftThreshold = _threshold(20.0, 100.0)
    predating: DriftThreshold = _threshold(0.05, 0.5)
    duplicates: DriftThreshold = _threshold(0.01, 0.2)


class ValidateParams(_Section):
    """The data gate (recforge.validation). Ratings lie in [rating_min, rating_max]
    (finite bounds, so NaN and infinities fail); timestamps lie in [timestamp_min,
    timestamp_max], where a null ``timestamp_max`` means now plus
    ``timestamp_margin_days`` (rounded up to the next UTC midnight)."""

    enabled: bool = True
    rating_min: float = 0.0
    rating_max: float = 5.0
    timestamp_min: str = "1970-01-01"
    timestamp_max: str | None = None
    timestamp_margin_days: float = Field(1.0, ge=0.0, le=36_500.0)
    min_interactions_per_user: int = Field(3, ge=1)
    require_text: bool = True
    max_examples: int = Field(5, ge=1)
    drift: DriftParams = Field(default_factory=DriftParams)

    @field_validator("rating_min", "rating_max")
    @classmethod
    def _finite(cls, value: float) -> float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return value

    @field_validator("timestamp_min", "timestamp_max", mode="before")
    @classmethod
    def _date(cls, value: Any) -> str | None:
        if hasattr(value, "isoformat"):  # YAML reads 2030-01-01 as a date
            value = value.isoformat()
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"not a date: {value!r} (e.g. 2030-01-01)")
            import pandas as pd

            try:
                stamp = pd.Timestamp(value)
            except (ValueError, TypeError, OverflowError):
                raise ValueError(f"not a date: {value!r} (e.g. 2030-01-01)") from None
            if stamp is pd.NaT:
                raise ValueError(f"not a date: {value!r} (e.g. 2030-01-01)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ValidateParams:
        if self.rating_min > self.rating_max:
            raise ValueError(f"rating_min {self.rating_min} is above rating_max {self.rating_max}")
        return self


class SplitParams(_Section):
    method: Literal["leave-last-out", "temporal", "random"] = "leave-last-out"
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int | None = None  # None: the top-level seed


class EncodeParams(_Section):
    """Item text -> embeddings, and user profiles (see recforge.profiles).

    ``fields``: item columns joined into one document (per dataset: MovieLens
    title + genres + tags, Amazon title + description, ...). ``options``:
    encoder name -> constructor options. ``profiles``: also write user
    profiles; ``profile_*`` set their recency/rating weighting.
    """

    encoders: list[str] = Field(default_factory=list)
    fields: list[str] = Field(default_factory=lambda: ["title", "text"])
    user_fields: list[str] = Field(default_factory=lambda: ["text"])
    batch_size: int = Field(64, ge=1)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    profiles: bool = True
    profile_half_life_events: float | None = Field(50.0, gt=0.0)
    profile_half_life_days: float | None = Field(None, gt=0.0)
    profile_rating_weight: float = Field(0.5, ge=0.0)
    profile_keywords: int = Field(10, ge=0)


class RerankParams(_Section):
    """The second stage (see recforge.rerank).

    ``models``: recommenders whose top-``candidates_per_model`` lists form the
    candidates (None: all configured). ``encoders``: encoders giving
    similarity features (None: encode.encoders). ``folds``: LambdaRank models
    over user-disjoint folds of the validation users, averaged; ``repeats``: the
    fold split repeated with new seeds; ``num_leaves``: the trees' size (all three ``auto``: recforge.sizing). ``llm_scorer``:
    add the local LLM's listwise feature for each user's top ``llm_candidates``
    (one forward pass per user, recforge.llm_scorer; off by default). ``ablations``: also retrain without each
    feature group and
    each recommender (reports/rerank_ablation.*; bench/rerank.py turns it on). ``sentiment``: review
    sentiment features when interactions carry a ``review`` column.
    ``options``: extra re-ranker plugin options (e.g. min_data_in_leaf).
    ``block_users``: candidate + feature tables are built for this many users
    at a time (the test part is scored block by block and never held whole).
    ``max_train_users``: the re-ranker trains on at most this many validation
    users with a positive candidate, drawn with the seed (``auto``: 10,000;
    ``null``: all); the other validation rows are spilled to disk as float32
    and scored block by block (recforge.rerank_rows).
    """

    enabled: bool = False
    plugin: str = "lambdarank"
    models: list[str] | None = None
    encoders: list[str] | None = None
    candidates_per_model: int = Field(50, ge=1)
    block_users: int = Field(5_000, ge=1)
    # users with a positive candidate the re-ranker trains on at most (auto: recforge.rerank_rows.TRAIN_USERS_AUTO;
    # null: all of them), drawn with the seed; memory then stays bounded whatever the number of users
    max_train_users: Annotated[int, Field(ge=2, le=10_000_000)] | Literal["auto"] | None = "auto"
    # auto: from the validation users with a positive candidate (recforge.sizing.rerank_leaves)
    num_leaves: Annotated[int, Field(ge=2, le=131_072)] | Literal["auto"] = 31
    learning_rate: float = Field(0.05, gt=0.0)
    num_boost_round: int = Field(500, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    folds: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = 5  # auto: from the validation users (recforge.sizing)
    repeats: Annotated[int, Field(ge=1, le=20)] | Literal["auto"] = 1  # fold splits drawn and trained again, averaged
    distributed: bool = False
    ablations: bool = False
    sentiment: bool = True
    llm_scorer: bool = False
    llm_model: str | None = None
    llm_candidates: int = Field(20, ge=1, le=26)  # lettered options A-Z in one prompt per user
    llm_history: int = Field(5, ge=1, le=50)
    llm_title_words: int = Field(6, ge=1, le=30)  # titles are cut to this many words in the prompt
    llm_batch_size: int = Field(8, ge=1, le=256)
    options: dict[str, Any] = Field(default_factory=dict)


class TrainParams(_Section):
    """How the train stage weights training events (recforge.sentiment.training_events).

    ``sentiment_weighting``: weight each event by its review's sentiment,
    ``clip(1 + sentiment_strength * compound, sentiment_floor, 1 + sentiment_strength)``,
    when the interactions carry a ``review`` column (no effect otherwise). ALS,
    item/user kNN and popularity use the weights; BPR drops negatively reviewed
    events from its liked items; sequential and content models ignore them.
    ``workers``: how many recommenders the stage trains at once (``recforge
    stage train`` / ``recforge run`` without a variant), each in its own process
    with ``cores // workers`` threads; ``auto`` is min(cores, recommenders).
    """

    sentiment_weighting: bool = True
    sentiment_strength: float = Field(1.0, ge=0.0, le=10.0)
    sentiment_floor: float = Field(0.1, gt=0.0, le=1.0)
    # recommenders trained at once, each in its own process with cores / workers threads (auto: min(cores,
    # recommenders)); 1 trains them one after the other in this process (recforge.stages.train)
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1


class EvaluateParams(_Section):
    k: int = Field(10, ge=1)
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    list_length: int = Field(50, ge=1)

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or min(ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))


class ServeParams(_Section):
    """The online service (recforge.engine, service/).

    ``model``: the served recommender; ``auto`` (default): the re-ranker when its
    validation NDCG@k is the best and it can run online, else the single model
    with the best validation NDCG@k;
    ``api_token``: bearer token required on every non-health endpoint (the env
    variable RECFORGE_API_TOKEN wins; never packaged); ``explainer``: a
    registered explainer plugin, falling back to the built-in grounded one;
    ``workers``: server processes; ``threads``: BLAS/torch threads per worker
    (1 is fastest for single requests); ``access_log``: BentoML's per-request
    access log; ``build``: `recforge package` also runs `bentoml build`.
    Exposure (docs/security.md): ``allowed_hosts``: Host header names answered
    besides the loopback names (DNS rebinding; the non-loopback ``host`` is
    added); ``max_body_bytes`` (413), ``max_concurrency`` per worker (429),
    ``max_explained`` items and ``explain_budget_s`` seconds of explanations per
    request. A non-loopback ``host`` needs a token: `recforge serve` makes one
    and prints it once when none is set. ``follow: production``: every worker
    reads the production registry every ``poll_s`` seconds (0.1 to 300) and
    hot-swaps to a new production version (recforge.follow, docs/lifecycle.md).
    Everything but ``host``, ``port``, ``api_token``, ``explainer*`` and
    ``build`` reaches the service as its typed arguments (recforge.schemas.ServeArgs).
    """

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    api_token: str | None = None
    model: str | None = "auto"
    explainer: str = "template"
    explainer_options: dict[str, Any] = Field(default_factory=dict)
    workers: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    access_log: bool = True
    build: bool = True
    allowed_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_concurrency: int = Field(100, ge=1)
    max_explained: int = Field(10, ge=0, le=100)
    explain_budget_s: float = Field(5.0, gt=0)
    follow: Literal["production"] | None = None
    poll_s: float = Field(2.0, ge=0.1, le=300)


class PromoteParams(_Section):
    """Blessing and promotion (recforge.blessing, recforge.production; docs/lifecycle.md).

    A candidate is blessed when its ``metric`` on the evaluation data is at least ``floor`` and at
    least the production model's plus ``min_delta`` (0: not worse). ``bootstrap``: resamples of the
    users for the confidence interval. ``registry``: the production registry file (null: beside the
    BentoML model store, ``$BENTOML_HOME/recforge/production.json``). ``infra_validate``: before a
    blessed candidate is promoted it is served for real (recforge.infra): ready within
    ``infra_timeout_s``, ``infra_users`` users answered as the offline lists say, p99 within
    ``infra_p99_ms``; false skips it (quick runs).
    """

    metric: str = "ndcg@10"
    min_delta: float = Field(0.0, ge=-1.0, le=1.0)
    floor: float = Field(0.0, ge=0.0, le=1.0)
    bootstrap: int = Field(1000, ge=0, le=100_000)
    registry: str | None = None
    infra_validate: bool = True
    infra_users: int = Field(20, ge=1, le=1000)
    infra_p99_ms: float = Field(100.0, gt=0, le=60_000)
    infra_timeout_s: float = Field(180.0, ge=1, le=1800)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        name, _, k = value.partition("@")
        if name not in ("ndcg", "recall", "mrr", "map", "precision") or not k.isdigit() or not 1 <= int(k) <= 1000:
            raise ValueError(f"{value!r}: use ndcg|recall|mrr|map|precision@K, e.g. ndcg@10")
        return value


class ImpliedRatings(_Section):
    """The rating an exported feedback event gets when it carries none (a ``rating`` event keeps its own)."""

    view: float = Field(3.0, ge=0.0, le=5.0)
    click: float = Field(3.5, ge=0.0, le=5.0)
    purchase: float = Field(5.0, ge=0.0, le=5.0)
    dislike: float = Field(0.0, ge=0.0, le=5.0)


class FeedbackParams(_Section):
    """The feedback event store (recforge.feedback, docs/feedback.md).

    ``url``: a SQLite file (relative to the workspace; WAL mode, any number of
    workers on one host) or ``postgresql://user@host/db`` (several hosts; the
    password from PGPASSWORD or ~/.pgpass, never in the URL); ``staleness_s``:
    how long a worker reuses a user's exclusion set (the bound on how late
    /recommend reflects feedback; 0 reads the store on every request);
    ``spans_dir``: where ``recforge data export-feedback`` writes spans by
    default; ``implied_ratings``: the exported rating of events without one;
    ``foldin``: a known user's items viewed, clicked, bought or rated >= 3
    through /feedback join their trained history, folded in as a session is
    (when a served model can fold in; it bypasses the re-ranker's precomputed
    lists for that user).
    """

    enabled: bool = True
    url: str = "feedback/events.sqlite3"
    staleness_s: float = Field(1.0, ge=0.0, le=60.0)
    spans_dir: str = "feedback/spans"
    implied_ratings: ImpliedRatings = Field(default_factory=ImpliedRatings)
    foldin: bool = False

    @field_validator("url")
    @classmethod
    def _store_url(cls, url: str) -> str:
        from recforge.feedback import FeedbackError, sqlite_path

        try:
            sqlite_path(url)  # a password in the URL or an unknown scheme: one line naming the key and file
        except FeedbackError as exc:
            raise ValueError(str(exc).removeprefix("feedback.url: ")) from None
        return url


class OrchestrationParams(_Section):
    runner: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)


MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = frozenset({"rerank", "batch", "encoders"})  # directories the stages write beside the models


def check_model_name(name: str) -> str:
    """A recommender name becomes a directory and a dvc.yaml stage name: letters, digits, ``_`` and ``-``."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ValueError(f"recommender name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter")
    if name in RESERVED_NAMES:
        raise ValueError(f"recommender name {name!r} is reserved (outputs of that name exist already)")
    return name


class Params(_Section):
    paths: PathsParams = Field(default_factory=PathsParams)
    data: DataParams = Field(default_factory=DataParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    split: SplitParams = Field(default_factory=SplitParams)
    encode: EncodeParams = Field(default_factory=EncodeParams)
    recommenders: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"popularity": {}})
    train: TrainParams = Field(default_factory=TrainParams)
    rerank: RerankParams = Field(default_factory=RerankParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    serve: ServeParams = Field(default_factory=ServeParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)
    feedback: FeedbackParams = Field(default_factory=FeedbackParams)
    orchestration: OrchestrationParams = Field(default_factory=OrchestrationParams)
    seed: int = 0
    # where training, the encoders and the LLM features run (serve.device is the service's)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("recommenders")
    @classmethod
    def _non_empty(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not models:
            raise ValueError("at least one recommender must be configured")
        for name in models:
            check_model_name(name)
        return {name: dict(options or {}) for name, options in models.items()}

    @model_validator(mode="after")
    def _one_seed(self) -> Params:
        """Section seeds left unset follow the top-level ``seed``."""
        if self.split.seed is None:
            self.split.seed = self.seed
        if self.data.synthetic.seed is None:
            self.data.synthetic.seed = self.seed
        return self

    def plugin_of(self, model_name: str) -> str:
        """The registered plugin behind a configured model name (``plugin:`` or the name)."""
        return str(self.recommenders[model_name].get("plugin", model_name))

    def model_options(self, model_name: str) -> dict[str, Any]:
        return {k: v for k, v in self.recommenders[model_name].items() if k != "plugin"}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def paths_under(root: str | Path) -> list[str]:
    """Overrides that move every output path under ``root`` (keeping the default layout)."""
    moved = [f"paths.{key}={Path(root) / value}" for key, value in PathsParams().model_dump().items()]
    feedback = FeedbackParams()  # the feedback store and its spans are outputs too
    return [
        *moved,
        f"feedback.url={Path(root) / feedback.url}",
        f"feedback.spans_dir={Path(root) / feedback.spans_dir}",
    ]


def parse_override(override: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], parsed value)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise RecforgeError(f"bad override {override!r}: expected section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        keys, value = parse_override(override)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise RecforgeError(f"override {override!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _format_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]).replace("validate_", "validate")
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            problems.append(f"'{key}': {item['msg']}")
    return f"{source}: " + "; ".join(problems)


def load_params(path: str | Path | None = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Read and validate params.yaml (a missing default file means all defaults)."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        file = Path(path)
        if file.exists():
            try:
                raw = yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError as exc:
                raise RecforgeError(f"{file}: not valid YAML ({exc.__class__.__name__})") from exc
            if not isinstance(raw, dict):
                raise RecforgeError(f"{file}: expected a mapping of sections at the top level")
        elif str(path) != DEFAULT_PARAMS_FILE:
            raise RecforgeError(f"{file}: params file not found")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise RecforgeError(_format_error(exc, source)) from None
