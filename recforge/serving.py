"""Online recommendations: the framework-free core behind the BentoML service.

``build_package`` copies what the pipeline trained (the ``full`` part of every
model, embeddings and fitted encoders, user profiles, id maps, the items
table, the train+val histories, params and metrics) into one directory with a
``manifest.json`` that records the sha256 of every file. ``Engine.load`` checks
those checksums (and each model's own meta.json checksums), loads every model
once through the plugin registry and caches what requests reuse (normalised
item embeddings, popularity, histories). Every request is then computed online
from the loaded models; nothing is precomputed per user.

The service in ``service/`` is a thin HTTP layer over :class:`Engine`; the
response models below are plain pydantic so any other server can reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from recforge import registry
from recforge.artifacts import read_json, sha256_file, verify_checksums
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps, Interactions
from recforge.params import Params
from recforge.protocols import FitContext, FoldIn, SimilarItems
from recforge.ranking import batched, history_row, top_k

log = logging.getLogger(__name__)

PACKAGE_FORMAT = 1
MODEL_NAME = "recforge-model"
MAX_K = 100
RERANK = "rerank"  # the served name of the second stage
# parts of params that do not change what is served (where files live, how it is served)
UNHASHED_SECTIONS = ("paths", "serve", "orchestration")


class NotFoundError(RecforgeError):
    """An id the request names is not in the packaged model (HTTP 404)."""


class BadRequestError(RecforgeError):
    """A request the engine cannot answer as asked (HTTP 400)."""


# ---- response models (shared with the service) ------------------------------------------------------------


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


# ---- packaging -------------------------------------------------------------------------------------------


def params_hash(params: Params) -> str:
    """sha256 of the params that change what is trained (paths and serving settings excluded)."""
    data = {k: v for k, v in params.to_dict().items() if k not in UNHASHED_SECTIONS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def data_hash(params: Params) -> str:
    """sha256 over the split tables and the items table the models were trained on."""
    digest = hashlib.sha256()
    files = [Path(params.paths.split_dir) / f"{part}.parquet" for part in ("train", "val", "test")]
    files.append(Path(params.paths.canonical_dir) / "items.parquet")
    for path in files:
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run the pipeline (`recforge run`) before packaging")
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def model_version(params: Params) -> str:
    """The model-store version: derived from the data and the params, so it pins exactly what was trained."""
    return f"d{data_hash(params)[:12]}-p{params_hash(params)[:12]}"


def _trained_models(params: Params) -> list[str]:
    names = [name for name in params.recommenders if (Path(params.paths.models_dir) / name / "full" / "meta.json").exists()]
    missing = [name for name in params.recommenders if name not in names]
    if missing:
        raise RecforgeError(f"models not trained: {', '.join(missing)}; run `recforge stage train`")
    return names


def build_package(params: Params, dest: str | Path) -> dict[str, Any]:
    """Copy the trained pipeline into ``dest`` (an empty or new directory); returns the manifest."""
    from recforge.workspace import Workspace

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(params)
    models = _trained_models(params)
    metrics_path = Path(params.paths.metrics_file)
    metrics = read_json(metrics_path) if metrics_path.exists() else {}

    for name in models:
        source = Path(params.paths.models_dir) / name / "full"
        meta = read_json(source / "meta.json")
        verify_checksums(source, meta["checksums"])
        shutil.copytree(source, dest / "models" / name)
    rerank_dir = Path(params.paths.models_dir) / "rerank"
    if params.rerank.enabled and rerank_dir.exists():
        shutil.copytree(rerank_dir, dest / "rerank")
    embeddings = Path(params.paths.embeddings_dir)
    encoders = []
    if embeddings.exists():
        for path in sorted(embeddings.glob("*.npy")):
            (dest / "embeddings").mkdir(exist_ok=True)
            shutil.copy2(path, dest / "embeddings" / path.name)
            encoders.append(path.stem)
        if (embeddings / "encoders").exists():
            shutil.copytree(embeddings / "encoders", dest / "embeddings" / "encoders")
    profiles = Path(params.paths.profiles_dir) / "full"
    if profiles.exists():
        shutil.copytree(profiles, dest / "profiles")

    workspace.items.to_parquet(dest / "items.parquet", index=False)
    pd.DataFrame({"user_id": workspace.maps.user_ids}).to_parquet(dest / "users.parquet", index=False)
    events = workspace.events("train+val")
    bounds = events.bounds
    history = {"indptr": bounds.astype(np.int64), "items": events.item_ids.astype(np.int32), "timestamps": events.timestamps.astype(np.int64)}
    if events.ratings is not None:
        history["ratings"] = events.ratings.astype(np.float32)
    np.savez(dest / "history.npz", **history)  # time order per user: what the re-ranker's features read

    clean = params.to_dict()
    clean["serve"]["api_token"] = None  # never bake a secret into an artifact
    (dest / "params.json").write_text(json.dumps(clean, indent=2))
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))

    counts = {"users": int(events.n_users), "items": int(events.n_items), "interactions": int(len(events))}
    busiest = int(np.argmax(np.diff(bounds))) if events.n_users else 0
    manifest = {
        "format": PACKAGE_FORMAT,
        "name": MODEL_NAME,
        "version": model_version(params),
        "data_hash": data_hash(params),
        "params_hash": params_hash(params),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {name: read_json(dest / "models" / name / "meta.json")["plugin"] for name in models},
        "encoders": encoders,
        "rerank": (dest / "rerank").exists(),
        "counts": counts,
        "example_user_id": _plain(workspace.maps.user_ids[busiest]) if events.n_users else None,
        "checksums": package_checksums(dest),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def package_checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file of a package but its manifest (models' meta.json included)."""
    return {
        str(path.relative_to(directory)): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory) != Path("manifest.json")
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _packaged_events(directory: Path, indptr: np.ndarray, item_ids: np.ndarray, *, n_items: int) -> Interactions:
    """The package's train+val history as Interactions (what the re-ranker's features read)."""
    with np.load(directory / "history.npz", allow_pickle=False) as data:
        timestamps = data["timestamps"] if "timestamps" in data else np.zeros(len(item_ids), np.int64)
        ratings = data["ratings"] if "ratings" in data else None
    return Interactions(
        user_ids=np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr)),
        item_ids=item_ids,
        timestamps=timestamps,
        ratings=ratings,
        n_users=len(indptr) - 1,
        n_items=n_items,
    )


