"""The second stage: re-rank the union of the candidate models' lists.

Leakage-free protocol (no stage ever trains on a test target):

1. The train stage fits every candidate model on **train** and writes its
   lists for the validation users (``lists/<model>/val.parquet``); it refits
   on **train + val** and writes lists for the test users (``test.parquet``).
2. Re-ranker training rows = the union of the ``val`` lists; features use the
   train events only; label 1 = the user's validation event. The test split
   is not read while training.
3. The re-ranker is a set of LambdaRank models over user-disjoint folds of the
   validation users (each early-stops on its own held-out fold); validation
   lists for ``rerank`` use each user's out-of-fold score.
4. Test rows = the union of the ``test`` lists with features from train + val
   events, scored by the average of the fold models. Test targets are read
   only to report metrics (candidate recall, ablations, evaluate stage).

Outputs: ``lists/rerank/{val,test}.parquet`` (the evaluate stage reports
``rerank`` like any model), ``models/rerank/`` (LightGBM text models +
``meta.json``), ``reports/candidate_recall.*``, ``reports/feature_importance.*``,
``plots/feature_importance.png`` and ``reports/rerank_ablation.*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge import registry
from recforge.artifacts import (
    atomic_dir,
    atomic_path,
    load_model_dir,
    read_meta,
    write_json,
    write_meta,
    write_parquet,
    write_text,
)
from recforge.errors import RecforgeError
from recforge.features import (
    LLM_PREFIXES,
    TEXT_PREFIXES,
    FeatureContext,
    PartData,
    candidate_frame,
    feature_columns,
    group_sizes,
    labels_for,
    model_columns,
    safe_name,
    truth_keys,
)
from recforge.metrics import evaluate
from recforge.params import Params
from recforge.ranking import reciprocal_rank_fusion
from recforge.reports import markdown_table
from recforge.text import item_titles
from recforge.workspace import Workspace

log = logging.getLogger(__name__)

NAME = "rerank"
HISTORY = {"val": "train", "test": "train+val"}


def candidate_models(params: Params) -> list[str]:
    """The recommenders whose lists feed the re-ranker (``rerank.models`` or all configured)."""
    chosen = params.rerank.models or list(params.recommenders)
    unknown = [m for m in chosen if m not in params.recommenders]
    if unknown:
        raise RecforgeError(f"rerank.models names unconfigured recommenders: {unknown}")
    return list(chosen)


def feature_encoders(params: Params) -> list[str]:
    """Encoders whose item embeddings give similarity features (``rerank.encoders`` or encode.encoders)."""
    return list(params.rerank.encoders if params.rerank.encoders is not None else params.encode.encoders)


def read_lists(params: Params, models: Sequence[str], part: str) -> dict[str, pd.DataFrame]:
    lists = {}
    for name in models:
        path = Path(params.paths.lists_dir) / name / f"{part}.parquet"
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run `recforge stage train` first")
        lists[name] = pd.read_parquet(path)
    return lists


def part_data(workspace: Workspace, part: str, models: Sequence[str]) -> PartData:
    """What features of ``part`` ('val' or 'test') may read: never that part's own events."""
    from recforge.profiles import settings_from_params

    params = workspace.params
    history = workspace.events(HISTORY[part])
    embeddings = {name: workspace.embeddings(name) for name in feature_encoders(params)}
    sentiment = None
    if params.rerank.sentiment:
        from recforge.sentiment import history_sentiment

        sentiment = history_sentiment(workspace, HISTORY[part])
    return PartData(
        part=part,
        history=history,
        maps=workspace.maps,
        items=workspace.items,
        lists=read_lists(params, models, part),
        embeddings=embeddings,
        sentiment=sentiment,
        text_fields=params.encode.fields,
        profile_settings=settings_from_params(params),
    )


def iter_part(
    workspace: Workspace, part: str, models: Sequence[str], llm_scorer=None, block_users: int | None = None
) -> Iterator[pd.DataFrame]:
    """Candidate + feature frames of ``part`` for consecutive blocks of (dense) users.

    The history-wide state is computed once (:class:`FeatureContext`); each
    block holds at most ``block_users`` users (``rerank.block_users``), so
    memory grows with the block, not with the number of users. Blocks come in
    user order and each is sorted by user, so their concatenation equals the
    whole part's table.
    """
    data = part_data(workspace, part, models)
    context = FeatureContext(data)
    per_model = workspace.params.rerank.candidates_per_model
    size = block_users or workspace.params.rerank.block_users
    keyed = {}
    for name, frame in data.lists.items():
        frame = frame[frame["rank"] <= per_model]
        block = data.maps.user_index(frame["user_id"]) // size
        order = np.argsort(block, kind="stable")
        keyed[name] = (frame.iloc[order], block[order])
    n_blocks = (len(data.maps.user_ids) + size - 1) // size
    for b in range(n_blocks):
        lists = {}
        for name, (frame, block) in keyed.items():
            lo, hi = np.searchsorted(block, [b, b + 1])
            lists[name] = frame.iloc[lo:hi]
        if not any(len(f) for f in lists.values()):
            continue
        yield context.add(candidate_frame(lists, data.maps, per_model), llm_scorer=llm_scorer)


