from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from xmine.shortlist import recall_of_shortlist
from xmine.topk import (
    PARALLEL_ROWS,
    candidate_keys,
    csr_entry_keys,
    csr_from_topk,
    csr_product_dense,
    csr_row_topk,
    csr_rows_to_ids,
    dense_topk,
    lookup_csr,
    pair_dots,
    pair_keys,
    union_candidates,
    unique_ids,
    vote_topk,
)


@pytest.mark.parametrize("shape", [(1, 1), (7, 30), (64, 200)])
def test_unique_ids_equals_numpy_unique(shape):
    rng = np.random.default_rng(shape[1])
    ids = rng.integers(0, 500, size=shape)
    unique, inverse = unique_ids(ids, 500)
    want_unique, want_inverse = np.unique(ids, return_inverse=True)
    assert np.array_equal(unique, want_unique)
    assert np.array_equal(inverse, want_inverse.reshape(shape))
    assert np.array_equal(unique[inverse], ids)


@pytest.mark.parametrize("k", [1, 5, 40, 60])
def test_dense_topk_equals_a_full_sort_and_keeps_tied_scores(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(17, 50)).astype(np.float32)
    scores[3] = 0.0  # a row of ties: any k ids, all with score 0
    scores[5, :10] = 2.0
    top, ids = dense_topk(scores, k)
    kept = min(k, scores.shape[1])
    want = -np.sort(-scores, axis=1)[:, :kept]
    assert top.shape == ids.shape == (17, kept)
    assert np.array_equal(top, want)  # best first, the right values
    assert np.array_equal(np.take_along_axis(scores, ids, axis=1), top)  # each id carries its score
    assert all(len(set(row)) == kept for row in ids)  # no id twice
    untied = [i for i in range(17) if i not in (3, 5)]
    assert np.array_equal(ids[untied], np.argsort(-scores[untied], axis=1, kind="stable")[:, :kept])


@pytest.mark.parametrize("density", [0.02, 0.3])
def test_csr_product_dense_equals_the_sparse_product(density):
    rng = np.random.default_rng(int(density * 100))
    rows = sp.random(40, 60, density=density, format="csr", dtype=np.float32, random_state=rng)
    rows = sp.vstack([rows[:7], sp.csr_matrix((1, 60), dtype=np.float32), rows[8:]], format="csr")  # empty row
    table_t = sp.random(60, 90, density=density, format="csr", dtype=np.float32, random_state=rng)
    got = csr_product_dense(rows, table_t)
    assert got.dtype == np.float32 and got.shape == (40, 90)
    assert np.allclose(got, (rows @ table_t).toarray(), rtol=1e-6, atol=1e-7)
    assert (got[7] == 0).all()
    with pytest.raises(ValueError, match="do not multiply"):
        csr_product_dense(rows, table_t[:50])


def test_pair_dots_equal_the_plain_gather_and_padding_scores_zero():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(9, 16)).astype(np.float32)
    ids = rng.integers(-1, 300, size=(9, 40))
    plain = np.where(ids >= 0, np.einsum("nd,ncd->nc", queries, table[np.maximum(ids, 0)]), 0)
    assert np.allclose(pair_dots(queries, table, ids), plain, atol=1e-5)
    assert (pair_dots(queries, table, ids)[ids < 0] == 0).all()


def test_pair_dots_in_parallel_equal_the_serial_kernel_bit_for_bit():
    """From PARALLEL_ROWS queries on, the rows are shared among threads (classifier training uses this
    path); each pair must be the very sum the serial kernel makes, at any thread count."""
    rng = np.random.default_rng(1)
    table = rng.normal(size=(500, 48)).astype(np.float32)
    queries = rng.normal(size=(3 * PARALLEL_ROWS, 48)).astype(np.float32)
    ids = rng.integers(-1, 500, size=(len(queries), 70))
    serial = np.concatenate([pair_dots(queries[i:i + 1], table, ids[i:i + 1]) for i in range(len(queries))])
    previous = numba.get_num_threads()
    try:
        for threads in (1, previous):
            numba.set_num_threads(threads)
            assert np.array_equal(pair_dots(queries, table, ids), serial)
    finally:
        numba.set_num_threads(previous)
    assert (serial[ids < 0] == 0).all()


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


def _random_csr(rng: np.random.Generator, n: int = 40, n_cols: int = 70, density: float = 0.08) -> sp.csr_matrix:
    m = sp.random(n, n_cols, density=density, format="csr", random_state=np.random.RandomState(rng.integers(1 << 30)),
                  dtype=np.float32)
    m.data += 0.1  # no stored zeros
    keep = np.ones(n, dtype=np.float32)
    keep[3] = 0  # an empty row
    out = sp.diags(keep) @ m
    out.eliminate_zeros()
    return sp.csr_matrix(out)


