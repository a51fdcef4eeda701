"""The stage table: every pipeline stage, what it runs, reads and writes.

One ``Stage`` per stage, in pipeline order. The CLI (``recforge stage NAME
[VARIANT]``), ``recforge run``, the Prefect flows (tasks and their cache keys)
and dvc.yaml read this table; a test fails when dvc.yaml and the table
disagree on any stage, dep, out or params key.

Every stage function has one signature, ``run_<stage>(params, variant=None)``.
A *variant* is one independent part of a stage: one recommender for
``train``, one encoder for ``encode``. Variants run in parallel under Prefect;
DVC runs ``train`` as ``foreach`` over ``recommenders``.

Paths are written as dvc.yaml writes them: ``${paths.<key>}`` for a path from
params.yaml, ``${key}`` for the variant, and code paths relative to the
project root (``recforge/...``, ``plugins/...``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recforge.errors import RecforgeError
from recforge.params import Params

StageFunction = Callable[..., object]

_TEMPLATE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``params``, ``deps`` and ``outs`` are written as in dvc.yaml. ``variants``
    names the params entry whose keys (a mapping) or values (a list) are the
    stage's variants (``recommenders``, ``encode.encoders``); ``foreach`` is
    True when dvc.yaml runs one DVC stage per variant (otherwise DVC runs the
    whole stage, and only Prefect splits it). ``input_params`` are params
    whose values are input files (hashed into Prefect's cache key; dvc.yaml
    covers them through ``params``). ``dvc`` is False for a stage that is not
    in dvc.yaml (``package`` writes outside the workspace).
    """

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...] = ()
    variants: str | None = None
    foreach: bool = False
    input_params: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    dvc: bool = True

    def __call__(self, params: Params, variant: str | None = None) -> object:
        return self.run(params, variant)

    @property
    def function(self) -> StageFunction:
        """``recforge.stages.<name>.run_<name>`` (imported lazily: stages pull heavy libraries)."""
        module = importlib.import_module(f"recforge.stages.{self.name}")
        return getattr(module, f"run_{self.name}")

    def run(self, params: Params, variant: str | None = None) -> object:
        """Run the stage (or one ``variant`` of it), first removing the staging that a killed
        run left beside or inside its outputs (that of live processes stays)."""
        from recforge.artifacts import clean_stale_staging_around

        if variant is not None and variant not in self.variant_names(params):
            known = ", ".join(self.variant_names(params)) or "none"
            raise RecforgeError(f"stage {self.name}: unknown variant '{variant}' (variants: {known})")
        clean_stale_staging_around(self.out_paths(params, variant))
        return self.function(params, variant)

    def variant_names(self, params: Params) -> list[str]:
        """The variants configured in ``params`` (empty for a stage without variants)."""
        if self.variants is None:
            return []
        node = select(params, self.variants)
        return list(node) if node else []

    def cmd(self) -> str:
        """The dvc.yaml command. DVC runs it through a shell, so a foreach stage's key never
        enters it: ``--dvc-variant`` reads the variant from ``DVC_STAGE`` (``train@<key>``),
        which DVC sets for every command it runs."""
        return f"recforge stage {self.name}" + (" --dvc-variant" if self.foreach else "")

    # -- resolved against params (Prefect cache keys and stamps) --

    def resolve(self, template: str, params: Params, variant: str | None = None) -> str:
        """``template`` with ``${paths.x}`` (or any params key) and ``${key}`` filled in."""

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "key":
                if variant is None:
                    raise RecforgeError(f"stage {self.name}: '{template}' needs a variant")
                return variant
            return str(select(params, name))

        return _TEMPLATE.sub(fill, template)

    def params_keys(self, params: Params, variant: str | None = None) -> list[str]:
        """The params keys the stage (or one variant) reads; with no variant, every variant's."""
        keys: list[str] = []
        for key in self.params:
            if "${key}" in key:
                names = [variant] if variant is not None else self.variant_names(params)
                keys += [key.replace("${key}", name) for name in names]
            else:
                keys.append(key)
        return keys

    def _paths(self, templates: tuple[str, ...], params: Params, variant: str | None) -> list[Path]:
        paths: list[Path] = []
        for template in templates:
            if "${key}" in template and variant is None:
                paths += [Path(self.resolve(template, params, name)) for name in self.variant_names(params)]
            else:
                paths.append(Path(self.resolve(template, params, variant)))
        return paths

    def data_deps(self, params: Params, variant: str | None = None) -> list[Path]:
        """Input data paths (workspace paths and input files named by params)."""
        deps = self._paths(tuple(d for d in self.deps if not is_code(d)), params, variant)
        files = [select(params, key) for key in self.input_params]
        return deps + [Path(str(f)) for f in files if f]

    def code_deps(self) -> list[Path]:
        """The stage's code (files and plugin directories) where it is installed."""
        return [code_path(d) for d in self.deps if is_code(d)]

    def out_paths(self, params: Params, variant: str | None = None) -> list[Path]:
        """What the stage (or one variant) writes; a variant of a stage that is not
        split in dvc.yaml writes only to a content-keyed cache, so it has no outs."""
        if variant is not None and not self.foreach:
            return []
        return self._paths(self.outs + self.metrics + self.plots, params, variant)


