"""LightGBM LambdaRank re-ranker, averaged over user-disjoint folds.

With only a few hundred validation users whose target is among the
candidates, one train/early-stop split is noisy. ``fit`` therefore splits the
groups (users) into ``folds`` disjoint parts; model ``f`` trains on the other
parts and early-stops on part ``f``. With ``repeats`` > 1 the whole fold
split is drawn again (seed + r) and trained again, as in repeated
cross-validation: a small validation set gives a noisy ensemble, and averaging
over several fold splits removes much of the seed-to-seed spread. ``rerank``
averages all models' scores; ``oof_scores`` holds, for the training rows, the
mean over repeats of the score of the model that did not train on that user
(honest validation lists). Fold ``f``'s out-of-fold scores are read at the
round the *other* folds' held-out curves choose (``oof_iterations``), never at
one chosen on fold ``f``'s own labels: picking the round on the rows it then
scores inflated the reported validation NDCG@10 by 0.003-0.006 on
ml-latest-small (docs/rerank.md, "Honest out-of-fold figures"). Groups without a
positive label carry no ranking signal and are left out of training.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.candidates import positive_groups
from recforge.progress import Progress
from recforge.ranking import batched
from recforge.threads import resolve_threads

log = logging.getLogger(__name__)

COMPILE_LOCK_S = 600.0  # longest wait for another process compiling the same cache (then LightGBM scores)
PREDICT_ROWS = 1_000_000  # rows scored per LightGBM predict call (bounds the copies made for scoring)


def window_mean(curves: list, rounds: int) -> float:
    """The folds' mean held-out NDCG after ``rounds`` rounds, each fold's curve averaged over its last 5 rounds."""
    return float(np.mean([c[max(0, rounds - 5) : rounds] for c in curves], axis=0).mean())


def peak_round(curves: list) -> int:
    """The round ``selection='mean'`` chooses from these held-out curves (of equal length): 2 before the first
    peak of :func:`window_mean` (at least 1), as ``_fit_lockstep`` chooses it while growing the folds."""
    means = [window_mean(curves, rounds) for rounds in range(1, len(curves[0]) + 1)]
    return max(1, int(np.argmax(means)) + 1 - 2)


def fold_assignment(n_groups: int, useful: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Each group's fold (``-1``: not ``useful``, i.e. no positive label): a seeded shuffle of the useful groups
    dealt round-robin into ``n_folds`` folds of near-equal size."""
    rng = np.random.default_rng(seed)
    fold_of_group = np.full(n_groups, -1)
    fold_of_group[useful] = rng.permutation(len(useful)) % n_folds
    return fold_of_group


