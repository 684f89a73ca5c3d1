"""Candidate shortlists: the labels a model scores exactly for a point, merged from several
sources (ANN over label embeddings, ANN over classifier vectors, labels of TF-IDF neighbours)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def is_in(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """`np.isin(values, pool)` for integer arrays, by sorting `pool` and a binary search per value: numpy's isin
    took seconds on the (row * n_labels + label) keys of a training shortlist, this a fraction of one."""
    values = np.asarray(values)
    pool = np.sort(np.asarray(pool).ravel())
    if not len(pool):
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(pool, values), len(pool) - 1)
    return pool[pos] == values


def union_candidates(*parts: np.ndarray) -> np.ndarray:
    """Row-wise union of (n, k_i) id arrays (-1 = none): (n, sum k_i), duplicates replaced by -1,
    valid ids first."""
    stacked = np.concatenate([p.astype(np.int64) for p in parts if p is not None and p.size], axis=1)
    ordered = np.sort(stacked, axis=1)
    dup = np.zeros_like(ordered, dtype=bool)
    dup[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    ordered[dup] = -1
    keep_first = np.argsort(ordered < 0, axis=1, kind="stable")
    out = np.take_along_axis(ordered, keep_first, axis=1)
    width = int((out >= 0).sum(1).max(initial=0))
    return out[:, :max(width, 1)]


def csr_rows_to_ids(matrix: sp.csr_matrix, width: int | None = None) -> np.ndarray:
    """Stored column ids of each row as an (n, width) array, -1 padded."""
    lengths = np.diff(matrix.indptr)
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((matrix.shape[0], max(width, 1)), -1, dtype=np.int64)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    cols = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)
    keep = cols < out.shape[1]
    out[rows[keep], cols[keep]] = matrix.indices[keep]
    return out


def recall_of_shortlist(candidates: np.ndarray, labels: sp.csr_matrix) -> float:
    """Share of true labels that appear in the shortlist, averaged over points with labels (%)."""
    n_labels = labels.shape[1]
    rows = np.repeat(np.arange(candidates.shape[0]), candidates.shape[1])
    keys = rows * n_labels + np.maximum(candidates.ravel(), 0)
    keys = keys[candidates.ravel() >= 0]
    true_rows = np.repeat(np.arange(labels.shape[0]), np.diff(labels.indptr))
    hit = is_in(true_rows * n_labels + labels.indices, keys)
    per_row = np.bincount(true_rows, weights=hit, minlength=labels.shape[0])
    counts = np.diff(labels.indptr)
    has = counts > 0
    return float(100 * np.mean(per_row[has] / counts[has])) if has.any() else 0.0
