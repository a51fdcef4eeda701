"""recforge.interactions: per-event training weights (``with_weights``, ``concat`` of weighted and unweighted
event sets) on tiny hand-made event sets (fast; each test names the wrong behaviour it catches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.interactions import IdMaps, Interactions

MAPS = IdMaps(user_ids=pd.Index([10, 20]), item_ids=pd.Index(["a", "b", "c"]))


def events(rows: list[tuple[int, str, int]]) -> Interactions:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return Interactions.from_frame(frame, MAPS)


# ---- with_weights ----------------------------------------------------------------------------------------


def test_with_weights_keeps_the_events_and_stores_float32_weights():
    # catches the weights dropped (replace without them, or with None), the events replaced, and weights kept
    # as float64 (with_weights promises float32: models read them into float32 matrices)
    h = events([(10, "a", 1), (20, "b", 2)])
    weighted = h.with_weights([0.5, 2.0])
    assert weighted.weights.tolist() == [0.5, 2.0] and weighted.weights.dtype == np.float32
    assert weighted.user_ids.tolist() == h.user_ids.tolist() and weighted.item_ids.tolist() == h.item_ids.tolist()
    assert (weighted.n_users, weighted.n_items) == (2, 3)
    assert h.weights is None  # the original is left as it was (frozen dataclass, a new object)


def test_with_weights_none_clears_them():
    # catches None weights refused or turned into an array (None means "unweighted": weighted_csr is csr)
    h = events([(10, "a", 1)]).with_weights([3.0]).with_weights(None)
    assert h.weights is None


def test_with_weights_refuses_a_wrong_count_with_its_message():
    # catches the shape check inverted (every aligned call refused) or its message lost: it tells the user
    # how many weights came for how many events
    h = events([(10, "a", 1), (20, "b", 2)])
    with pytest.raises(ValueError, match=r"^3 weights for 2 events$"):
        h.with_weights([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"^1 weights for 2 events$"):
        h.with_weights([1.0])


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_with_weights_refuses_weights_that_are_not_finite_and_positive(bad):
    # catches zero accepted (>= 0: a zero-weight event would vanish from the weighted matrix), an infinite or
    # NaN weight accepted (or instead of and), and the check inverted; the message names the rule
    h = events([(10, "a", 1), (20, "b", 2)])
    with pytest.raises(ValueError, match=r"^event weights must be finite and positive$"):
        h.with_weights([1.0, bad])


def test_with_weights_accepts_weights_below_one():
    # catches the positivity bound moved to 1 (sentiment weights below 1 down-weight negative reviews)
    h = events([(10, "a", 1), (20, "b", 2)]).with_weights([0.25, 1.0])
    assert h.weights.tolist() == [0.25, 1.0]


# ---- concat with weights ---------------------------------------------------------------------------------


def test_concat_of_unweighted_sets_stays_unweighted():
    # catches weights invented when neither side has any (weighted_csr would no longer be the binary csr)
    both = events([(10, "a", 1)]).concat(events([(20, "b", 2)]))
    assert both.weights is None


def test_concat_moves_weights_with_their_events():
    # catches the concatenated weights dropped, or left in concatenation order while the events are re-sorted
    # by user, time and item (a weight would land on another event)
    first = events([(20, "c", 5), (10, "b", 3)]).with_weights([2.0, 4.0])  # aligned with (10,b,3), (20,c,5)
    second = events([(10, "a", 1), (20, "a", 9)]).with_weights([0.5, 8.0])
    both = first.concat(second)
    assert both.user_ids.tolist() == [0, 0, 1, 1] and both.timestamps.tolist() == [1, 3, 5, 9]
    assert both.weights.tolist() == [0.5, 2.0, 4.0, 8.0]
    assert both.weights.dtype == np.float32


@pytest.mark.parametrize("weighted_first", [True, False])
def test_concat_of_weighted_and_unweighted_gives_the_unweighted_side_weight_one(weighted_first):
    # catches weights kept only when both sides have them (and instead of or), either side's own weights
    # replaced by ones, and the ones made float64 (the whole weight array would silently become float64)
    weighted = events([(10, "b", 3), (20, "a", 4)]).with_weights([2.0, 3.0])
    plain = events([(10, "a", 1), (20, "c", 6)])
    both = weighted.concat(plain) if weighted_first else plain.concat(weighted)
    assert both.timestamps.tolist() == [1, 3, 4, 6]
    assert both.weights.tolist() == [1.0, 2.0, 3.0, 1.0]
    assert both.weights.dtype == np.float32
