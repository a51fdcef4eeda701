"""recforge.vectors: the one L2 normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.vectors import l2_normalize


def test_rows_get_unit_length_as_float32():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 2.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)


def test_zero_vector_stays_zero_without_nan():
    out = l2_normalize(np.zeros((2, 3)))
    assert not np.isnan(out).any() and not out.any()
    assert not l2_normalize(np.zeros(4)).any()


def test_one_dimensional_input_keeps_its_shape():
    out = l2_normalize(np.array([1.0, 1.0, 1.0, 1.0]))
    assert out.shape == (4,)
    assert float(np.linalg.norm(out)) == pytest.approx(1.0)
