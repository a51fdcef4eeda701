"""The sequential plugin at scale: sampled softmax, the warm refit, threads (plugins/recommenders/sequential.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recforge.interactions import Interactions
from recforge.threads import available_cores, resolve_threads
from tests.unit.test_sequential import SMALL, topical  # noqa: F401 - the module's fixture

from recforge_plugins.recommenders.sequential import FULL_SOFTMAX_FACTOR, Sequential, warm_refit_epochs


def _split_last(events: Interactions) -> tuple[Interactions, Interactions]:
    last = np.r_[np.nonzero(np.diff(events.user_ids))[0], len(events) - 1]
    keep = np.ones(len(events), dtype=bool)
    keep[last] = False

    def pick(mask):
        return Interactions(
            events.user_ids[mask], events.item_ids[mask], events.timestamps[mask], None, events.n_users, events.n_items
        )

    return pick(keep), pick(~keep)


def _topic_share(model, events, topics) -> float:
    """Share of the top 10 in the dominant topic of the last 10 events, over single-topic users."""
    hits, total = 0, 0
    for user, sequence in enumerate(events.sequences):
        values, counts = np.unique(topics[sequence[-10:]], return_counts=True)
        if len(sequence) < 10 or counts.max() < 9:
            continue
        items, _ = model.recommend(np.array([user]), k=10)
        hits += int((topics[items[0]] == values[counts.argmax()]).sum())
        total += 10
    return hits / max(total, 1)


@pytest.mark.parametrize("cell", ["gru", "sasrec"])
def test_sampled_softmax_learns_the_topics(topical, cell) -> None:  # noqa: F811
    """The sampled loss (64 negatives of 120 items) learns what the full one learns (catches a sign error in the
    logQ correction, the target masked as its own negative, or negatives that never reach the gradient)."""
    events, context, topics = topical
    options = {**SMALL, "epochs": 12}
    sampled = Sequential(cell=cell, loss="sampled", negatives=64, **options).fit(events, context=context)
    full = Sequential(cell=cell, loss="full", **options).fit(events, context=context)
    assert sampled.config["loss"] == "sampled"
    share_sampled, share_full = _topic_share(sampled, events, topics), _topic_share(full, events, topics)
    assert share_sampled >= 0.6, (share_sampled, share_full)  # chance: 0.25
    assert share_sampled >= share_full - 0.15, (share_sampled, share_full)


def test_auto_loss_follows_the_catalogue_size(topical) -> None:  # noqa: F811
    events, context, _ = topical
    small = Sequential(cell="gru", epochs=1, **SMALL).fit(events, context=context)
    assert small.config["loss"] == "full"
    # the bound follows the negatives: 120 items are full with 30 negatives (120 = 4 x 30), sampled with 29
    assert Sequential(cell="gru", epochs=1, negatives=30, **SMALL).fit(events, context=context).config["loss"] == "full"
    assert Sequential(cell="gru", epochs=1, negatives=29, **SMALL).fit(events, context=context).config["loss"] == (
        "sampled"
    )
    wide = replace(events, n_items=FULL_SOFTMAX_FACTOR * 1024 + 1)  # unseen items widen the catalogue
    big = Sequential(cell="gru", epochs=1, **SMALL).fit(wide, context=context)
    assert big.config["loss"] == "sampled"


def test_warm_refit_continues_the_validation_fit(topical) -> None:  # noqa: F811
    """The refit starts from the chosen epoch's weights (not from scratch), trains the rule's epoch count on
    train+val, and leaves the validation model untouched."""
    events, context, topics = topical
    train, val = _split_last(events)
    options = {**SMALL, "epochs": 8, "min_epochs": 2, "patience": 2, "refit": "warm"}
    fitted = Sequential(cell="gru", **options).fit(train, context=replace(context, validation=val))
    before = {k: v.clone() for k, v in fitted.net.state_dict().items()}
    train_val = train.concat(val)
    # zero epochs is not allowed, so check the start point through a refit whose learning rate is 0
    frozen = Sequential(cell="gru", **{**options, "lr": 0.0})
    frozen.fit(train, context=replace(context, validation=val))
    same = frozen.warm_refit(train_val, context=context)
    for name, value in frozen.net.state_dict().items():
        assert np.allclose(same.net.state_dict()[name].numpy(), value.numpy()), name
    full = fitted.warm_refit(train_val, context=context)
    want = warm_refit_epochs(fitted.best_epoch, len(train), len(val))
    assert want == 1  # one event per user added: a few per cent of the events
    assert len(full.history) == fitted.best_epoch + want
    assert full.sequences[0][-1] == train_val.sequences[0][-1]  # it recommends from train+val histories
    for name, value in fitted.net.state_dict().items():
        assert np.array_equal(value.numpy(), before[name].numpy()), f"the validation fit changed: {name}"
    assert _topic_share(full, train_val, topics) >= 0.6
    assert Sequential(cell="gru", **{**options, "refit": "scratch"}).warm_refit(train_val, context=context) is None


def test_warm_refit_epochs_rule() -> None:
    assert warm_refit_epochs(10, 1000, 10) == 1
    assert warm_refit_epochs(10, 1000, 150) == 2  # ceil(1.5)
    assert warm_refit_epochs(7, 1000, 1000) == 7  # as many new events as old: a whole second fit
    assert warm_refit_epochs(7, 0, 5) == 7


def test_same_seed_and_thread_count_give_identical_weights(topical) -> None:  # noqa: F811
    """threads: 2 (the machine's cores here) is reproducible: two fits are bit-identical."""
    events, context, _ = topical
    options = {**SMALL, "threads": 2, "epochs": 2}
    first = Sequential(cell="sasrec", **options).fit(events, context=context)
    second = Sequential(cell="sasrec", **options).fit(events, context=context)
    for name, value in first.net.state_dict().items():
        assert np.array_equal(value.numpy(), second.net.state_dict()[name].numpy()), name


def test_two_fits_in_one_process_at_once_are_the_fits_alone(topical) -> None:  # noqa: F811
    """The flow's local runner trains GRU and SASRec in two threads of one process. Catches their dropout and
    initial weights drawn from torch's one generator in the threads' order (each run's weights differed)."""
    import threading

    events, context, _ = topical
    options = {**SMALL, "epochs": 3, "dropout": 0.3}
    alone = {cell: Sequential(cell=cell, **options).fit(events, context=context) for cell in ("gru", "sasrec")}
    together: dict = {}
    start = threading.Barrier(2)

    def fit(cell: str) -> None:
        start.wait()
        together[cell] = Sequential(cell=cell, **options).fit(events, context=context)

    threads = [threading.Thread(target=fit, args=(cell,)) for cell in ("gru", "sasrec")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cell, model in alone.items():
        for name, value in model.net.state_dict().items():
            assert np.array_equal(value.numpy(), together[cell].net.state_dict()[name].numpy()), (cell, name)


def test_threads_option() -> None:
    assert resolve_threads("auto") == available_cores() == resolve_threads(None)
    assert resolve_threads(3) == 3
    for bad in (0, -1, "many", True, 1.5, 10_000):
        with pytest.raises(ValueError, match="threads must be"):
            resolve_threads(bad)
    with pytest.raises(ValueError, match="threads must be"):
        Sequential(threads="many")
    with pytest.raises(ValueError, match="loss must be"):
        Sequential(loss="softmax")
    with pytest.raises(ValueError, match="negatives must be"):
        Sequential(negatives=1)
    with pytest.raises(ValueError, match="refit must be"):
        Sequential(refit="hot")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_session_starts_from_the_state_after_its_pads(topical, cell) -> None:  # noqa: F811
    """recommend_history of a recurrent cell skips the pads' steps (the cached state after them): its scores equal
    the full padded pass for histories shorter than, as long as and longer than the window. Catches the state of
    the wrong pad count, a cache kept across a refit, and a window cut on the wrong side."""
    events, context, _ = topical
    model = Sequential(cell=cell, epochs=2, **{**SMALL, "layers": 2}).fit(events, context=context)
    width = model.config["max_len"]
    rng = np.random.default_rng(4)
    for length in (1, 3, width - 1, width, width + 5):
        history = rng.integers(0, model.n_items, length)
        np.testing.assert_allclose(model._history_scores(history), model._scores([history]), rtol=1e-5, atol=1e-6)
    cached = model._pads
    assert cached is not None and len(cached) == width + 1
    model.fit(events, context=context)  # new weights: the states after the pads are computed again
    assert model._pads is None
    history = rng.integers(0, model.n_items, 3)
    np.testing.assert_allclose(model._history_scores(history), model._scores([history]), rtol=1e-5, atol=1e-6)
