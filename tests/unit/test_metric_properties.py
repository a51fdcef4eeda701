"""Property tests: every metric of recforge.metrics against a brute-force reference written here (issue 24).

recforge.metrics offers NDCG, Recall, MRR, MAP and Precision at k (``ranking_metrics`` over index arrays,
``evaluate`` over tables) and catalogue coverage at k (``coverage_at_k``, in ``evaluate``). The reference
below scores one ranked list at a time with Python loops and sets, from the definitions in the module's
docstrings: binary gains; a list shorter than k (or a -1 entry) is a miss at that position; duplicate
held-out items count once; Recall divides by the number of held-out items, Precision by k; the NDCG and
MAP ideals count at most k held-out items; ``evaluate`` ranks by score (descending, ties by item id) when
``rank`` is absent, scores every ``truth`` user (no list: 0) and no other, and coverage counts the items in
anyone's top k. Generated cases: several held-out items per user, k below and above their number, lists
shorter and longer than k with -1 padding, and many equal scores. Each property runs a bounded number of
examples (``RECFORGE_PROPERTY_EXAMPLES``, default 150) with a fixed seed.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from recforge import metrics

EXAMPLES = int(os.environ.get("RECFORGE_PROPERTY_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written under the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEED = int(os.environ.get("RECFORGE_PROPERTY_SEED", "20261207"))
NAMES = ("ndcg", "recall", "mrr", "map", "precision")
N_ITEMS = 12


def reference(ranked: list, held_out: list, k: int) -> dict[str, float]:
    """Every ranking metric of one list at ``k``, by the definitions (``ranked``: ids, -1 for no item)."""
    relevant = {item for item in held_out if item != -1}
    listed = (list(ranked[:k]) + [-1] * k)[:k]
    gains = [int(item != -1 and item in relevant) for item in listed]
    ideal = sum(1 / math.log2(position + 2) for position in range(min(len(relevant), k)))
    first = next((position + 1 for position, gain in enumerate(gains) if gain), None)
    precisions = [sum(gains[: position + 1]) / (position + 1) for position, gain in enumerate(gains) if gain]
    return {
        "ndcg": sum(gain / math.log2(position + 2) for position, gain in enumerate(gains)) / ideal,
        "recall": sum(gains) / len(relevant),
        "mrr": 1 / first if first else 0.0,
        "map": sum(precisions) / min(len(relevant), k),
        "precision": sum(gains) / k,
    }


@st.composite
def rows(draw):
    """Ranked lists (distinct items, -1 padding anywhere, shorter or longer than k) and held-out items."""
    n = draw(st.integers(1, 6))
    width = draw(st.integers(0, 10))
    top = np.full((n, width), -1, dtype=np.int64)
    truth_rows = []
    for row in range(n):
        length = draw(st.integers(0, width))
        items = draw(st.permutations(range(N_ITEMS)))[:length]
        slots = sorted(draw(st.permutations(range(width)))[:length]) if draw(st.booleans()) else range(length)
        for slot, item in zip(slots, items):
            top[row, slot] = item
        held_out = draw(st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=6))  # repeats allowed
        truth_rows.append(held_out)
    t = max(len(r) for r in truth_rows) + draw(st.integers(0, 2))
    truth = np.array([r + [-1] * (t - len(r)) for r in truth_rows], dtype=np.int64)
    k = draw(st.integers(1, 12))
    return top, truth, k


@seed(SEED)
@SETTINGS
@given(case=rows())
def test_array_core_equals_the_reference_for_every_metric(case):
    # catches: a metric right only for one target per row (ideal or MAP denominator not capped at k, recall over
    # k), duplicate targets counted twice, padding matched as an item, a short list not counted as misses,
    # hits after k counted, MRR from the last hit, MAP averaged over hits instead of min(targets, k)
    top, truth, k = case
    per_row = metrics.ranking_metrics_per_row(top, truth, k)
    expected = [reference(list(top[i]), list(truth[i]), k) for i in range(len(top))]
    for name in NAMES:
        assert per_row[name] == pytest.approx([e[name] for e in expected], abs=1e-12), name
    means = metrics.ranking_metrics(top, truth, k)
    assert set(means) == {f"{name}@{k}" for name in NAMES}
    for name in NAMES:
        assert means[f"{name}@{k}"] == pytest.approx(np.mean([e[name] for e in expected]), abs=1e-12), name


@seed(SEED)
@SETTINGS
@given(case=rows())
def test_metric_bounds_and_one_target_rows_agree(case):
    # catches a metric outside [0, 1], recall not monotone in k, and (one target per row) the 1-D truth form
    # or NDCG/MAP/MRR/recall disagreeing where they must coincide
    top, truth, k = case
    per_row = metrics.ranking_metrics_per_row(top, truth, k)
    for name in NAMES:
        assert ((per_row[name] >= 0) & (per_row[name] <= 1 + 1e-12)).all(), name
    wider = metrics.ranking_metrics_per_row(top, truth, k + 1)
    assert (wider["recall"] >= per_row["recall"] - 1e-12).all()
    single = truth[:, 0]
    one = metrics.ranking_metrics_per_row(top, single, k)
    same = metrics.ranking_metrics_per_row(top, single[:, None], k)
    for name in NAMES:
        assert one[name] == pytest.approx(same[name]), name
    assert one["map"] == pytest.approx(one["mrr"])  # one target: precision at the hit = 1 / its rank
    assert one["precision"] == pytest.approx(one["recall"] / k)


@st.composite
def tables(draw):
    """recs (user_id, item_id, score: many ties; or with rank) and truth, users on either side only."""
    users = draw(st.lists(st.integers(0, 6), min_size=1, max_size=5, unique=True))
    spell = draw(st.sampled_from([lambda i: i, lambda i: f"i{i}"]))  # string ids sort as strings
    rec_rows = []
    for user in users:
        if draw(st.booleans()) and len(users) > 1 and user == users[-1]:
            continue  # a truth user without any recommendation
        items = draw(st.lists(st.integers(0, N_ITEMS - 1), max_size=8, unique=True))
        scores = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=len(items), max_size=len(items)))
        rec_rows += [(user, spell(item), score) for item, score in zip(items, scores)]
    extra = draw(st.lists(st.integers(0, N_ITEMS - 1), max_size=3, unique=True))  # a user absent from truth
    rec_rows += [(99, spell(item), 1.0) for item in extra]
    truth_rows = [
        (user, spell(item))
        for user in users
        for item in draw(st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=5))  # repeats allowed
    ]
    recs = pd.DataFrame(rec_rows, columns=["user_id", "item_id", "score"]).astype({"user_id": np.int64})
    recs = recs.sample(frac=1.0, random_state=draw(st.integers(0, 1000)))  # no order to rely on
    truth = pd.DataFrame(truth_rows, columns=["user_id", "item_id"]).astype({"user_id": np.int64})
    ks = sorted(draw(st.sets(st.integers(1, 10), min_size=1, max_size=3)))
    return recs, truth, ks


def reference_ranked(recs: pd.DataFrame) -> dict[object, list]:
    """Each user's items by score, highest first, equal scores by item id."""
    ranked: dict[object, list] = {}
    for user, item, _score in sorted(zip(recs["user_id"], recs["item_id"], recs["score"]), key=lambda r: (-r[2], r[1])):
        ranked.setdefault(user, []).append(item)
    return ranked


