"""Vector helpers shared by encoders, profiles and recommenders."""

from __future__ import annotations

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` scaled to unit length along the last axis, as float32 (computed in float64).

    All-zero vectors stay zero. The shape is kept: a 1-D vector stays 1-D, an
    [n, dim] array is normalised row by row.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)
