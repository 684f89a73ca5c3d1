"""Conversions between (n, k) top-k arrays and the CSR score matrix every predictor returns."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def csr_from_topk(scores: np.ndarray, ids: np.ndarray, n_labels: int) -> sp.csr_matrix:
    """(n, k) scores and label ids (-1 = none) -> (n, n_labels) CSR, entries sorted by label id."""
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    valid = ids >= 0
    counts = valid.sum(axis=1)
    indptr = np.zeros(ids.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix((scores[valid], ids[valid], indptr), shape=(ids.shape[0], n_labels))
    out.sum_duplicates()  # also sorts indices
    return out


def csr_row_topk(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest stored entries of each row (ties: lower label id first)."""
    matrix = sp.csr_matrix(matrix)
    n = matrix.shape[0]
    lengths = np.diff(matrix.indptr)
    if lengths.size == 0 or lengths.max() <= k:
        return matrix
    width = int(lengths.max())
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)
    dense_scores = np.full((n, width), -np.inf, dtype=np.float64)
    dense_ids = np.full((n, width), -1, dtype=np.int64)
    dense_scores[rows, cols] = matrix.data
    dense_ids[rows, cols] = matrix.indices
    # sort by (-score, id): lexsort's last key is primary
    order = np.lexsort((dense_ids, -dense_scores), axis=1)[:, :k]
    top_scores = np.take_along_axis(dense_scores, order, axis=1)
    top_ids = np.take_along_axis(dense_ids, order, axis=1)
    top_ids[~np.isfinite(top_scores)] = -1
    return csr_from_topk(top_scores, top_ids, matrix.shape[1])


def dense_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a dense (n, L) block: (scores, ids) best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def stack_rows(blocks: list[sp.csr_matrix], n_labels: int) -> sp.csr_matrix:
    """Batches of predictions -> one CSR matrix (an empty input gives a 0-row matrix)."""
    if not blocks:
        return sp.csr_matrix((0, n_labels), dtype=np.float32)
    return sp.vstack(blocks).tocsr()


def unique_ids(ids: np.ndarray, n_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(ids, return_inverse=True)` for integer ids in [0, n_ids), by marking a table of n_ids flags
    instead of sorting: linear time, and the same answer (sorted unique ids; `inverse` of `ids`'s shape)."""
    ids = np.asarray(ids)
    seen = np.zeros(n_ids, dtype=bool)
    seen[ids] = True
    unique = np.flatnonzero(seen)
    position = np.cumsum(seen, dtype=np.int64) - 1  # position of each seen id among the unique ones
    return unique, position[ids]