def _candidates(rng: np.random.Generator, n: int = 40, n_cols: int = 70, width: int = 9) -> np.ndarray:
    cand = rng.integers(0, n_cols, size=(n, width))
    cand[rng.random(cand.shape) < 0.3] = -1
    return cand


def test_pair_keys_match_pairs_as_a_plain_set_does():
    rng = np.random.default_rng(1)
    m, cand = _random_csr(rng), _candidates(rng)
    entries = {(i, j) for i in range(m.shape[0]) for j in m[i].indices}
    slots = [(i, c) for i, row in enumerate(cand) for c in row]
    in_matrix = np.isin(candidate_keys(cand, m.shape[1]), csr_entry_keys(m))
    assert in_matrix.tolist() == [(i, max(c, 0)) in entries for i, c in slots]
    assert np.array_equal(csr_entry_keys(m), [i * m.shape[1] + j for i in range(m.shape[0]) for j in m[i].indices])
    big = pair_keys(np.array([3], dtype=np.int32), np.array([5], dtype=np.int32), 2**31)
    assert big.dtype == np.int64 and big[0] == 3 * 2**31 + 5  # no int32 overflow


def test_lookup_csr():
    m = sp.csr_matrix(np.array([[0, 2.0, 0], [1.0, 0, 3.0]]))
    cand = np.array([[1, 0, -1], [2, 0, 1]])
    assert np.array_equal(lookup_csr(m, cand), [[2, 0, 0], [3, 1, 0]])
    rng = np.random.default_rng(2)
    m, cand = _random_csr(rng), _candidates(rng)
    dense = m.toarray()
    plain = np.where(cand >= 0, dense[np.arange(m.shape[0])[:, None], np.maximum(cand, 0)], 0)
    assert np.array_equal(lookup_csr(m, cand), plain)


@pytest.mark.parametrize("width", [None, 0, 2, 5])
def test_csr_rows_to_ids_equal_a_row_loop(width):
    m = _random_csr(np.random.default_rng(3))
    ids = csr_rows_to_ids(m, width)
    w = max(int(np.diff(m.indptr).max()) if width is None else width, 1)  # at least one column
    assert ids.shape == (m.shape[0], w)
    for i in range(m.shape[0]):
        first = m[i].indices[:w]
        assert ids[i, :len(first)].tolist() == first.tolist() and (ids[i, len(first):] == -1).all()


def test_union_candidates_and_shortlist_recall_equal_plain_sets():
    rng = np.random.default_rng(5)
    a, b = _candidates(rng, width=6), _candidates(rng, width=4)
    union = union_candidates(a, b)
    for i in range(a.shape[0]):
        want = (set(a[i]) | set(b[i])) - {-1}
        got = union[i][union[i] >= 0]
        assert len(got) == len(want) and set(got) == want and (np.diff(np.flatnonzero(union[i] < 0)) >= 0).all()
        assert (union[i, :len(want)] >= 0).all()  # valid ids first
    labels = _random_csr(rng)
    per_point = [len(set(labels[i].indices) & set(union[i])) / labels[i].nnz for i in range(labels.shape[0])
                 if labels[i].nnz]
    assert recall_of_shortlist(union, labels) == pytest.approx(100 * np.mean(per_point))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("k", [1, 3, 10, 1000])
def test_vote_topk_equals_the_sparse_product_then_row_topk(k, tied):
    rng = np.random.default_rng(k + 10 * tied)
    table = sp.csr_matrix((rng.random((60, 50)) < 0.15).astype(np.float32))  # binary, like a label matrix
    ids = np.stack([rng.permutation(60)[:12] for _ in range(25)])  # distinct neighbours per row
    ids[3, 5:] = -1  # a short row
    ids[4] = -1  # no neighbours at all
    weights = (rng.integers(0, 3, ids.shape) / 2 if tied else rng.random(ids.shape) ** 2).astype(np.float32)
    weights[7] = 0  # a row whose neighbours all have zero weight
    plain = csr_from_topk(weights, ids, 60)
    plain.eliminate_zeros()
    want = _plain_csr_row_topk(plain @ table, k)
    want.sort_indices()
    got = vote_topk(weights, ids, table, k)
    assert got.has_sorted_indices
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data)  # bit for bit: the same float32 sums in the same order
    assert got.indptr[5] == got.indptr[4] and got.indptr[8] == got.indptr[7]  # rows 4 and 7 have no votes
