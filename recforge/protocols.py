"""The interfaces every plugin implements.

Plugins are plain classes; they satisfy a protocol by shape, not by
inheritance. Users and items are dense indices (see recforge.interactions);
the stages translate to and from original ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from recforge.interactions import IdMaps, Interactions

if TYPE_CHECKING:
    from recforge.profiles import ProfileSettings


@dataclass
class FitContext:
    """What a recommender may use besides the training events.

    - ``items``: the items table, rows aligned with dense item indices;
      ``maps``: original <-> dense ids.
    - ``embeddings(name)``: the L2-normalised item embeddings [n_items, dim]
      the encode stage wrote for encoder ``name`` (one of encode.encoders);
      raises ``RecforgeError`` when it wrote none.
    - ``encoder_and_embeddings(name)``: encoder ``name`` fitted on the items'
      text as the encode stage fits it (encode.options), and the item
      embeddings it gives; for an encoder the stage was not configured with,
      both are computed and cached on first use. Use it to embed new text
      exactly as the items were embedded.
    - ``text_fields``: the item columns the encoders read (encode.fields).
    - ``users`` / ``user_fields``: the users table (original ids) and the
      columns holding the users' own text (encode.user_fields), when there is
      one.
    - ``profile_settings``: how user profiles weight history events
      (encode.profile_*; a ``recforge.profiles.ProfileSettings``).
    - ``validation``: held-out events a model may use for early stopping and
      tuning; never test events.
    - ``profiles(name, events)``: the user profile vectors [n_users, dim]
      the encode stage wrote for encoder ``name`` from exactly ``events``
      (the events being fitted: train for the validation fit, train + val
      for the refit) with the ``profile_settings`` weighting, or None when it
      wrote none or none fresh. Models that use profiles read them here
      rather than computing their own.
    - ``seed``, ``device`` (``cpu`` | ``cuda``), ``progress(message, share)``
      for long fits.

    A field is ``None`` where the caller has nothing to give (a test, a served
    package); plugins fall back to their own defaults.
    """

    items: pd.DataFrame
    maps: IdMaps | None = None
    embeddings: Callable[[str], np.ndarray] | None = None
    encoder_and_embeddings: Callable[[str], tuple[Encoder, np.ndarray]] | None = None
    text_fields: Sequence[str] | None = None
    users: pd.DataFrame | None = None
    user_fields: Sequence[str] | None = None
    profile_settings: ProfileSettings | None = None
    validation: Interactions | None = None
    profiles: Callable[[str, Interactions], np.ndarray | None] | None = None
    seed: int = 0
    device: str = "cpu"
    progress: Callable[[str, float], None] | None = None


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors.

    ``fit`` is called once with the corpus (items' text) before ``encode``;
    encoders that need no training return ``self``. ``name`` and ``dim`` key
    the on-disk embedding cache together with a hash of the texts.

    ``save`` writes what ``encode`` needs to a directory, in safe formats only
    (JSON, npz, safetensors; never pickle); ``load`` restores it, so that
    ``load(d).encode(texts)`` equals ``encode(texts)`` after ``save(d)``. The
    encode stage caches and packages the fitted state this way, and a served
    model embeds free text with it. An encoder whose weights come from an
    installed package or a local model path saves only its settings (model
    path, dtype, pooling), not the weights, unless it fine-tuned them.
    """

    name: str

    @property
    def dim(self) -> int: ...

    def fit(self, texts: Sequence[str]) -> Encoder: ...

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Encoder: ...


