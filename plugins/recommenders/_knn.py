"""Shared pieces of the neighbourhood recommenders: row weighting (BM25 /
TF-IDF), cosine similarity with shrinkage and top-neighbour pruning, all on
scipy sparse matrices."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recforge.ranking import history_row, top_k

WEIGHTINGS = ("none", "tfidf", "bm25")


def knn_config(neighbors: int | None, shrink: float, weighting: str, k1: float, b: float) -> dict:
    """The options item- and user-based kNN share, as saved in their meta."""
    return {"neighbors": neighbors, "shrink": float(shrink), "weighting": weighting, "k1": float(k1), "b": float(b)}


def weight_rows(matrix: sp.csr_matrix, weighting: str = "none", *, k1: float = 1.2, b: float = 0.75) -> sp.csr_matrix:
    """Reweight a ``docs x terms`` matrix (binary, or with event weights as values).

    ``tfidf`` multiplies each entry by its column's IDF; ``bm25`` also damps
    long rows (Okapi BM25 with saturation ``k1`` and length normalisation ``b``,
    as in implicit's ``bm25_weight``).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if weighting == "none" or matrix.nnz == 0:
        return matrix
    n_rows = matrix.shape[0]
    df = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
    idf = np.log(n_rows / (1.0 + df)) + 1.0
    coo = matrix.tocoo()
    if weighting == "tfidf":
        coo.data = coo.data * idf[coo.col]
    else:
        lengths = np.diff(matrix.indptr).astype(np.float64)
        norm = (1.0 - b) + b * lengths / max(lengths.mean(), 1e-12)
        coo.data = coo.data * (k1 + 1.0) / (k1 * norm[coo.row] + coo.data) * idf[coo.col]
    return coo.tocsr().astype(np.float32)


def cosine(matrix: sp.csr_matrix, *, shrink: float = 0.0) -> sp.csr_matrix:
    """Row-by-row cosine similarity ``A A^T / (|a_i||a_j| + shrink)``, diagonal zeroed."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    sims = (matrix @ matrix.T).tocoo()
    sims.data = sims.data / (norms[sims.row] * norms[sims.col] + shrink + 1e-12)
    sims.data[sims.row == sims.col] = 0.0
    sims = sims.tocsr()
    sims.eliminate_zeros()
    return sims.astype(np.float32)


def prune_rows(matrix: sp.csr_matrix, k: int | None, block_rows: int = 256) -> sp.csr_matrix:
    """Keep the ``k`` largest (non-zero) entries of each row, ``block_rows`` dense rows at a time."""
    matrix = matrix.tocsr()
    if not k or matrix.nnz == 0 or np.diff(matrix.indptr).max() <= k:
        return matrix
    n_rows, n_cols = matrix.shape
    if k >= n_cols:
        return matrix
    rows, cols, values = [], [], []
    for start in range(0, n_rows, block_rows):
        block = matrix[start : start + block_rows].toarray()
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(block, top, axis=1)
        keep = top_values != 0
        rows.append((np.arange(len(block))[:, None] + start).repeat(k, axis=1)[keep])
        cols.append(top[keep])
        values.append(top_values[keep])
    return sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=matrix.shape, dtype=matrix.dtype
    )


def similar_from_rows(similarity: sp.csr_matrix, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """SimilarItems from an item x item similarity: row ``item_id``'s top ``k``, the item itself excluded;
    items without any similarity rank last (score 0) but are still valid neighbours."""
    scores = np.asarray(similarity[int(item_id)].todense(), dtype=np.float32)
    items, scores = top_k(scores, k, seen=history_row([item_id], similarity.shape[0]))
    return items[0], scores[0]
