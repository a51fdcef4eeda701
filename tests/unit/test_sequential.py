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
    assert fitted._val_ndcg(*fitted._stopping_targets(val)) == pytest.approx(best, abs=1e-9)
    assert fitted.refit_options() == {"epochs": fitted.best_epoch}
    assert best > 0.05, "the model should learn something on topical data"


def _with_a_final_item(events: Interactions) -> Interactions:
    """Every user's history with one more event at its end, on a new item that occurs nowhere else."""
    order = np.lexsort((events.timestamps, events.user_ids))
    users, items, times = events.user_ids[order], events.item_ids[order], events.timestamps[order]
    ends = np.r_[np.nonzero(np.diff(users))[0], len(users) - 1]
    final = events.n_items
    users = np.insert(users, ends + 1, users[ends])
    items = np.insert(items, ends + 1, final)
    times = np.insert(times, ends + 1, times[ends] + 1)
    return Interactions(users, items, times, None, events.n_users, events.n_items + 1)


def test_inner_early_stopping_holds_out_each_users_last_training_event(topical) -> None:
    """Catches training on the events the epoch is chosen on, reading the validation events in ``inner`` mode,
    and recommending from the shortened histories afterwards."""
    from dataclasses import replace

    events, context, _ = topical
    train = _with_a_final_item(events)  # the new item is every user's last training event, and nothing else
    final = events.n_items
    options = {"cell": "gru", "epochs": 6, "min_epochs": 6, "patience": 1, **SMALL}
    validation = Interactions(
        np.arange(train.n_users), np.zeros(train.n_users, dtype=np.int64), None, None, train.n_users, train.n_items
    )
    scrambled = Interactions(
        np.arange(train.n_users), np.full(train.n_users, 7, dtype=np.int64), None, None, train.n_users, train.n_items
    )
    inner = Sequential(early_stopping="inner", **options).fit(train, context=replace(context, validation=validation))
    # held out of training, the new item is a target the model never learned: it ranks nowhere near the top
    assert max(record["val_ndcg@10"] for record in inner.history) < 0.02
    # trained on (early_stopping: validation reads whole histories), it is every user's next item
    whole = Sequential(**options).fit(train, context=replace(context, validation=validation))
    top, _ = whole.recommend(np.arange(train.n_users), k=10, exclude_seen=False)
    assert (top == final).any(axis=1).mean() > 0.9
    # the validation events are not read at all in inner mode: other ones give the same fit
    again = Sequential(early_stopping="inner", **options).fit(train, context=replace(context, validation=scrambled))
    assert [r["val_ndcg@10"] for r in again.history] == [r["val_ndcg@10"] for r in inner.history]
    # the fitted model recommends from the whole training history, held-out event included
    assert all(np.array_equal(a, b) for a, b in zip(inner.sequences, train.sequences, strict=True))
    assert (inner.seen != train.csr).nnz == 0


def test_inner_early_stopping_targets_and_seen_set() -> None:
    """The stopping targets: each user with 3+ events gives their last one, read after the rest, and it is
    unseen there unless the user met the item before; shorter users are not asked."""
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 6])  # user 2 meets item 6 again at the end
    events = Interactions(users, items, np.arange(9), None, 3, 9)
    model = Sequential(early_stopping="inner", **SMALL)
    model.sequences = [np.asarray(s, dtype=np.int32) for s in events.sequences]
    model.seen = events.csr
    asked, targets, seen, shortened = model._stopping_targets(events)
    assert asked.tolist() == [0, 2] and targets.tolist() == [3, 6]
    assert [list(s) for s in shortened] == [[1, 2], [4, 5], [6, 7, 8]]
    assert seen[0, 3] == 0 and seen[0, 2] == 1  # the held-out item is unseen
    assert seen[2, 6] == 1  # met before the held-out event
    assert seen.max() == 1


def test_unknown_early_stopping_is_rejected() -> None:
    with pytest.raises(ValueError, match="early_stopping"):
        Sequential(early_stopping="test")


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
