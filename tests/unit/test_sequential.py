"""Behavioural tests of the sequential recommender on synthetic data whose
items carry a topic (``genres``) and whose users prefer a few topics: a user
whose history is one topic gets mostly that topic back."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.data.synthetic import generate
from recforge.interactions import IdMaps, Interactions
from recforge.params import SyntheticParams
from recforge.protocols import FitContext

from recforge_plugins.recommenders.sequential import Sequential

SMALL = {
    "dim": 32,
    "layers": 1,
    "heads": 1,
    "max_len": 20,
    "batch_size": 32,
    "dropout": 0.1,
    "lr": 1e-2,
    "threads": 1,
    "device": "cpu",
    "seed": 0,
}


@pytest.fixture(scope="module")
def topical():
    interactions, items = generate(
        SyntheticParams(num_users=300, num_items=120, num_interactions=9000, num_topics=4, seed=3)
    )
    maps = IdMaps.build(interactions, items)
    events = Interactions.from_frame(interactions, maps)
    topics = items["genres"].to_numpy()
    return events, FitContext(items=items, maps=maps, seed=0, device="cpu"), topics


@pytest.fixture(scope="module", params=["gru", "sasrec"])
def model(request, topical):
    events, context, _ = topical
    return Sequential(cell=request.param, epochs=12, **SMALL).fit(events, context=context)


def test_one_topic_history_gets_that_topic(model, topical) -> None:
    events, _, topics = topical
    counts = events.item_counts
    shares = {}
    for topic in np.unique(topics):
        own = np.nonzero(topics == topic)[0]
        history = own[np.argsort(-counts[own])][:8]  # the topic's most common items, in that order
        items, _ = model.recommend_history(history, k=10)
        shares[topic] = float((topics[items[0]] == topic).mean())
        assert not set(items[0]) & set(history)
    # mostly the history's topic (chance: 25%), and clearly above chance for every topic
    assert np.mean(list(shares.values())) >= 0.7, f"{model.config['cell']}: {shares}"
    assert min(shares.values()) >= 0.4, f"{model.config['cell']}: {shares}"


def test_training_users_dominated_by_one_topic(model, topical) -> None:
    events, _, topics = topical
    hits, total = 0, 0
    for user, sequence in enumerate(events.sequences):
        recent = sequence[-10:]
        values, counts = np.unique(topics[recent], return_counts=True)
        if len(recent) < 10 or counts.max() < 9:
            continue
        items, _ = model.recommend(np.array([user]), k=10)
        hits += int((topics[items[0]] == values[counts.argmax()]).sum())
        total += 10
    assert total >= 50, "the synthetic data should have single-topic users"
    assert hits / total >= 0.6, f"{model.config['cell']}: {hits / total:.0%} of the users' topic"


def test_early_stopping_and_refit_epochs(topical) -> None:
    events, context, _ = topical
    # hold out each user's last event as validation
    last = np.r_[np.nonzero(np.diff(events.user_ids))[0], len(events) - 1]
    keep = np.ones(len(events), dtype=bool)
    keep[last] = False
    pick = lambda mask: Interactions(  # noqa: E731
        events.user_ids[mask], events.item_ids[mask], events.timestamps[mask], None, events.n_users, events.n_items
    )
    train, val = pick(keep), pick(~keep)
    from dataclasses import replace

    fitted = Sequential(cell="gru", epochs=20, min_epochs=3, patience=2, **SMALL).fit(
        train, context=replace(context, validation=val)
    )
    assert all("val_ndcg@10" in record for record in fitted.history)
    best = max(record["val_ndcg@10"] for record in fitted.history)
    assert fitted.history[fitted.best_epoch - 1]["val_ndcg@10"] == best
    # it stopped early, exactly `patience` epochs after the best one (never before min_epochs)
    assert len(fitted.history) < 20, [round(r["val_ndcg@10"], 4) for r in fitted.history]
    assert len(fitted.history) == max(fitted.best_epoch + 2, 3)
    # and the best epoch's weights are the ones kept, not the last epoch's
    assert fitted._val_ndcg(val, np.unique(val.user_ids)) == pytest.approx(best, abs=1e-9)
    assert fitted.refit_options() == {"epochs": fitted.best_epoch}
    assert best > 0.05, "the model should learn something on topical data"


def test_unknown_cell_is_rejected() -> None:
    with pytest.raises(ValueError, match="cell"):
        Sequential(cell="transformer-xl")


def test_a_users_list_does_not_depend_on_the_batch(model, topical) -> None:
    """The train stage scores users in batches, serving one at a time: both must agree."""
    events, _, _ = topical
    lengths = np.array([len(s) for s in events.sequences])
    short = np.nonzero(lengths < SMALL["max_len"])[0][:5]
    long = np.nonzero(lengths >= SMALL["max_len"])[0][:5]
    assert len(short) and len(long), "the check needs users shorter and longer than max_len"
    users = np.concatenate([short, long])
    together, together_scores = model.recommend(users, k=10)
    for row, user in enumerate(users):
        alone, alone_scores = model.recommend(np.array([user]), k=10)
        assert np.array_equal(alone[0], together[row]), f"{model.config['cell']}: user {user}"
        np.testing.assert_allclose(alone_scores[0], together_scores[row], rtol=1e-4, atol=1e-5)