@runtime_checkable
class Recommender(Protocol):
    """A candidate recommender.

    ``fit`` learns from training events. ``recommend`` returns, for each user
    index, the top-``k`` item indices and their scores (both ``[n_users, k]``,
    best first); with ``exclude_seen`` the user's training items never appear;
    with ``candidates`` (``[n_users, c]`` item indices, -1 padded) only those
    items are scored. Where fewer than ``k`` items qualify, the rest of the row
    is -1 with score ``-inf``. ``save``/``load`` use safe formats only
    (npz, JSON, safetensors), never pickle.
    """

    def fit(self, train: Interactions, *, context: FitContext) -> Recommender: ...

    def recommend(
        self,
        user_ids: np.ndarray,
        *,
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> Recommender: ...


@runtime_checkable
class CompiledScoring(Protocol):
    """Optional (re-rankers): compile the saved model to native code for serving.

    ``compile_for_serving(directory, cache_dir)`` compiles the model files in
    ``directory`` (as written by ``save``), keeping compiled objects in
    ``cache_dir`` keyed by the model files' content, and returns True when
    ``rerank`` now scores through them (the same scores), False when it cannot.
    """

    def compile_for_serving(self, directory: Path, cache_dir: Path) -> bool: ...


@runtime_checkable
class SimilarItems(Protocol):
    """Optional: items most similar to one item (best first, the item itself excluded)."""

    def similar_items(self, item_id: int, *, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class FoldIn(Protocol):
    """Optional: score a user unseen in training from an item history (time order)."""

    def recommend_history(
        self, item_ids: np.ndarray, *, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Refittable(Protocol):
    """Optional: options that carry what a validation fit chose over to the refit.

    The train stage fits a model on train (validation events in the context),
    then fits a fresh instance on train + val with no validation events; the
    options ``refit_options`` returns override the configured ones for that
    refit (e.g. ``{"epochs": 7}``, the best validation epoch of a model that
    early-stops). Tuning records them with each trial.
    """

    def refit_options(self) -> dict[str, Any]: ...


@runtime_checkable
class WarmRefit(Protocol):
    """Optional: the train+val refit continues from the validation fit instead of starting over.

    ``warm_refit(train_val, context=...)`` returns a new fitted model (the
    validation fit itself is left as it is, and saved as the ``val`` model), or
    None when the model's options ask for a refit from scratch; the train stage
    then refits a fresh instance with ``refit_options``.
    """

    def warm_refit(self, train: Interactions, *, context: FitContext) -> Any: ...


@runtime_checkable
class Reranker(Protocol):
    """Second stage: scores (user, candidate) rows from a feature table.

    ``fit`` learns from ``candidates`` (one row per user and candidate item:
    ``user``, ``item``, ``user_id``, ``item_id`` and numeric feature columns),
    ``labels`` (1 for the held-out target, 0 otherwise) and ``groups`` (the
    sizes of consecutive per-user blocks of rows). It raises ``ValueError``
    when the table carries too little signal to learn from (the rerank stage
    then falls back to rank fusion).

    ``rerank`` scores the rows of a table with the same feature columns
    (higher is better; rows are independent of the table's other users).

    ``oof_scores`` is set by ``fit``: one score per training row from a model
    that did not see that row's user (out-of-fold), with nothing about that
    model (e.g. its round count) chosen on that row's labels, so that the
    validation lists and ablations built from them are honest; a reranker
    without folds gives its own scores. ``None`` before ``fit``.

    ``feature_importance`` is a table with one row per feature column the
    model uses: ``feature``, ``gain``, ``splits`` and ``gain_share`` (gain
    over total gain), sorted by gain, best first.

    ``save``/``load`` use safe formats only (JSON, npz, LightGBM text
    models; never pickle); ``load(d).rerank(t)`` equals ``rerank(t)`` after
    ``save(d)``.

    Construction: the rerank stage creates the plugin with keyword options
    ``features`` (the columns to use), ``seed``, the rerank section's model
    settings ``folds``, ``num_leaves``, ``learning_rate``, ``num_boost_round``
    and ``early_stopping_rounds`` (a plugin with no use for one accepts and
    ignores it, e.g. through ``**_``), ``distributed``/``dask_address``/
    ``dask_workers`` when ``rerank.distributed`` is on, and everything in
    ``rerank.options``.
    """

    oof_scores: np.ndarray | None

    def fit(self, candidates: pd.DataFrame, labels: np.ndarray, groups: np.ndarray) -> Reranker: ...

    def rerank(self, candidates: pd.DataFrame) -> np.ndarray: ...

    def feature_importance(self) -> pd.DataFrame: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Reranker: ...


@runtime_checkable
class Explainer(Protocol):
    """Writes a short reason why ``item`` suits ``user``, grounded in ``evidence``
    (history items that drove the score, shared keywords)."""

    def explain(self, user: Any, item: Any, *, evidence: dict[str, Any]) -> str: ...


@runtime_checkable
class TextQuery(Protocol):
    """Optional: cold start from free text (a description of someone's taste).

    ``recommend_text`` returns the top-``k`` item indices and scores (both
    ``[k]``, best first; -1 / ``-inf`` padded) for ``text``; ``encoder`` is the
    fitted :class:`Encoder` that embeds the text (the service's ``/encode``
    serves it). The service answers ``/recommend/text`` with the first
    packaged model that has this ability.
    """

    encoder: Encoder

    def recommend_text(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class UserStates(Protocol):
    """Optional: a model whose scores for a fitted user depend on one fixed vector, its state.

    ``user_states`` returns the state of every fitted user (``[n_users, dim]``
    float32), computed so that a user's state never depends on the batch it was
    computed in. ``recommend_states`` then answers ``recommend`` for
    ``user_ids`` from their ``states`` (the matching rows of ``user_states()``)
    without recomputing them: same arguments and results as ``recommend``.
    A server computes the states once at load and scores each request with
    one small product (a sequential model's state is its recurrent pass over
    the user's history). A model whose state summarises a time-ordered
    history is also the one the service prefers to fold in an anonymous
    session (``FoldIn``), since it scores that session the way it scores a
    fitted user.
    """

    def user_states(self) -> np.ndarray: ...

    def recommend_states(
        self, user_ids: np.ndarray, states: np.ndarray, *, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]: ...