class LambdaRankReranker:
    """``fit(candidates, labels, groups)`` / ``rerank(candidates)`` over numeric feature columns.

    With ``distributed`` each fold trains on Dask (:mod:`.dask_lambdarank`):
    on the scheduler at ``dask_address`` or a LocalCluster of ``dask_workers``
    processes. Where it trains is not part of the saved model.
    """

    oof_scores: np.ndarray | None  # out-of-fold score per training row, set by fit

    def __init__(
        self,
        folds: int = 5,
        repeats: int = 1,
        num_leaves: int = 31,
        learning_rate: float = 0.05,
        num_boost_round: int = 500,
        early_stopping_rounds: int = 50,
        min_data_in_leaf: int = 20,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        lambdarank_truncation_level: int = 20,
        eval_at: int = 10,
        seed: int = 0,
        selection: str = "mean",
        objective: str = "lambdarank",
        lambda_l2: float = 0.0,
        threads: int | str | None = None,
        distributed: bool = False,
        dask_address: str | None = None,
        dask_workers: int = 2,
        features: list[str] | None = None,
    ) -> None:
        self.config = {
            "folds": int(folds),
            "repeats": int(repeats),
            "num_leaves": int(num_leaves),
            "learning_rate": float(learning_rate),
            "num_boost_round": int(num_boost_round),
            "early_stopping_rounds": int(early_stopping_rounds),
            "min_data_in_leaf": int(min_data_in_leaf),
            "feature_fraction": float(feature_fraction),
            "bagging_fraction": float(bagging_fraction),
            "lambdarank_truncation_level": int(lambdarank_truncation_level),
            "eval_at": int(eval_at),
            "seed": int(seed),
            "selection": str(selection),
            "objective": str(objective),
            "lambda_l2": float(lambda_l2),
            "threads": threads,
            "distributed": bool(distributed),
        }
        self.dask_address = dask_address
        self.dask_workers = int(dask_workers)
        self.features = list(features) if features else None
        self.boosters: list[Any] = []
        self.best_iterations: list[int] = []
        self.oof_iterations: list[int] = []  # per fold model: the round its out-of-fold scores are read at
        self.curves: list[list[float]] = []  # per fold model: its held-out NDCG@eval_at after each round (lock-step)
        self.oof_scores = None
        self.compiled: list[Any] = []  # lleaves models of the saved fold files, when compiled for serving
        self._repeat = 0  # the repeat being trained (its fold split and LightGBM seed: seed + repeat)

    def _lgb_params(self) -> dict[str, Any]:
        cfg = self.config
        params = {
            "objective": cfg["objective"],
            "metric": "ndcg",
            "eval_at": [cfg["eval_at"]],
            "num_leaves": cfg["num_leaves"],
            "learning_rate": cfg["learning_rate"],
            "min_data_in_leaf": cfg["min_data_in_leaf"],
            "feature_fraction": cfg["feature_fraction"],
            "bagging_fraction": cfg["bagging_fraction"],
            "bagging_freq": 1,
            "lambdarank_truncation_level": cfg["lambdarank_truncation_level"],
            "lambda_l2": cfg["lambda_l2"],
            "seed": cfg["seed"] + self._repeat,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }
        # every available core by default (``auto``); LightGBM's deterministic mode gives the same models for
        # the same seed and thread count (recforge.threads)
        params["num_threads"] = resolve_threads(cfg["threads"])
        return params

    def _matrix(self, candidates: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The feature matrix (float32): a frame's ``features`` columns, or a matrix already in that order."""
        if isinstance(candidates, np.ndarray):
            if self.features is None or candidates.ndim != 2 or candidates.shape[1] != len(self.features):
                raise ValueError(f"a feature matrix needs one column per feature ({self.features})")
            return np.asarray(candidates, dtype=np.float32)
        if self.features is None:
            self.features = [c for c in candidates.columns if c not in ("user", "item", "user_id", "item_id", "label")]
        missing = [c for c in self.features if c not in candidates.columns]
        if missing:
            raise ValueError(f"candidate table lacks feature columns {missing}")
        return candidates[self.features].to_numpy(np.float32)

    def fit(self, candidates: pd.DataFrame, labels: np.ndarray, groups: np.ndarray) -> LambdaRankReranker:
        """Train ``folds`` models on user-disjoint parts (rows in consecutive ``groups`` blocks)."""
        X = self._matrix(candidates)
        labels = np.asarray(labels, dtype=np.float64)
        groups = np.asarray(groups, dtype=np.int64)
        if groups.sum() != len(X) or len(labels) != len(X):
            raise ValueError(f"rows {len(X)}, labels {len(labels)}, sum(groups) {groups.sum()} must agree")
        useful = np.flatnonzero(positive_groups(labels, groups))
        if len(useful) < 2:
            raise ValueError("fewer than two groups with a positive label: nothing to learn from")
        if self.config["repeats"] < 1:
            raise ValueError("repeats must be at least 1")
        n_folds = max(1, min(self.config["folds"], len(useful) // 2))
        row_group = np.repeat(np.arange(len(groups)), groups)
        boosters, best_iterations, oof_iterations, curves, oofs = [], [], [], [], []
        for repeat in range(self.config["repeats"]):
            self._repeat = repeat
            oofs.append(self._fit_folds(X, labels, groups, useful, row_group, n_folds))
            boosters += self.boosters
            best_iterations += self.best_iterations
            oof_iterations += self.oof_iterations
            curves += self.curves
        self._repeat = 0
        self.boosters, self.best_iterations, self.oof_iterations = boosters, best_iterations, oof_iterations
        self.curves = curves
        oof = np.mean(oofs, axis=0) if n_folds > 1 else np.full(len(X), np.nan)
        # rows of users without a positive (or the single-fold case) get the ensemble's score
        missing = np.flatnonzero(np.isnan(oof))
        for part in batched(len(missing), PREDICT_ROWS):
            oof[missing[part]] = self._predict(X[missing[part]])
        self.oof_scores = oof
        self.boosters = [_detached(booster) for booster in self.boosters]
        log.info(
            "lambdarank: %d folds x %d repeats, best iterations %s (out-of-fold scores at %s)",
            n_folds,
            self.config["repeats"],
            self.best_iterations,
            self.oof_iterations,
        )
        return self

    def _fit_folds(self, X, labels, groups, useful, row_group, n_folds: int) -> np.ndarray:
        """One fold split (seed + repeat): sets ``boosters``/``best_iterations``/``oof_iterations``, returns its
        out-of-fold scores."""
        fold_of_group = fold_assignment(len(groups), useful, n_folds, self.config["seed"] + self._repeat)
        self.boosters, self.best_iterations, self.curves = [], [], []
        oof = np.full(len(X), np.nan)

        held_groups = [np.flatnonzero(fold_of_group == fold) for fold in range(n_folds)]
        held_rows = [np.isin(row_group, held) for held in held_groups]

        def fold_data(fold: int) -> tuple:
            """(X, y, group sizes) to train on, then to early-stop on; copies, made only while the fold is set up."""
            train_groups = useful if n_folds == 1 else np.flatnonzero((fold_of_group >= 0) & (fold_of_group != fold))
            train_rows, held = np.isin(row_group, train_groups), held_rows[fold]
            return (
                X[train_rows],
                labels[train_rows],
                groups[train_groups],
                X[held],
                labels[held],
                groups[held_groups[fold]],
            )

        if self.config["distributed"]:
            for fold in range(n_folds):
                booster, best = self._fit_dask(*fold_data(fold)[:3])
                self.boosters.append(booster)
                self.best_iterations.append(best)
            self.oof_iterations = list(self.best_iterations)  # a fixed round count: nothing chosen on a fold
        else:
            self._fit_lockstep([lambda f=fold: fold_data(f) for fold in range(n_folds)])
        if n_folds > 1:
            for booster, rounds, rows_va in zip(self.boosters, self.oof_iterations, held_rows, strict=True):
                oof[rows_va] = booster.predict(X[rows_va], num_iteration=rounds)
        return oof

    def _fit_lockstep(self, datasets: list) -> None:
        """Grow every fold's model one round at a time and stop all of them together.

        The round count is chosen on the mean of the folds' held-out NDCG
        (``selection='mean'``, smoothed over 5 rounds, patience
        ``early_stopping_rounds``; :func:`peak_round`), which is far less noisy
        than one fold's curve; ``selection='fold'`` stops each fold on its own
        curve. Either way fold ``f``'s out-of-fold round (``oof_iterations``) is
        :func:`peak_round` of the other folds' curves, cut to the rounds every
        fold trained: no fold's own labels choose the round it is scored at.
        """
        import lightgbm as lgb

        cfg = self.config
        boosters = []
        for make in datasets:  # one fold's raw rows at a time; LightGBM keeps only its binned copy
            X_tr, y_tr, g_tr, X_va, y_va, g_va = make()
            train_set = lgb.Dataset(X_tr, y_tr, group=g_tr, feature_name=self.features)
            booster = lgb.Booster(self._lgb_params(), train_set)
            booster.add_valid(lgb.Dataset(X_va, y_va, group=g_va, reference=train_set), "held")
            boosters.append(booster)
            del X_tr, y_tr, X_va, y_va
        curves = [[] for _ in boosters]
        active = [True] * len(boosters)
        best_mean, best_round, patience = -np.inf, 0, cfg["early_stopping_rounds"]
        progress = Progress(
            f"lambdarank: {len(boosters)} fold models", cfg["num_boost_round"], unit=" rounds (at most)"
        )
        for round_ in range(1, cfg["num_boost_round"] + 1):
            progress.advance()
            for i, booster in enumerate(boosters):
                if active[i]:
                    booster.update()
                    curves[i].append(booster.eval_valid()[0][2])
            if cfg["selection"] == "mean":
                mean = window_mean(curves, round_)
                if mean > best_mean:
                    best_mean, best_round = mean, max(1, round_ - 2)
                elif round_ - best_round >= patience:
                    break
            else:
                for i, curve in enumerate(curves):
                    if active[i] and len(curve) - 1 - int(np.argmax(curve)) >= patience:
                        active[i] = False
                if not any(active):
                    break
        self.boosters, self.curves = boosters, curves
        if cfg["selection"] == "mean":
            self.best_iterations = [best_round] * len(boosters)
        else:
            self.best_iterations = [int(np.argmax(c)) + 1 for c in curves]
        trained = min(len(c) for c in curves)
        self.oof_iterations = [
            peak_round([c[:trained] for j, c in enumerate(curves) if j != i]) if len(curves) > 1 else best
            for i, best in enumerate(self.best_iterations)
        ]

    def _fit_dask(self, X: np.ndarray, y: np.ndarray, group: np.ndarray) -> tuple[Any, int]:
        from recforge_plugins.rerankers.dask_lambdarank import train_dask_ranker

        cfg = self.config
        model = train_dask_ranker(
            X,
            y,
            group,
            address=self.dask_address,
            workers=self.dask_workers,
            num_leaves=cfg["num_leaves"],
            learning_rate=cfg["learning_rate"],
            n_estimators=cfg["num_boost_round"],
            seed=cfg["seed"] + self._repeat,
            min_child_samples=cfg["min_data_in_leaf"],
        )
        booster = model.booster_
        return booster, int(booster.current_iteration())

    def compile_for_serving(self, directory: Path, cache_dir: Path) -> bool:
        """Compile the saved ``fold_<i>.txt`` files to native code with lleaves (LLVM), one object per file in
        ``cache_dir`` named by the file's SHA-256; ``rerank`` then scores through them, single-threaded.

        Same trees, same scores (lleaves reproduces LightGBM's prediction to ~1e-15), 3-5x faster for the
        few hundred rows of one request. Compiling takes about a second per fold model, once per model
        content. False (LightGBM keeps scoring) when lleaves is not installed or compiling fails.
        """
        try:
            import lleaves
        except ImportError:
            return False
        from recforge.artifacts import sha256_file
        from recforge.locking import workspace_lock

        compiled = []
        try:
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            # one compiler at a time (service workers start together); an object appears whole or not at all
            with workspace_lock(cache_dir.parent / f".{cache_dir.name}-lock", timeout=COMPILE_LOCK_S):
                for i in range(len(self.boosters)):
                    path = Path(directory) / f"fold_{i}.txt"
                    final = cache_dir / f"{sha256_file(path)}.o"
                    model = lleaves.Model(model_file=str(path))
                    if final.exists():
                        model.compile(cache=str(final))  # loads the cached object
                    else:
                        staging = cache_dir / f".{final.name}.{os.getpid()}.tmp"
                        staging.unlink(missing_ok=True)
                        model.compile(cache=str(staging))  # compiles and writes the object there
                        os.replace(staging, final)
                    compiled.append(model)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: LightGBM keeps scoring
            log.warning(
                "lambdarank: compiling the fold models failed (%s: %s); scoring with LightGBM", type(exc).__name__, exc
            )
            return False
        self.compiled = compiled
        return True

    def _predict(self, X: np.ndarray) -> np.ndarray:
        if not self.boosters:
            raise RuntimeError("rerank() before fit()")
        if self.compiled:
            X64 = np.ascontiguousarray(X, dtype=np.float64)
            return sum(model.predict(X64, n_jobs=1) for model in self.compiled) / len(self.compiled)
        total = np.zeros(len(X))
        for part in batched(len(X), PREDICT_ROWS):
            for booster, best in zip(self.boosters, self.best_iterations, strict=True):
                total[part] += booster.predict(X[part], num_iteration=best)
        return total / len(self.boosters)

    def rerank(self, candidates: pd.DataFrame) -> np.ndarray:
        """Mean score of the fold models for each row (higher is better)."""
        return self._predict(self._matrix(candidates))

    def feature_importance(self) -> pd.DataFrame:
        """Gain and split importance per feature, averaged over the fold models."""
        gains = np.mean(
            [
                b.feature_importance("gain", iteration=i)
                for b, i in zip(self.boosters, self.best_iterations, strict=True)
            ],
            axis=0,
        )
        splits = np.mean(
            [
                b.feature_importance("split", iteration=i)
                for b, i in zip(self.boosters, self.best_iterations, strict=True)
            ],
            axis=0,
        )
        table = pd.DataFrame({"feature": self.features, "gain": gains, "splits": splits})
        table["gain_share"] = table["gain"] / max(table["gain"].sum(), 1e-12)
        return table.sort_values("gain", ascending=False, ignore_index=True)

    def save(self, directory: Path) -> None:
        """LightGBM text models ``fold_<i>.txt`` and ``reranker.json`` (config, features, iterations)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for i, (booster, best) in enumerate(zip(self.boosters, self.best_iterations, strict=True)):
            booster.save_model(str(directory / f"fold_{i}.txt"), num_iteration=best)
        (directory / "reranker.json").write_text(
            json.dumps(
                {"config": self.config, "features": self.features, "best_iterations": self.best_iterations}, indent=2
            )
        )

    @classmethod
    def load(cls, directory: Path) -> LambdaRankReranker:
        import lightgbm as lgb

        directory = Path(directory)
        meta = json.loads((directory / "reranker.json").read_text())
        model = cls(**meta["config"], features=meta["features"])
        model.boosters = [
            lgb.Booster(model_file=str(directory / f"fold_{i}.txt")) for i in range(len(meta["best_iterations"]))
        ]
        model.best_iterations = [int(b.current_iteration()) for b in model.boosters]
        return model


def _detached(booster):
    """The same trees without the training and early-stopping datasets a trained booster keeps (LightGBM's
    binned copies and score buffers: hundreds of MiB at a million rows); its predictions are unchanged."""
    import lightgbm as lgb

    return lgb.Booster(model_str=booster.model_to_string(num_iteration=-1))
