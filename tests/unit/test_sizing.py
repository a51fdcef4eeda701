"""recforge.sizing: the data-derived rules behind ``auto`` (configs/quality.yaml), and their wiring into the
sequential plugin, the re-ranker factory and LambdaRank's repeated fold splits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recforge import rerank, sizing
from recforge.data.synthetic import generate
from recforge.interactions import IdMaps, Interactions
from recforge.params import SyntheticParams, load_params
from recforge.protocols import FitContext

from recforge_plugins.recommenders.sequential import Sequential
from recforge_plugins.rerankers.lambdarank import LambdaRankReranker

AUTO = {"max_len": "auto", "batch_size": "auto", "epochs": "auto"}


def test_sequence_sizes_for_few_long_histories():
    # 600 users x 100 events (ml-latest-small-like): median window, the smallest batch, the most epochs
    sizes = sizing.sequence_sizes([100] * 600, **AUTO)
    # 600 windows of 101: 600 // 50 = 12 -> batch 32 (the floor); 19 steps -> 158 epochs -> 50 (the cap)
    assert sizes == {"max_len": 100, "batch_size": 32, "epochs": 50}


def test_sequence_sizes_for_many_short_histories():
    # 100,000 shoppers x 8 events: the shortest window, a large batch, fewer epochs
    sizes = sizing.sequence_sizes(np.full(100_000, 8), **AUTO)
    # 100,000 windows // 50 = 2,000 -> 1,024 -> 512 (the cap); 196 steps -> 16 epochs, and 700,000 targets
    # allow ceil(10M / 700k) = 15: the target budget decides
    assert sizes == {"max_len": 20, "batch_size": 512, "epochs": 15}


def test_sequence_epochs_are_bounded_by_the_target_budget():
    """At a million events the epoch count follows the 10M-target budget, not the step rule (31 here), and never
    falls under 5 (catches the budget ignored, or applied below the floor at 10M events)."""
    million = sizing.sequence_sizes(np.full(50_000, 20), **AUTO)
    assert million["batch_size"] == 512 and million["epochs"] == math.ceil(10_000_000 / (50_000 * 19)) == 11
    assert sizing.sequence_sizes(np.full(500_000, 20), **AUTO)["epochs"] == 5


def test_sequence_sizes_in_between_and_given_values_kept():
    lengths = np.r_[np.full(3_000, 37), np.full(10, 1)]  # one-event histories teach nothing and are ignored
    sizes = sizing.sequence_sizes(lengths, **AUTO)
    # median 37 -> 40; 3,000 windows // 50 = 60 -> 32; 94 steps -> 32 epochs
    assert sizes == {"max_len": 40, "batch_size": 32, "epochs": 32}
    assert sizing.sequence_sizes(lengths, max_len=7, batch_size=3, epochs=2) == {
        "max_len": 7,
        "batch_size": 3,
        "epochs": 2,
    }
    # the batch rule reads the windows of the given max_len: 3,000 x ceil(36 / 5) = 24,000 -> 480 -> 256
    assert sizing.sequence_sizes(lengths, max_len=5, batch_size="auto", epochs=1)["batch_size"] == 256


@pytest.mark.parametrize(
    ("users", "folds", "repeats", "leaves"),
    [(10, 5, 3, 7), (1_999, 5, 3, 7), (2_000, 5, 2, 15), (10_000, 5, 1, 15), (19_999, 5, 1, 15), (20_000, 3, 1, 31)],
)
def test_rerank_folds_repeats_and_leaves(users, folds, repeats, leaves):
    assert sizing.rerank_folds("auto", users) == folds
    assert sizing.rerank_repeats("auto", users) == repeats
    assert sizing.rerank_leaves("auto", users) == leaves
    assert sizing.rerank_folds(4, users) == 4 and sizing.rerank_repeats(2, users) == 2
    assert sizing.rerank_leaves(63, users) == 63


def test_make_reranker_resolves_auto_from_positive_users(monkeypatch):
    # catches auto passed through to the plugin (a string fold count) or resolved without the statistic
    captured = {}
    monkeypatch.setattr(rerank.registry.rerankers, "create", lambda name, **options: captured.update(options))
    params = load_params(None, ["rerank.folds=auto", "rerank.repeats=auto", "rerank.num_leaves=auto"])
    rerank.make_reranker(params, positive_users=610)
    assert captured["folds"] == 5 and captured["repeats"] == 3 and captured["num_leaves"] == 7
    with pytest.raises(ValueError, match="auto"):
        rerank.make_reranker(params)
    with pytest.raises(ValueError, match="auto"):  # num_leaves alone is auto
        rerank.make_reranker(load_params(None, ["rerank.num_leaves=auto"]))
    assert rerank.positive_users(np.array([0, 1, 0, 0, 0, 1.0]), np.array([3, 2, 1])) == 2


def test_sequential_auto_sizes_are_resolved_saved_and_passed_to_the_refit(tmp_path):
    # catches "auto" reaching the network (a crash), sizes re-chosen on train+val (a refit with another
    # window), or the saved model not loading with the numbers it was trained with
    interactions, items = generate(SyntheticParams(num_users=120, num_items=60, num_interactions=2400, seed=1))
    maps = IdMaps.build(interactions, items)
    events = Interactions.from_frame(interactions, maps)
    context = FitContext(items=items, maps=maps, seed=0, device="cpu")
    sizes = {**AUTO, "epochs": 3}
    model = Sequential(cell="gru", dim=8, threads=1, device="cpu", **sizes).fit(events, context=context)
    want = sizing.sequence_sizes([len(s) for s in events.sequences], **sizes)
    assert {k: model.config[k] for k in AUTO} == want and want["batch_size"] == 32
    assert model.refit_options() == {"max_len": want["max_len"], "batch_size": 32, "epochs": 3}
    assert len(model.history) == 3  # no validation: exactly the epoch count
    model.save(tmp_path)
    loaded = Sequential.load(tmp_path, context=context)
    assert loaded.config["max_len"] == want["max_len"]
    users = np.arange(5)
    np.testing.assert_allclose(loaded.recommend(users, k=5)[1], model.recommend(users, k=5)[1], rtol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        Sequential(max_len="long")


def _ranking_table(users=60, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    n = users * per_user
    signal = rng.normal(size=n)
    labels = np.zeros(n)
    for u in range(users):
        block = slice(u * per_user, (u + 1) * per_user)
        labels[block][np.argmax(signal[block] + rng.normal(scale=0.5, size=per_user))] = 1
    frame = pd.DataFrame({"signal": signal, "noise": rng.normal(size=n)})
    return frame, labels, np.full(users, per_user)


def test_lambdarank_repeats_train_new_fold_splits_and_average_them():
    # catches every repeat drawing the same split (no variance removed), the out-of-fold scores taken
    # from one repeat only, and the saved ensemble losing the repeated models
    frame, labels, groups = _ranking_table()
    options = {"folds": 3, "num_boost_round": 20, "early_stopping_rounds": 5, "min_data_in_leaf": 2, "threads": 1}
    once = LambdaRankReranker(**options).fit(frame, labels, groups)
    twice = LambdaRankReranker(repeats=2, **options).fit(frame, labels, groups)
    second = LambdaRankReranker(seed=1, **options).fit(frame, labels, groups)  # repeat 1 = seed + 1
    assert len(twice.boosters) == 6
    np.testing.assert_allclose(twice.oof_scores, (once.oof_scores + second.oof_scores) / 2, rtol=1e-6)
    assert not np.allclose(once.oof_scores, second.oof_scores)
    np.testing.assert_allclose(twice.rerank(frame), (once.rerank(frame) + second.rerank(frame)) / 2, rtol=1e-6)


def test_compiled_trees_score_like_lightgbm(tmp_path):
    # catches compiled scoring that drifts from the saved model (another iteration count, fold files mixed up,
    # a missing 1/n), and a compile cache that is not keyed by the model's content
    pytest.importorskip("lleaves")
    frame, labels, groups = _ranking_table(users=40)
    options = {"folds": 2, "num_boost_round": 15, "early_stopping_rounds": 5, "min_data_in_leaf": 2, "threads": 1}
    model = LambdaRankReranker(repeats=2, **options).fit(frame, labels, groups)
    model.save(tmp_path / "model")
    loaded = LambdaRankReranker.load(tmp_path / "model")
    expected = loaded.rerank(frame)
    assert loaded.compile_for_serving(tmp_path / "model", tmp_path / "cache")
    assert len(loaded.compiled) == 4
    np.testing.assert_allclose(loaded.rerank(frame), expected, rtol=0, atol=1e-9)
    from recforge.artifacts import sha256_file

    objects = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert objects == sorted({f"{sha256_file(tmp_path / 'model' / f'fold_{i}.txt')}.o" for i in range(4)})


def test_sequential_seed_offset_follows_the_run_seed():
    # catches seed_offset ignored (two copies of a model identical) or replacing the run's seed
    interactions, items = generate(SyntheticParams(num_users=60, num_items=30, num_interactions=900, seed=1))
    maps = IdMaps.build(interactions, items)
    events = Interactions.from_frame(interactions, maps)
    options = {"cell": "gru", "dim": 8, "threads": 1, "device": "cpu", "epochs": 1, "max_len": 10}

    def fit(seed: int, **extra):
        context = FitContext(items=items, maps=maps, seed=seed, device="cpu")
        return Sequential(**options, **extra).fit(events, context=context).recommend(np.arange(5), k=5)[1]

    np.testing.assert_array_equal(fit(3, seed_offset=2), fit(5))
    assert not np.array_equal(fit(3, seed_offset=2), fit(3))