# ---- the second stage online -----------------------------------------------------------------------------


@dataclass
class OnlineReranker:
    """The packaged re-ranker, one user at a time.

    Exactly the offline test-part protocol: the candidate models' top
    ``per_model`` lists for the user (the packaged models are the train+val
    refits), the features of :class:`recforge.features.FeatureContext` over
    the packaged train+val history (built once at load: O(users + items +
    events)), then the mean LambdaRank score of the fold models; ties go to the
    lower item index, as in ``recforge.rerank.ranked_lists``.
    """

    model: Any
    context: Any
    models: list[str]
    per_model: int
    maps: IdMaps

    @classmethod
    def load(cls, directory: Path, manifest: dict, params: Params, models: dict, maps: IdMaps, items: pd.DataFrame,
             history: Interactions, embeddings) -> tuple[OnlineReranker | None, str | None]:
        """(the re-ranker, None), or (None, why it cannot be served) when the package's re-ranker cannot run online."""
        from recforge.features import FeatureContext, PartData
        from recforge.profiles import settings_from_params

        folder = directory / RERANK
        if not manifest.get("rerank") or not (folder / "meta.json").exists():
            return None, "no re-ranker in the package"
        meta = read_json(folder / "meta.json")
        verify_checksums(folder, meta["checksums"])
        if meta.get("fallback"):
            return None, f"no re-ranker was trained (the lists used {meta['fallback']})"
        missing = [m for m in meta["models"] if m not in models]
        offline_only = [f for f in meta["features"] if f.startswith(("llm_", "sent_"))]
        if missing:
            return None, f"candidate models {missing} are not in the package"
        if offline_only:
            return None, f"features {offline_only} are computed offline only (LLM scorer, review sentiment)"
        if not history.timestamps.any() and len(history):
            return None, "the package's history has no timestamps (packaged by an older recforge)"
        data = PartData(
            part="full", history=history, maps=maps, items=items, lists={},
            embeddings={name: embeddings(name) for name in meta["encoders"]},
            text_fields=params.encode.fields, profile_settings=settings_from_params(params),
        )
        model = registry.rerankers.get(meta["plugin"]).load(folder)
        return cls(model=model, context=FeatureContext(data), models=list(meta["models"]),
                   per_model=int(meta["candidates_per_model"]), maps=maps), None

    def rank(self, user: int, lists: dict[str, tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (dense items, scores) from each candidate model's (items, scores) for dense ``user``."""
        from recforge.features import candidate_frame

        frames = {}
        for name, (items, scores) in lists.items():
            items, scores = np.ravel(items), np.ravel(scores)
            keep = (items >= 0) & np.isfinite(scores)
            items, scores = items[keep], scores[keep]
            frames[name] = pd.DataFrame({
                "user_id": self.maps.user_ids[np.full(len(items), user)],
                "item_id": self.maps.item_ids[items],
                "rank": np.arange(1, len(items) + 1),
                "score": scores,
            })
        if not any(len(f) for f in frames.values()):
            return np.zeros(0, np.int64), np.zeros(0)
        frame = self.context.add(candidate_frame(frames, self.maps, self.per_model))
        scores = np.asarray(self.model.rerank(frame), dtype=np.float64)
        items = frame["item"].to_numpy()
        order = np.lexsort((items, -scores))[:k]
        return items[order], scores[order]


# ---- the engine ------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """Everything a request needs, loaded once from a package directory."""

    directory: Path
    manifest: dict[str, Any]
    params: Params
    metrics: dict[str, Any]
    items: pd.DataFrame
    maps: IdMaps
    models: dict[str, Any]
    primary: str
    history_indptr: np.ndarray
    history_items: np.ndarray
    popularity: np.ndarray
    device: str = "cpu"
    titles: list[str] = field(default_factory=list)
    genres: list[list[str]] = field(default_factory=list)
    keywords: list[list[str]] = field(default_factory=list)
    item_vectors: np.ndarray | None = None
    text_model: str | None = None
    text_encoder: Any = None
    fold_in_model: str | None = None
    similar_model: str | None = None
    explainer: Any = None
    explainer_name: str = "builtin"
    # sequential models: name -> (states [n_users, dim], output weights [n_items, dim], bias [n_items])
    states: dict[str, Any] = field(default_factory=dict)
    reranker: OnlineReranker | None = None
    rerank_note: str | None = None  # why the packaged re-ranker is not served, if it is not

    @property
    def user_states(self) -> Any:
        """The served model's cached user states (None when it has none)."""
        return self.states.get(self.primary)

    # ---- loading -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto", model: str | None = None, verify: bool = True) -> Engine:
        """Load a package; ``model`` overrides the served model (default: serve.model, then best validation NDCG)."""
        from recforge.workspace import resolve_device

        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.exists():
            raise RecforgeError(f"{directory}: not a recforge package (no manifest.json); run `recforge package`")
        manifest = read_json(manifest_path)
        if manifest.get("format") != PACKAGE_FORMAT:
            raise RecforgeError(f"{directory}: package format {manifest.get('format')} is not {PACKAGE_FORMAT}")
        if verify:
            verify_checksums(directory, manifest["checksums"])
        params = Params.model_validate(read_json(directory / "params.json"))
        device = resolve_device(device)
        items = pd.read_parquet(directory / "items.parquet")
        users = pd.read_parquet(directory / "users.parquet")["user_id"]
        maps = IdMaps(user_ids=pd.Index(users.to_numpy(), name="user_id"), item_ids=pd.Index(items["item_id"].to_numpy(), name="item_id"))
        with np.load(directory / "history.npz", allow_pickle=False) as data:
            indptr, history = data["indptr"], data["items"]
        embeddings_dir = directory / "embeddings"

        def embeddings(name: str) -> np.ndarray:
            path = embeddings_dir / f"{name}.npy"
            if not path.exists():
                raise RecforgeError(f"{path}: no embeddings for encoder '{name}' in the package")
            return np.load(path, allow_pickle=False)

        context = FitContext(items=items, maps=maps, embeddings=embeddings, seed=params.seed, device=device, extra={"params": params})
        models: dict[str, Any] = {}
        for name, plugin in manifest["models"].items():
            model_dir = directory / "models" / name
            if verify:
                verify_checksums(model_dir, read_json(model_dir / "meta.json")["checksums"])
            models[name] = registry.recommenders.get(plugin).load(model_dir, context=context)
        if not models:
            raise RecforgeError(f"{directory}: the package holds no models")
        metrics = read_json(directory / "metrics.json")
        # the re-ranker answers /recommend only when asked for by name (serve.model: rerank): it calls every
        # candidate model per request, so the automatic choice stays with the single models, and its
        # feature state is built only then
        primary = model or params.serve.model or _best_model(models, metrics, params.evaluate.k)
        reranker, rerank_note = None, "served when asked for: serve.model: rerank" if manifest.get("rerank") else "no re-ranker in the package"
        if primary == RERANK:
            events = _packaged_events(directory, indptr, history, n_items=len(items))
            reranker, rerank_note = OnlineReranker.load(directory, manifest, params, models, maps, items, events, embeddings)
        servable = {**models, **({RERANK: reranker} if reranker is not None else {})}
        if primary not in servable:
            why = f"; the re-ranker is not served: {rerank_note}" if primary == RERANK and rerank_note else ""
            raise RecforgeError(f"serve.model '{primary}' is not in the package (models: {', '.join(servable)}){why}")

        popularity = np.bincount(history, minlength=len(items)).astype(np.float64)
        engine = cls(
            directory=directory,
            manifest=manifest,
            params=params,
            metrics=metrics,
            items=items,
            maps=maps,
            models=models,
            primary=primary,
            history_indptr=indptr,
            history_items=history,
            popularity=popularity,
            device=device,
            reranker=reranker,
            rerank_note=rerank_note,
        )
        engine._prepare(embeddings)
        log.info("loaded %s:%s (serving %s on %s)", manifest["name"], manifest["version"], primary, device)
        return engine

    def _prepare(self, embeddings) -> None:
        from recforge.profiles import item_genres

        self.titles = [str(t) for t in (self.items["title"] if "title" in self.items else self.items["item_id"]).tolist()]
        self.genres = item_genres(self.items)
        self.keywords = _item_keywords(self.items, self.params.encode.fields)
        # popular list once: ties by index, like top_k
        self._popular_order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
        encoders = list(self.manifest.get("encoders", []))
        if encoders:
            self.item_vectors = np.ascontiguousarray(embeddings(encoders[0]), dtype=np.float32)
        lead = self.primary if self.primary in self.models else _best_model(self.models, self.metrics, self.params.evaluate.k)
        ordered = [lead] + [n for n in self.models if n != lead]
        self.text_model = next((n for n in ordered if hasattr(self.models[n], "recommend_text")), None)
        if self.text_model is None and encoders:
            self.text_encoder = self._load_encoder(encoders[0])
        sequential = [n for n in ordered if self.manifest["models"][n] == "sequential"]
        self.fold_in_model = next((n for n in sequential + ordered if isinstance(self.models[n], FoldIn)), None)
        self.similar_model = next((n for n in ordered if isinstance(self.models[n], SimilarItems)), None)
        self.explainer, self.explainer_name = self._load_explainer()
        candidates = self.reranker.models if self.primary == RERANK else [self.primary]
        for name in candidates:
            cached = self._cache_user_states(name)
            if cached is not None:
                self.states[name] = cached
        # warm up the code paths once so the first request is not the slow one
        for name in {*candidates, self.fold_in_model} - {None}:
            try:
                if name in candidates:
                    self._top(name, 0, 10, True)
                else:
                    self.models[name].recommend_history(np.array([0]), k=10)
            except Exception as exc:  # a warm-up failure shows up on the real request with its message
                log.warning("warm-up of %s failed: %s", name, exc)
        if self.primary == RERANK and self.maps.user_ids.size:
            try:
                self.recommend(_plain(self.maps.user_ids[0]), 10)
            except Exception as exc:
                log.warning("warm-up of the re-ranker failed: %s", exc)
        if self.text_model or self.text_encoder is not None:
            try:
                self.recommend_text("warm up", 10)
            except Exception as exc:
                log.warning("warm-up of the text path failed: %s", exc)

    def _cache_user_states(self, name: str) -> Any:
        """Sequential models: a known user's state after their packaged history is an embedding.

        Computed once here (a user's state does not depend on the batch it is
        computed in), then each request scores online with the model's
        output layer exactly as ``Sequential.recommend`` does: one small
        product instead of a recurrent pass over 50 items. Checked against
        the model's own ``recommend`` on a few users; any mismatch disables it.
        """
        model = self.models[name]
        net = getattr(model, "net", None)
        if not (hasattr(model, "_user_vectors") and hasattr(model, "sequences") and hasattr(net, "logits")):
            return None
        try:
            import torch

            states = None
            with torch.no_grad():
                for part in batched(len(model.sequences), 1024):
                    hidden = model._user_vectors(model.sequences[part]).float().cpu().numpy()
                    if states is None:
                        states = np.zeros((len(model.sequences), hidden.shape[1]), dtype=np.float32)
                    states[part] = hidden
                weights = net.items.weight[1:].detach().float().cpu().numpy()
                bias = np.asarray(net.bias.detach().float().cpu().numpy() if torch.is_tensor(net.bias) else net.bias, dtype=np.float32)
            cached = (np.ascontiguousarray(states), np.ascontiguousarray(weights), np.broadcast_to(bias, (weights.shape[0],)).astype(np.float32))
            probe = np.linspace(0, len(states) - 1, num=min(5, len(states))).astype(int)
            for user in probe:
                expected, _ = model.recommend(np.array([user]), k=10)
                got, _ = self._score_state(cached, model, int(user), 10, True)
                if not np.array_equal(expected, got):
                    log.warning("%s: cached user states disagree with recommend(); scoring online", name)
                    return None
            log.info("%s: cached %d user states", name, len(states))
            return cached
        except Exception as exc:  # any surprise: the model's own recommend() still works
            log.warning("%s: no cached user states (%s)", name, exc)
            return None

    def _top(self, name: str, user: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Model ``name``'s top-``k`` for one known user (cached states when the model has them)."""
        model = self.models[name]
        if name in self.states:
            return self._score_state(self.states[name], model, user, k, exclude_seen)
        return model.recommend(np.array([user]), k=k, exclude_seen=exclude_seen)

    @staticmethod
    def _score_state(cached, model, user: int, k: int, exclude_seen: bool):
        states, weights, bias = cached
        scores = weights @ states[user] + bias
        return top_k(scores[None, :], k, seen=model.seen[[user]] if exclude_seen else None)

    def _load_encoder(self, name: str) -> Any:
        state = self.directory / "embeddings" / "encoders" / name
        try:
            if state.exists():
                return registry.encoders.get(name).load(state)
            if name == "transformer":  # needs no fitting
                return registry.encoders.create(name)
        except Exception as exc:
            log.warning("text encoder %s unavailable (%s); /recommend/text falls back to popular", name, exc)
        return None

    def _load_explainer(self) -> tuple[Any, str]:
        name = getattr(self.params.serve, "explainer", "template")
        if name and name != "builtin" and name in registry.explainers.names():
            try:
                options = dict(getattr(self.params.serve, "explainer_options", {}) or {})
                return registry.explainers.create(name, **options), name
            except Exception as exc:
                log.warning("explainer %s unavailable (%s); using the built-in one", name, exc)
        return None, "builtin"

    # ---- helpers -------------------------------------------------------------------------------------------

    def _history(self, user: int) -> np.ndarray:
        return self.history_items[self.history_indptr[user] : self.history_indptr[user + 1]]

    def _item_id(self, index: int) -> Any:
        return _plain(self.maps.item_ids[index])

    def _rows(self, items: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
        return [(int(i), float(s)) for i, s in zip(np.ravel(items), np.ravel(scores)) if i >= 0 and np.isfinite(s)]

    def _popular(self, k: int, exclude: np.ndarray | None = None) -> list[tuple[int, float]]:
        order = self._popular_order
        if exclude is not None and len(exclude):
            order = order[~np.isin(order, exclude)]
        order = order[:k]
        return [(int(i), float(self.popularity[i])) for i in order]

    def _answer(self, rows, model: str, *, fallback: str | None = None, user: int | None = None, user_id: Any = None, explain: bool = False, unknown=()) -> Recommendations:
        items = []
        for index, score in rows:
            explanation = self._explain(user, index)["explanation"] if explain and user is not None else None
            items.append(RecommendedItem(item_id=self._item_id(index), title=self.titles[index], score=score, explanation=explanation))
        return Recommendations(items=items, model=model, fallback=fallback, user_id=user_id, unknown_item_ids=list(unknown))

    @staticmethod
    def _check_k(k: int) -> int:
        if not 1 <= int(k) <= MAX_K:
            raise BadRequestError(f"k must be between 1 and {MAX_K}, got {k}")
        return int(k)

    # ---- requests ------------------------------------------------------------------------------------------

    def recommend(self, user_id: Any, k: int = 10, *, exclude_seen: bool = True, explain: bool = False) -> Recommendations:
        """Top-k for a known user (original id, str or int); unknown users get the popular list."""
        k = self._check_k(k)
        user = self.maps.lookup_user(user_id)
        if user < 0:
            return self._answer(self._popular(k), "popularity", fallback="popular", user_id=user_id)
        if self.primary == RERANK:
            lists = {name: self._top(name, user, self.reranker.per_model, exclude_seen) for name in self.reranker.models}
            items, scores = self.reranker.rank(user, lists, k)
        else:
            items, scores = self._top(self.primary, user, k, exclude_seen)
        return self._answer(self._rows(items, scores), self.primary, user=user, user_id=_plain(self.maps.user_ids[user]), explain=explain)

    def recommend_text(self, text: str, k: int = 10) -> Recommendations:
        """Cold start from a free-text description of a user's taste."""
        k = self._check_k(k)
        if not text or not text.strip():
            raise BadRequestError("text must not be empty")
        if self.text_model is not None:
            items, scores = self.models[self.text_model].recommend_text(text, k)
            return self._answer(self._rows(items, scores), self.text_model)
        if self.text_encoder is not None and self.item_vectors is not None:
            vector = np.asarray(self.text_encoder.encode([text]), dtype=np.float32)
            if np.any(vector):
                items, scores = top_k(vector @ self.item_vectors.T, k)
                return self._answer(self._rows(items, scores), f"text:{self.manifest['encoders'][0]}")
        return self._answer(self._popular(k), "popularity", fallback="popular")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts`` with the served text encoder ([n, dim] float32)."""
        encoder = self.text_encoder
        if encoder is None and self.text_model is not None:
            encoder = getattr(self.models[self.text_model], "encoder", None)
        if encoder is None:
            raise BadRequestError("this package has no text encoder (add one to encode.encoders and a content model)")
        return np.asarray(encoder.encode(list(texts)), dtype=np.float32)

    def recommend_history(self, item_ids: list[Any], k: int = 10) -> Recommendations:
        """An anonymous session: fold in an item history (time order); unknown items are ignored and listed."""
        k = self._check_k(k)
        indices = [self.maps.lookup_item(i) for i in item_ids]
        unknown = [i for i, index in zip(item_ids, indices) if index < 0]
        known = np.array([i for i in indices if i >= 0], dtype=np.int64)
        if not len(known) or self.fold_in_model is None:
            return self._answer(self._popular(k, exclude=known), "popularity", fallback="popular", unknown=unknown)
        items, scores = self.models[self.fold_in_model].recommend_history(known, k=k, exclude_seen=True)
        return self._answer(self._rows(items, scores), self.fold_in_model, unknown=unknown)

    def similar_items(self, item_id: Any, k: int = 10) -> Recommendations:
        k = self._check_k(k)
        index = self.maps.lookup_item(item_id)
        if index < 0:
            raise NotFoundError(f"unknown item_id {item_id!r}")
        if self.similar_model is not None:
            items, scores = self.models[self.similar_model].similar_items(index, k=k)
            return self._answer(self._rows(items, scores), self.similar_model)
        if self.item_vectors is not None:
            scores = self.item_vectors @ self.item_vectors[index]
            seen = history_row([index], len(scores))
            items, top = top_k(scores[None, :], k, seen=seen)
            return self._answer(self._rows(items, top), f"embeddings:{self.manifest['encoders'][0]}")
        return self._answer(self._popular(k, exclude=np.array([index])), "popularity", fallback="popular")

    def explain(self, user_id: Any, item_id: Any) -> Explanation:
        user = self.maps.lookup_user(user_id)
        if user < 0:
            raise NotFoundError(f"unknown user_id {user_id!r}")
        index = self.maps.lookup_item(item_id)
        if index < 0:
            raise NotFoundError(f"unknown item_id {item_id!r}")
        result = self._explain(user, index)
        return Explanation(
            user_id=_plain(self.maps.user_ids[user]),
            item_id=self._item_id(index),
            title=self.titles[index],
            explanation=result["explanation"],
            evidence=result["evidence"],
        )

    def _evidence(self, user: int, index: int, k: int = 3) -> dict[str, Any]:
        """Grounding in the format of :func:`recforge.features.explanation_evidence`, from cached tables:
        the ``k`` history items most like the item (embedding cosine, else shared genres and keywords)
        and the genres and keywords the item shares with them."""
        full_history = self._history(user)
        history = np.unique(full_history)
        history = history[history != index]
        terms = set(self.genres[index]) | set(self.keywords[index])
        if not len(history):
            similarity = np.zeros(0)
        elif self.item_vectors is not None:
            similarity = self.item_vectors[history] @ self.item_vectors[index]
        else:
            similarity = np.array(
                [len(terms & (set(self.genres[h]) | set(self.keywords[h]))) / max(len(terms), 1) for h in history]
            )
        order = np.lexsort((history, -similarity))[:k] if len(history) else np.zeros(0, dtype=np.int64)
        chosen = history[order]
        return {
            "item_id": self._item_id(index),
            "item_title": self.titles[index],
            "item_genres": self.genres[index],
            "history": [
                {"item_id": self._item_id(h), "title": self.titles[h], "similarity": round(float(similarity[o]), 4), "genres": self.genres[h]}
                for h, o in zip(chosen, order)
            ],
            "shared_genres": sorted({g for h in chosen for g in self.genres[h]} & set(self.genres[index])),
            "shared_keywords": sorted({w for h in chosen for w in self.keywords[h]} & set(self.keywords[index]))[:8],
            "history_length": int(len(full_history)),
        }

    def _explain(self, user: int, index: int) -> dict[str, Any]:
        evidence = self._evidence(user, index)
        text = None
        if self.explainer is not None:
            try:
                text = str(self.explainer.explain(_plain(self.maps.user_ids[user]), self._item_id(index), evidence=evidence))
            except Exception as exc:  # an explainer failure must not fail the recommendation
                log.warning("explainer %s failed: %s", self.explainer_name, exc)
        return {"explanation": text or builtin_explanation(evidence), "evidence": evidence}

    def metadata(self) -> dict[str, Any]:
        k = self.params.evaluate.k
        return {
            "model_tag": f"{self.manifest['name']}:{self.manifest['version']}",
            "data_hash": self.manifest["data_hash"],
            "params_hash": self.manifest["params_hash"],
            "created": self.manifest["created"],
            "model": self.primary,
            "models": self.manifest["models"],
            "text_path": self.text_model or (f"text:{self.manifest['encoders'][0]}" if self.text_encoder is not None else "popularity"),
            "history_path": self.fold_in_model or "popularity",
            "similar_items_path": self.similar_model or ("embeddings" if self.item_vectors is not None else "popularity"),
            "explainer": self.explainer_name,
            "rerank_packaged": bool(self.manifest.get("rerank")),
            "rerank_served": self.primary == RERANK,
            "rerank_note": self.rerank_note,
            "device": self.device,
            "cached_user_states": self.user_states is not None,
            "metrics": {name: {key: value for key, value in m.items() if key.endswith(f"@{k}")} for name, m in self.metrics.items()},
            "counts": self.manifest["counts"],
            "example_user_id": self.manifest["example_user_id"],
        }


def limit_threads(threads: int) -> None:
    """Cap BLAS/OpenMP/torch threads per worker process.

    Requests multiply one row by small matrices: one thread is fastest, and
    idle BLAS/OpenMP threads spinning beside torch's made a 0.05 ms product
    take 20 ms under load. Throughput comes from workers and concurrency.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def builtin_explanation(evidence: dict[str, Any]) -> str:
    """A short explanation grounded in the user's own history (when no explainer plugin is available)."""
    title = evidence["item_title"]
    liked = [h["title"] for h in evidence["history"]][:2]
    if not liked:
        return f"'{title}' is popular with users like you."
    text = f"Recommended '{title}' because you interacted with " + " and ".join(f"'{t}'" for t in liked) + "."
    if evidence["shared_genres"]:
        text += f" They share the genres {', '.join(evidence['shared_genres'][:3])}."
    return text


def _item_keywords(items: pd.DataFrame, fields: list[str]) -> list[list[str]]:
    try:
        from recforge.features import item_keywords
    except ImportError:
        return [[] for _ in range(len(items))]
    return item_keywords(items, fields)


def _best_model(models: dict[str, Any], metrics: dict[str, Any], k: int) -> str:
    """The packaged model with the best validation NDCG@k (test NDCG@k when no validation figure)."""

    def score(name: str) -> float:
        m = metrics.get(name, {})
        return float(m.get("val", {}).get(f"ndcg@{k}", m.get(f"ndcg@{k}", float("-inf"))))

    return max(models, key=score)
