"""recforge.ranking helpers outside top_k."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.ranking import RRF_OFFSET, reciprocal_rank_fusion


def test_rrf_sums_over_the_models_that_listed_the_item():
    ranks = np.array([[1.0, 3.0], [np.nan, 2.0], [np.nan, np.nan]])
    fused = reciprocal_rank_fusion(ranks)
    assert fused[0] == pytest.approx(1 / (RRF_OFFSET + 1) + 1 / (RRF_OFFSET + 3))
    assert fused[1] == pytest.approx(1 / (RRF_OFFSET + 2))
    assert fused[2] == 0.0