def is_code(dep: str) -> bool:
    return dep.startswith(("recforge/", "plugins/"))


def code_path(dep: str) -> Path:
    """``recforge/x.py`` or ``plugins/x`` where the packages are installed."""
    import recforge

    import recforge_plugins

    top, _, rest = dep.partition("/")
    root = Path((recforge if top == "recforge" else recforge_plugins).__file__).parent
    return root / rest


def select(params: Params, key: str) -> object:
    """The value of dotted ``key`` in ``params`` (None where it is absent)."""
    node: object = params.to_dict()
    for part in filter(None, key.split(".")):
        node = node.get(part) if isinstance(node, dict) else None
    return node


CANONICAL, SPLIT = "${paths.canonical_dir}", "${paths.split_dir}"
EMBEDDINGS, PROFILES = "${paths.embeddings_dir}", "${paths.profiles_dir}"
MODELS, LISTS = "${paths.models_dir}", "${paths.lists_dir}"

FIT_CONTEXT_KEYS = (
    "encode.fields",
    "encode.user_fields",
    "encode.profile_half_life_events",
    "encode.profile_half_life_days",
    "encode.profile_rating_weight",
)

STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        params=("data", "validate", "split", "seed"),
        deps=(
            "recforge/stages/ingest.py",
            "recforge/data",
            "recforge/validation.py",
            "recforge/split.py",
            "recforge/spans.py",
            "${data.spans}",  # the span directory: a new span re-runs ingest (dvc.yaml needs it to exist)
        ),
        outs=(CANONICAL,),
        input_params=("data.path", "data.metadata_path", "data.items_path"),
    ),
    Stage(
        "validate",
        params=("validate",),
        deps=("recforge/stages/validate.py", "recforge/validation.py", CANONICAL),
        outs=("${paths.reports_dir}/validation.json", "${paths.reports_dir}/validation.md"),
    ),
    Stage(
        "split",
        params=("split", "seed"),
        deps=("recforge/stages/split.py", "recforge/split.py", CANONICAL, "${paths.reports_dir}/validation.json"),
        outs=(SPLIT,),
    ),
    Stage(
        "encode",
        params=("encode",),
        deps=(
            "recforge/stages/encode.py",
            "recforge/encoding.py",
            "recforge/profiles.py",
            "recforge/text.py",
            "plugins/encoders",
            CANONICAL,
            SPLIT,
        ),
        outs=(EMBEDDINGS, PROFILES),
        variants="encode.encoders",
    ),
    Stage(
        "train",
        # the FitContext a model gets: item text fields, user text fields and the profile weighting
        # and the event weighting (review sentiment; recforge.sentiment)
        params=("recommenders.${key}", *FIT_CONTEXT_KEYS, "train", "evaluate.list_length", "seed"),
        deps=(
            "recforge/stages/train.py",
            "recforge/sentiment.py",
            "plugins/recommenders",
            CANONICAL,
            SPLIT,
            EMBEDDINGS,
            PROFILES,  # models that use user profiles read the encode stage's (FitContext.profiles)
        ),
        outs=("${paths.models_dir}/${key}", "${paths.lists_dir}/${key}"),
        variants="recommenders",
        foreach=True,
    ),
    Stage(
        "rerank",
        params=("rerank", "encode.encoders", "evaluate.list_length", "seed"),
        deps=(
            "recforge/stages/rerank.py",
            "recforge/rerank.py",
            "recforge/rerank_reports.py",
            "recforge/llm_scorer.py",
            "recforge/features.py",
            "recforge/candidates.py",
            "recforge/rerank_rows.py",
            "plugins/rerankers",
            CANONICAL,
            SPLIT,
            EMBEDDINGS,
            PROFILES,
            LISTS,
        ),
        outs=("${paths.models_dir}/rerank",),
    ),
    Stage(
        "evaluate",
        params=("evaluate", "rerank.enabled"),
        deps=(
            "recforge/stages/evaluate.py",
            "recforge/metrics.py",
            CANONICAL,
            SPLIT,
            LISTS,
            "${paths.models_dir}/rerank",
        ),
        outs=("${paths.recs_dir}", "${paths.plots_dir}/ndcg_at_k.png"),
        metrics=("${paths.metrics_file}",),
        plots=("${paths.plots_dir}/ndcg_at_k.csv",),
    ),
    Stage(
        "package",
        params=("",),
        deps=("recforge/stages/package.py", "recforge/packaging.py", MODELS, LISTS),
        dvc=False,
    ),
    # the production loop (docs/lifecycle.md): they read the model store and the production registry,
    # outside the workspace, so like package they are not DVC stages; `recforge cycle` and the
    # `continuous` flow run them after package
    Stage(
        "bless",
        params=("promote", "data.spans", "data.spans_held_out"),
        deps=("recforge/stages/bless.py", "recforge/blessing.py", "${paths.reports_dir}/package.json"),
        outs=("${paths.reports_dir}/blessing.json", "${paths.reports_dir}/blessing.md"),
        dvc=False,
    ),
    Stage(
        "promote",
        params=("promote", "serve"),
        deps=(
            "recforge/stages/promote.py",
            "recforge/production.py",
            "recforge/infra.py",
            "${paths.reports_dir}/blessing.json",
        ),
        outs=("${paths.reports_dir}/promotion.json",),
        dvc=False,
    ),
)
LOOP_STAGES = ("package", "bless", "promote")  # after STAGE_ORDER in a cycle

BY_NAME = {stage.name: stage for stage in STAGES}
STAGE_ORDER = [stage.name for stage in STAGES if stage.dvc]

# Files inside a stage's deps that the stage writes itself (dvc.yaml: .dvcignore);
# they are not inputs (the re-ranker's own lists live beside the candidate lists).
IGNORED_INPUTS = ("**/rerank/val.parquet", "**/rerank/test.parquet", ".*.tmp")


def dvc_variant(addressing: str | None) -> str:
    """The variant of a DVC foreach stage from its address (``DVC_STAGE``: ``[path/dvc.yaml:]train@<key>``)."""
    if not addressing or "@" not in addressing:
        raise RecforgeError("--dvc-variant: DVC_STAGE is not set to a foreach stage (run it from dvc repro)")
    return addressing.rsplit("@", 1)[1]


def get_stage(name: str) -> Stage:
    """The stage called ``name``."""
    if name not in BY_NAME:
        raise RecforgeError(f"unknown stage '{name}' (stages: {', '.join(BY_NAME)})")
    return BY_NAME[name]
