"""Drift statistics on hand-made spans: each one moves when its kind of drift is there, and only then."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.drift import Reference, psi, span_checks, statistics
from recforge.params import DriftParams


def frame(users, items, times, ratings=None) -> pd.DataFrame:
    data = {"user_id": users, "item_id": items, "timestamp": times}
    if ratings is not None:
        data["rating"] = ratings
    return pd.DataFrame(data)


REFERENCE = Reference.from_frame(
    frame([1, 1, 2, 2, 3, 3], [10, 11, 10, 12, 11, 12], [100, 110, 120, 130, 140, 150], [4.0, 5.0, 4.0, 3.0, 5.0, 4.0]),
    "reference",
)


def test_a_span_like_the_reference_has_no_drift() -> None:
    span = frame([1, 2, 3, 1], [10, 11, 12, 12], [200, 210, 220, 230], [4.0, 5.0, 4.0, 3.0])
    stats = statistics(span, REFERENCE)
    assert stats["unknown_users"] == stats["unknown_items"] == stats["predating"] == stats["duplicates"] == 0.0
    assert stats["rating_psi"] < 0.1
    assert stats["events_per_user"] == pytest.approx(2.0 / (4 / 3))  # 4 events / 3 users vs 6 / 3


def test_each_kind_of_drift_moves_its_statistic() -> None:
    span = frame([1, 9, 9, 2], [10, 10, 99, 12], [100, 300, 310, 130], [1.0, 1.0, 1.0, 3.0])
    stats = statistics(span, REFERENCE)
    assert stats["unknown_users"] == 0.5  # user 9: two of four events
    assert stats["unknown_items"] == 0.25  # item 99
    assert stats["predating"] == 0.5  # timestamps 100 and 130 are before 150
    assert stats["duplicates"] == 0.5  # (1, 10, 100) and (2, 12, 130) are reference events
    assert stats["rating_psi"] > 1.0  # ratings of 1.0, which the reference never had


def test_psi_is_zero_on_the_same_distribution_and_symmetric_bins() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000)
    assert psi(values, values) == pytest.approx(0.0, abs=1e-12)
    assert psi(values, values + 1.0) > 0.25  # a shift of one standard deviation
    # a repeated event within the span counts too
    span = frame([1, 1], [11, 11], [500, 500])
    assert statistics(span, REFERENCE)["duplicates"] == 0.5


def test_thresholds_make_warnings_and_failures() -> None:
    drift = DriftParams(unknown_users={"warn": 0.3, "fail": 0.6})
    span = frame([9, 9, 1, 2], [10, 11, 12, 10], [300, 310, 320, 330])
    checks = {c.expectation: c for c in span_checks("s1", span, REFERENCE, drift)}
    assert checks["drift.unknown_users"].success and checks["drift.unknown_users"].warning
    assert "drift.rating_psi" not in checks  # no ratings in the span: not applicable
    only_new = frame([8, 9], [10, 11], [300, 310])
    checks = {c.expectation: c for c in span_checks("s2", only_new, REFERENCE, drift)}
    assert not checks["drift.unknown_users"].success
    assert checks["drift.unknown_users"].kwargs == {"value": 1.0, "warn": 0.3, "fail": 0.6}