def build_part(workspace: Workspace, part: str, models: Sequence[str], llm_scorer=None) -> pd.DataFrame:
    """The whole candidate + feature table of ``part`` (the blocks of :func:`iter_part`, concatenated)."""
    return pd.concat(list(iter_part(workspace, part, models, llm_scorer)), ignore_index=True)


def training_table(workspace: Workspace, models: Sequence[str] | None = None, llm_scorer=None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(features, labels, groups) the re-ranker trains on: val candidates, val targets only."""
    models = list(models or candidate_models(workspace.params))
    frame = build_part(workspace, "val", models, llm_scorer)
    labels = labels_for(frame, workspace.frame("val"))
    return frame, labels, group_sizes(frame)


def make_reranker(params: Params, features: list[str] | None = None):
    cfg = params.rerank
    options: dict[str, Any] = {
        "folds": cfg.folds,
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "num_boost_round": cfg.num_boost_round,
        "early_stopping_rounds": cfg.early_stopping_rounds,
        "seed": params.seed,
    }
    if cfg.distributed:
        orchestration = params.orchestration
        options.update({"distributed": True, "dask_address": orchestration.dask_address,
                        "dask_workers": orchestration.dask_workers})
    options.update(cfg.options)
    if features is not None:
        options["features"] = features
    return registry.rerankers.create(cfg.plugin, **options)


def ranked_lists(frame: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """Top-``k`` (user_id, item_id, rank, score) per user from row scores (ties: better rrf, lower item)."""
    table = pd.DataFrame(
        {
            "user": frame["user"].to_numpy(),
            "user_id": frame["user_id"].to_numpy(),
            "item_id": frame["item_id"].to_numpy(),
            "item": frame["item"].to_numpy(),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    table = table.sort_values(["user", "score", "item"], ascending=[True, False, True], kind="stable")
    table["rank"] = table.groupby("user").cumcount() + 1
    table = table[table["rank"] <= k]
    return pd.DataFrame(
        {
            "user_id": table["user_id"].to_numpy(),
            "item_id": table["item_id"].to_numpy(),
            "rank": table["rank"].to_numpy(np.int32),
            "score": table["score"].to_numpy(np.float32),
        }
    )


class CandidateRecall:
    """Share of users whose held-out item is among the candidates, per model and for the union.

    Fed block by block (``add``), so the test part never has to be held whole.
    """

    def __init__(self, truths: dict[str, pd.DataFrame], models: Sequence[str], n: int) -> None:
        self.truths, self.models, self.n = truths, list(models), n
        self.keys = {part: truth_keys(truth) for part, truth in truths.items()}  # once, not per block
        self.hits: dict[tuple[str, str], int] = {}
        self.rows: dict[tuple[str, str], int] = {}

    def add(self, part: str, frame: pd.DataFrame) -> None:
        labels = labels_for(frame, self.keys[part]).astype(bool)
        for name in [*self.models, "union"]:
            proposed = np.ones(len(frame), bool) if name == "union" else frame[f"{safe_name(name)}_rank"].notna().to_numpy()
            key = (part, name)
            self.hits[key] = self.hits.get(key, 0) + frame.loc[labels & proposed, "user_id"].nunique()
            self.rows[key] = self.rows.get(key, 0) + int(proposed.sum())

    def table(self) -> pd.DataFrame:
        rows = []
        for (part, name), hits in self.hits.items():
            n_users = max(self.truths[part]["user_id"].nunique(), 1)
            rows.append({"part": part, "candidates": name, "recall": hits / n_users, "rows_per_user": self.rows[(part, name)] / n_users})
        table = pd.DataFrame(rows, columns=["part", "candidates", "recall", "rows_per_user"])
        table["n"] = self.n
        return table


def _fit_and_score(params, val_frame, labels, groups, test_frame, features):
    reranker = make_reranker(params, features)
    reranker.fit(val_frame, labels, groups)
    return reranker, reranker.oof_scores, reranker.rerank(test_frame)


def ablations(
    params: Params,
    val_frame: pd.DataFrame,
    labels: np.ndarray,
    test_frame: pd.DataFrame,
    models: Sequence[str],
    truths: dict[str, pd.DataFrame],
    full: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Validation (out-of-fold) and test NDCG/Recall@K without feature groups and without each recommender."""
    k = params.evaluate.k
    length = params.evaluate.list_length
    features = feature_columns(val_frame)
    variants: list[tuple[str, list[str], str | None]] = []
    text = [f for f in features if f.startswith(TEXT_PREFIXES)]
    llm = [f for f in features if f.startswith(LLM_PREFIXES)]
    if text or llm:
        variants.append(("without text/LLM features", [f for f in features if f not in text and f not in llm], None))
    if llm:
        variants.append(("without LLM feature", [f for f in features if f not in llm], None))
    if len(models) > 1:
        for name in models:
            drop = set(model_columns(val_frame, name))
            variants.append((f"without {name}", [f for f in features if f not in drop], name))
    rows = []
    if full is not None:
        rows.append({"variant": "all features and candidates", **full})
    for label, columns, dropped in variants:
        started = time.perf_counter()
        val_part, test_part, val_labels = val_frame, test_frame, labels
        if dropped is not None:
            rank_cols = [c for c in val_frame.columns if c.endswith("_rank") and c != f"{safe_name(dropped)}_rank"]
            keep_val = val_frame[rank_cols].notna().any(axis=1).to_numpy()
            keep_test = test_frame[rank_cols].notna().any(axis=1).to_numpy()
            val_part, test_part, val_labels = val_frame[keep_val], test_frame[keep_test], labels[keep_val]
            # n_models / rrf must not count the dropped model either
            val_part, test_part = _recount(val_part, dropped), _recount(test_part, dropped)
        try:
            _, val_scores, test_scores = _fit_and_score(params, val_part, val_labels, group_sizes(val_part), test_part, columns)
        except ValueError as exc:
            log.warning("ablation %s skipped: %s", label, exc)
            continue
        val_metrics = evaluate(ranked_lists(val_part, val_scores, length), truths["val"], [k], 0)
        test_metrics = evaluate(ranked_lists(test_part, test_scores, length), truths["test"], [k], 0)
        rows.append(
            {
                "variant": label,
                f"val_ndcg@{k}": val_metrics[f"ndcg@{k}"],
                f"test_ndcg@{k}": test_metrics[f"ndcg@{k}"],
                f"test_recall@{k}": test_metrics[f"recall@{k}"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return pd.DataFrame(rows)


def _recount(frame: pd.DataFrame, dropped: str) -> pd.DataFrame:
    frame = frame.copy()
    ranks = frame[[c for c in frame.columns if c.endswith("_rank") and c != f"{safe_name(dropped)}_rank"]].to_numpy(np.float64)
    frame["n_models"] = np.isfinite(ranks).sum(axis=1).astype(np.float64)
    frame["rrf"] = reciprocal_rank_fusion(ranks)
    return frame


def write_importance(table: pd.DataFrame, params: Params) -> None:
    reports, plots = Path(params.paths.reports_dir), Path(params.paths.plots_dir)
    with atomic_path(reports / "feature_importance.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text("# Re-ranker feature importance (gain, mean over folds)\n\n" + markdown_table(table), reports / "feature_importance.md")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = table.head(25).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(top) + 1)))
    ax.barh(top["feature"], top["gain_share"])
    ax.set_xlabel("share of total gain")
    ax.set_title("re-ranker feature importance")
    fig.tight_layout()
    with atomic_path(plots / "feature_importance.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(params: Params) -> dict[str, Any]:
    """Build candidates and features, train the re-ranker on val, write lists, model and reports."""
    started = time.perf_counter()
    workspace = Workspace(params)
    cfg = params.rerank
    models = candidate_models(params)
    length = params.evaluate.list_length
    k = params.evaluate.k
    scorer = None
    if cfg.llm_scorer:
        scorer = LLMScorer(params)

    val_frame, labels, groups = training_table(workspace, models, scorer)
    features = feature_columns(val_frame)
    log.info("rerank: %d val rows (%d users, %d positives), %d features in %.1fs",
             len(val_frame), len(groups), int(labels.sum()), len(features), time.perf_counter() - started)
    try:
        reranker = make_reranker(params, features)
        reranker.fit(val_frame, labels, groups)
        val_scores = reranker.oof_scores
    except ValueError as exc:  # too little validation signal (tiny data): fall back to rank fusion
        log.warning("rerank: %s; ranking by reciprocal-rank fusion instead", exc)
        reranker, val_scores = None, val_frame["rrf"].to_numpy()
    val_lists = ranked_lists(val_frame, val_scores, length)

    # everything below reads the test targets for reporting only
    truths = {"val": workspace.frame("val"), "test": workspace.frame("test")}
    recall = CandidateRecall(truths, models, cfg.candidates_per_model)
    recall.add("val", val_frame)
    keep_tables = cfg.ablations and reranker is not None  # the ablations retrain on the whole tables
    if not keep_tables:
        del val_frame  # the test part is scored block by block; nothing else needs the val table
    # test: build, score and cut each block of users to its top list; keep the blocks only for ablations
    test_lists, kept, test_rows = [], [], 0
    for block in iter_part(workspace, "test", models, scorer):
        scores = reranker.rerank(block) if reranker is not None else block["rrf"].to_numpy()
        test_lists.append(ranked_lists(block, scores, length))
        recall.add("test", block)
        test_rows += len(block)
        if keep_tables:
            kept.append(block)
    test_lists = pd.concat(test_lists, ignore_index=True)
    write_parquet(val_lists, Path(params.paths.lists_dir) / NAME / "val.parquet")
    write_parquet(test_lists, Path(params.paths.lists_dir) / NAME / "test.parquet")

    recall = recall.table()
    reports = Path(params.paths.reports_dir)
    with atomic_path(reports / "candidate_recall.csv") as tmp:
        recall.to_csv(tmp, index=False)
    write_text(f"# Candidate recall@{cfg.candidates_per_model}\n\n" + markdown_table(recall), reports / "candidate_recall.md")
    if reranker is not None:
        write_importance(reranker.feature_importance(), params)

    val_metrics = evaluate(val_lists, truths["val"], [k], 0)
    test_metrics = evaluate(test_lists, truths["test"], [k], 0)
    full = {f"val_ndcg@{k}": val_metrics[f"ndcg@{k}"], f"test_ndcg@{k}": test_metrics[f"ndcg@{k}"],
            f"test_recall@{k}": test_metrics[f"recall@{k}"], "seconds": round(time.perf_counter() - started, 1)}
    if keep_tables:
        table = ablations(params, val_frame, labels, pd.concat(kept, ignore_index=True), models, truths, full)
        with atomic_path(reports / "rerank_ablation.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_text("# Re-ranker ablations (val = out-of-fold)\n\n" + markdown_table(table), reports / "rerank_ablation.md")

    meta = {
        "name": NAME,
        "plugin": cfg.plugin,
        "models": models,
        "encoders": feature_encoders(params),
        "features": features,
        "candidates_per_model": cfg.candidates_per_model,
        "training": {"part": "val", "history": HISTORY["val"], "rows": int(len(labels)), "users": int(len(groups)),
                     "positives": int(labels.sum())},
        "scoring": {"part": "test", "history": HISTORY["test"], "rows": test_rows},
        "llm_scorer": bool(cfg.llm_scorer),
        "fallback": None if reranker is not None else "rrf",
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_dir(Path(params.paths.models_dir) / NAME) as staging:
        if reranker is not None:
            reranker.save(staging)
        meta = write_meta(staging, meta)
    log.info("rerank: val ndcg@%d %.4f (out-of-fold), test ndcg@%d %.4f in %.1fs",
             k, full[f"val_ndcg@{k}"], k, full[f"test_ndcg@{k}"], meta["seconds"])
    return {**meta, "metrics": full, "candidate_recall": recall.to_dict("records")}


def load_reranker(params: Params):
    """The trained re-ranker (checksums verified) and its meta.json."""
    directory = Path(params.paths.models_dir) / NAME
    meta = read_meta(directory, missing="no trained re-ranker; run `recforge stage rerank`")
    if meta.get("fallback"):
        raise RecforgeError(f"{directory}: no re-ranker was trained (too little validation data; lists use {meta['fallback']})")
    return load_model_dir(directory, registry.rerankers, meta=meta)


class LLMScorer:
    """TALLRec/LlamaRec-style feature: log P(Yes) - log P(No) that the user will enjoy the item.

    The prompt lists the user's last ``rerank.llm_history`` history titles and
    asks about the candidate; only each user's top ``rerank.llm_candidates``
    candidates (by reciprocal-rank fusion) are scored, the rest get NaN.
    Prompts are batched; scores are cached on disk by prompt hash
    (``<cache_dir>/rerank-llm/<model hash>.json``).
    """

    def __init__(self, params: Params) -> None:
        self.params = params
        cfg = params.rerank
        self.model = cfg.llm_model
        self.top = cfg.llm_candidates
        self.history = cfg.llm_history
        self.batch_size = cfg.llm_batch_size
        key = hashlib.sha1(str(self.model or "smollm2").encode()).hexdigest()[:12]
        self.cache_path = Path(params.paths.cache_dir) / "rerank-llm" / f"{key}.json"
        self.cache: dict[str, float] = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def prompts(self, frame: pd.DataFrame, data: PartData) -> tuple[np.ndarray, list[str]]:
        titles = item_titles(data.items)
        order = frame.assign(_r=-frame["rrf"]).sort_values(["user", "_r"], kind="stable")
        chosen = order.groupby("user").head(self.top).index.to_numpy()
        sequences = data.history.sequences
        texts = []
        for row in chosen:
            user, item = int(frame.at[row, "user"]), int(frame.at[row, "item"])
            recent = "; ".join(titles[i] for i in sequences[user][-self.history:][::-1])
            texts.append(
                f"A user recently watched: {recent}.\nWill this user enjoy \"{titles[item]}\"? Answer Yes or No."
            )
        return chosen, texts

    def __call__(self, frame: pd.DataFrame, data: PartData) -> np.ndarray:
        rows, texts = self.prompts(frame, data)
        out = np.full(len(frame), np.nan)
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        todo = sorted({key: text for key, text in zip(keys, texts, strict=True) if key not in self.cache}.items())
        if todo:
            scores = self.score([text for _, text in todo])
            self.cache.update({key: float(s) for (key, _), s in zip(todo, scores, strict=True)})
            write_json(self.cache, self.cache_path)
        out[frame.index.get_indexer(rows)] = [self.cache[key] for key in keys]
        return out

    def score(self, texts: list[str]) -> np.ndarray:
        """log P(" Yes") - log P(" No") for the assistant's first token, per prompt."""
        import torch

        from recforge.llm import load_causal_lm
        from recforge.workspace import resolve_device

        tokenizer, model = load_causal_lm(self.model, device=resolve_device(self.params.serve.device))
        tokenizer.padding_side = "left"
        yes = tokenizer.encode("Yes", add_special_tokens=False)[0]
        no = tokenizer.encode("No", add_special_tokens=False)[0]
        chats = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            if getattr(tokenizer, "chat_template", None) else t + "\nAnswer:"
            for t in texts
        ]
        scores = np.empty(len(texts))
        started, reported = time.perf_counter(), 0
        with torch.inference_mode():
            for start in range(0, len(chats), self.batch_size):
                batch = tokenizer(chats[start : start + self.batch_size], return_tensors="pt", padding=True).to(model.device)
                logits = model(**batch).logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)
                scores[start : start + len(batch["input_ids"])] = (logp[:, yes] - logp[:, no]).cpu().numpy()
                done = start + len(batch["input_ids"])
                if done - reported >= max(len(chats) // 10, 1) or done == len(chats):  # progress in the stage log
                    elapsed = time.perf_counter() - started
                    log.info("llm scorer: %d/%d prompts, %.0f s, about %.0f s left",
                             done, len(chats), elapsed, elapsed / done * (len(chats) - done))
                    reported = done
        return scores


def explain_recommendation(
    params: Params,
    user_id: Any,
    item_id: Any,
    explainers: Sequence[str] = ("template", "llm"),
    *,
    part: str = "full",
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evidence and one explanation per explainer for original ``user_id`` / ``item_id``.

    The history is train + val (``part='full'``, what is served) or train
    (``'val'``); similarity uses the first feature encoder with embeddings,
    else shared genres and keywords.
    """
    from recforge.features import explanation_evidence

    workspace = Workspace(params)
    maps = workspace.maps
    user, item = maps.lookup_user(user_id), maps.lookup_item(item_id)
    if item < 0:
        raise RecforgeError(f"unknown item {item_id!r}")
    if user < 0:
        raise RecforgeError(f"unknown user {user_id!r}")
    history = workspace.events("train+val" if part == "full" else "train")
    vectors = None
    for name in feature_encoders(params):
        try:
            vectors = workspace.embeddings(name)
            break
        except RecforgeError:
            continue
    evidence = explanation_evidence(history, workspace.items, user, item, vectors=vectors, text_fields=params.encode.fields)
    texts: dict[str, str] = {}
    for name in explainers:
        explainer = registry.explainers.create(name, **(options or {}).get(name, {}))
        started = time.perf_counter()
        texts[name] = explainer.explain(user_id, item_id, evidence=evidence)
        log.info("explainer %s: %.1fs (%s)", name, time.perf_counter() - started, getattr(explainer, "last_source", name))
    return {"user_id": user_id, "item_id": item_id, "evidence": evidence, "explanations": texts}