@seed(SEED)
@SETTINGS
@given(case=tables())
def test_evaluate_equals_the_reference_with_ties_and_coverage(case):
    # catches: score ties broken by input order or by item id descending, a user absent from truth scored, a
    # truth user without recommendations dropped instead of scored 0, duplicate truth rows counted twice,
    # coverage counted per user or only over truth users' lists, the rank derived per table instead of per user
    recs, truth, ks = case
    ranked = reference_ranked(recs)
    held_out = truth.groupby("user_id")["item_id"].apply(list).to_dict()
    result = metrics.evaluate(recs, truth, ks, n_items=N_ITEMS)
    assert result["users"] == len(held_out)
    for k in ks:
        expected = [reference(ranked.get(user, []), items, k) for user, items in held_out.items()]
        for name in NAMES:
            assert result[f"{name}@{k}"] == pytest.approx(np.mean([e[name] for e in expected]), abs=1e-12), (name, k)
        covered = {item for items in ranked.values() for item in items[:k]}
        assert result[f"coverage@{k}"] == pytest.approx(len(covered) / N_ITEMS), k
    # with ranks given, they are used as they are: the same lists spelled as ranks give the same figures
    with_rank = pd.DataFrame(
        [(user, item, rank) for user, items in ranked.items() for rank, item in enumerate(items, start=1)],
        columns=["user_id", "item_id", "rank"],
    )
    assert metrics.evaluate(with_rank, truth, ks, n_items=N_ITEMS) == pytest.approx(result)
