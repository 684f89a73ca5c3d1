from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmine.topk import csr_row_topk, pair_dots, unique_ids


@pytest.mark.parametrize("shape", [(1, 1), (7, 30), (64, 200)])
def test_unique_ids_equals_numpy_unique(shape):
    rng = np.random.default_rng(shape[1])
    ids = rng.integers(0, 500, size=shape)
    unique, inverse = unique_ids(ids, 500)
    want_unique, want_inverse = np.unique(ids, return_inverse=True)
    assert np.array_equal(unique, want_unique)
    assert np.array_equal(inverse, want_inverse.reshape(shape))
    assert np.array_equal(unique[inverse], ids)


def test_pair_dots_equal_the_plain_gather_and_padding_scores_zero():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(9, 16)).astype(np.float32)
    ids = rng.integers(-1, 300, size=(9, 40))
    plain = np.where(ids >= 0, np.einsum("nd,ncd->nc", queries, table[np.maximum(ids, 0)]), 0)
    assert np.allclose(pair_dots(queries, table, ids), plain, atol=1e-5)
    assert (pair_dots(queries, table, ids)[ids < 0] == 0).all()


def _plain_csr_row_topk(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Reference: each row's entries sorted by (-score, id) in Python, the first k with a finite score kept (when
    no row is longer than k, the matrix is returned as it is)."""
    if np.diff(matrix.indptr).max() <= k:
        return matrix
    rows, cols, vals = [], [], []
    for r in range(matrix.shape[0]):
        start, stop = matrix.indptr[r], matrix.indptr[r + 1]
        entries = sorted(zip(-matrix.data[start:stop].astype(np.float64), matrix.indices[start:stop], strict=True),
                         key=lambda entry: (np.isnan(entry[0]), entry))  # NaN scores last
        entries = [(-v, c) for v, c in entries[:k] if np.isfinite(v)]
        for v, c in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
    return sp.csr_matrix((np.array(vals, dtype=np.float32), (rows, cols)), shape=matrix.shape)


@pytest.mark.parametrize("k", [1, 3, 10, 30])
def test_csr_row_topk_equals_the_plain_sort_with_ties_and_padding(k):
    rng = np.random.default_rng(k)
    dense = rng.integers(0, 4, size=(40, 30)).astype(np.float32)  # many ties
    dense[rng.random(dense.shape) < 0.3] = 0
    dense[5] = 0  # an empty row
    matrix = sp.csr_matrix(dense)
    matrix.data[::7] = -np.inf  # padding-like entries are never kept among a row's top k
    matrix.data[matrix.indptr[8]:matrix.indptr[9]:2] = np.nan  # a row of NaN scores keeps its other entries
    got = csr_row_topk(matrix, k)
    want = _plain_csr_row_topk(matrix, k)
    assert got.has_sorted_indices
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data, equal_nan=True)
