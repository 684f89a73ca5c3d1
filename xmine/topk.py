"""Small sparse and candidate helpers, in one place: conversions between (n, k) top-k arrays and the CSR score
matrix every predictor returns, -1-padded (n, C) candidate arrays (from CSR rows, merged, looked up in a CSR
matrix), and the int64 key `row * n_cols + col` that matches (row, column) pairs with one vectorised
membership test or search."""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from xmine.sorting import kth_smallest, sorted_copy, stable_argsort


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


def pair_keys(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """One int64 key per (row, column) pair, `row * n_cols + col`: pairs compare as plain integers."""
    return np.asarray(rows).astype(np.int64, copy=False) * n_cols + np.asarray(cols).astype(np.int64, copy=False)


def csr_row_ids(matrix: sp.csr_matrix) -> np.ndarray:
    """The row of each stored entry of a CSR matrix (int64, in storage order)."""
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))


def csr_entry_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """`pair_keys` of every stored entry of a CSR matrix, in storage order."""
    return pair_keys(csr_row_ids(matrix), matrix.indices, matrix.shape[1])


def is_in(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """`np.isin(values, pool)` for integer arrays, by sorting `pool` and a binary search per value: numpy's isin
    took seconds on the (row * n_labels + label) keys of a training shortlist, this a fraction of one."""
    values = np.asarray(values)
    pool = np.sort(np.asarray(pool).ravel())
    if not len(pool):
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(pool, values), len(pool) - 1)
    return pool[pos] == values


def candidate_keys(candidates: np.ndarray, n_cols: int) -> np.ndarray:
    """`pair_keys` of every slot of an (n, C) candidate array, row-major; a -1 slot gets its row's column-0 key
    (callers mask those slots with `candidates.ravel() >= 0`)."""
    n, c = candidates.shape
    return pair_keys(np.repeat(np.arange(n), c), np.maximum(candidates.ravel(), 0), n_cols)


def csr_rows_to_ids(matrix: sp.csr_matrix, width: int | None = None) -> np.ndarray:
    """Stored column ids of each row as an (n, width) array, -1 padded (at least one column)."""
    width = int(np.diff(matrix.indptr).max(initial=0)) if width is None else width
    out = np.full((matrix.shape[0], max(width, 1)), -1, dtype=np.int64)
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    cols = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)  # each entry's place in its row
    fits = cols < out.shape[1]
    out[rows[fits], cols[fits]] = matrix.indices[fits]
    return out


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


def lookup_csr(matrix: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
    """Values of `matrix[i, candidates[i, j]]` (0 where absent or candidate < 0), vectorised."""
    n, c = candidates.shape
    keys = csr_entry_keys(matrix)
    order = np.argsort(keys)
    keys, values = keys[order], matrix.data[order]
    query = candidate_keys(candidates, matrix.shape[1])
    pos = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
    found = (keys[pos] == query) & (candidates.ravel() >= 0) if len(keys) else np.zeros(query.shape, bool)
    out = np.where(found, values[pos] if len(keys) else 0.0, 0.0)
    return out.reshape(n, c).astype(np.float32)


def csr_row_topk(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest stored entries of each row (ties: lower label id first); among the kept, entries with a
    non-finite score are dropped. Rows no longer than k are kept as they are."""
    matrix = sp.csr_matrix(matrix)
    lengths = np.diff(matrix.indptr)
    if lengths.size == 0 or lengths.max() <= k:
        return matrix
    if not matrix.has_canonical_format:  # the kernel needs each row's ids sorted and distinct
        matrix = matrix.copy()
        matrix.sum_duplicates()
    indptr, indices, data = _row_topk_kernel(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64),
                                             matrix.data.astype(np.float64), int(k))
    return sp.csr_matrix((data, indices, indptr), shape=matrix.shape)


@numba.njit(cache=True, nogil=True)
def _keep_row_topk(ids: np.ndarray, values: np.ndarray, k: int, out_indices: np.ndarray, out_data: np.ndarray,
                   filled: int) -> int:
    """Append one row's k best entries by (-score, id) to the outputs at `filled`, in the row's order (ids
    ascending); non-finite scores dropped. Returns the new fill. Linear: the k-th best score by selection, then
    one pass in id order keeps every better entry and the first ties (the lowest ids)."""
    length = ids.shape[0]
    if length == 0:
        return filled
    take = min(k, length)
    # NaN sorts after every number: negate so that the best come first and NaN stays last
    kth = kth_smallest(-values, take - 1)
    if np.isnan(kth):  # fewer than k scores that are not NaN: all of those are kept
        kth = np.inf
    better = 0
    for value in values:
        if -value < kth:
            better += 1
    ties_left = take - better
    for j in range(length):
        value = values[j]
        keep = -value < kth
        if not keep and -value == kth and ties_left > 0:
            keep = True
            ties_left -= 1
        if keep and np.isfinite(value):
            out_indices[filled] = ids[j]
            out_data[filled] = value
            filled += 1
    return filled


@numba.njit(cache=True, nogil=True)
def _row_topk_kernel(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (label ids sorted), the k best by (-score, id), in id order; non-finite scores dropped."""
    n = indptr.shape[0] - 1
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    out_indices = np.empty(min(indices.shape[0], n * k), dtype=np.int64)
    out_data = np.empty(out_indices.shape[0], dtype=np.float32)
    filled = 0
    for row in range(n):
        start, stop = indptr[row], indptr[row + 1]
        filled = _keep_row_topk(indices[start:stop], data[start:stop], k, out_indices, out_data, filled)
        out_indptr[row + 1] = filled
    return out_indptr, out_indices[:filled], out_data[:filled]


def vote_topk(weights: np.ndarray, ids: np.ndarray, table: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """`csr_row_topk(csr_from_topk(weights, ids, n) @ table, k)` for a binary `table` (every stored value 1),
    non-negative `weights` and ids distinct within a row, in one compiled pass: each row's weighted votes,
    `weights[i, j]` for every column of `table`'s row `ids[i, j]` (ids < 0 and zero weights skipped), then its k
    best by (-votes, column), in column order. The votes are float32 sums taken in scipy's order (by id, then the
    table row's order), so the result equals the sparse product's bit for bit."""
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    # the scratch row is allocated here, not in the kernel: numpy's zeros and empty map large arrays lazily, so a
    # single text against a million labels pays for the pages its votes touch, not for the whole row
    sums, touched = np.zeros(table.shape[1], dtype=np.float32), np.empty(table.shape[1], dtype=np.int64)
    # room for the output: k per row, but never more than the votes cast (k may be the whole label count)
    lengths = np.diff(table.indptr)[np.maximum(ids, 0)] * (ids >= 0)
    capacity = int(min(ids.shape[0] * int(k), lengths.sum()))
    indptr, indices, data = _vote_topk_kernel(weights, ids, table.indptr.astype(np.int64, copy=False),
                                              table.indices.astype(np.int64, copy=False), sums, touched, int(k),
                                              capacity)
    return sp.csr_matrix((data, indices, indptr), shape=(ids.shape[0], table.shape[1]))


@numba.njit(cache=True, nogil=True)
def _vote_topk_kernel(weights: np.ndarray, ids: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                      sums: np.ndarray, touched: np.ndarray, k: int, capacity: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`sums`: a zero float32 scratch row, left zero again after each row; a column was touched in this row
    when its sum is positive (every vote is)."""
    n = ids.shape[0]
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    out_indices = np.empty(capacity, dtype=np.int64)
    out_data = np.empty(capacity, dtype=np.float32)
    filled = 0
    for row in range(n):
        count = 0
        for j in stable_argsort(ids[row]):
            point, weight = ids[row, j], weights[row, j]
            if point < 0 or not weight > 0:
                continue
            for p in range(indptr[point], indptr[point + 1]):
                col = indices[p]
                if sums[col] == 0:
                    touched[count] = col
                    count += 1
                sums[col] += weight
        cols = sorted_copy(touched[:count])
        values = np.empty(count, dtype=np.float64)
        for j in range(count):
            values[j] = sums[cols[j]]
            sums[cols[j]] = 0.0
        filled = _keep_row_topk(cols, values, k, out_indices, out_data, filled)
        out_indptr[row + 1] = filled
    return out_indptr, out_indices[:filled], out_data[:filled]


def dense_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a dense (n, L) block: (scores, ids) best first (ids of tied scores in no set order).
    `torch.topk` selects in one pass, several times faster than numpy's argpartition and argsort on the wide
    rows of a neighbour search."""
    import torch

    k = min(k, scores.shape[1])
    with torch.inference_mode():
        top = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1, sorted=True)
    return top.values.numpy(), top.indices.numpy()


def csr_product_dense(rows: sp.csr_matrix, table_t: sp.csr_matrix) -> np.ndarray:
    """`(rows @ table_t).toarray()` as float32, for a product whose result is mostly filled (a TF-IDF neighbour
    search over long texts, where each text shares some word with almost every training text): each row's terms
    are scattered straight into a dense output row, in compiled code, with none of the sparse product's
    bookkeeping of which entries exist. The sums are taken in the same order as scipy's, term by term."""
    if rows.shape[1] != table_t.shape[0]:
        raise ValueError(f"shapes {rows.shape} and {table_t.shape} do not multiply")
    rows, table_t = sp.csr_matrix(rows), sp.csr_matrix(table_t)
    # the arrays as they are (numba compiles for their index type): converting the table's would copy all of it
    # on every call, which a one-text query pays in full
    return _scatter_rows_kernel(rows.indptr, rows.indices, rows.data.astype(np.float32, copy=False), table_t.indptr,
                                table_t.indices, table_t.data.astype(np.float32, copy=False), int(table_t.shape[1]))


@numba.njit(cache=True, nogil=True)  # nogil: callers run several blocks in threads
def _scatter_rows_kernel(row_ptr: np.ndarray, row_ind: np.ndarray, row_val: np.ndarray, table_ptr: np.ndarray,
                         table_ind: np.ndarray, table_val: np.ndarray, n_cols: int) -> np.ndarray:
    out = np.zeros((row_ptr.shape[0] - 1, n_cols), np.float32)
    for i in range(row_ptr.shape[0] - 1):
        for a in range(row_ptr[i], row_ptr[i + 1]):
            term, weight = row_ind[a], row_val[a]
            for e in range(table_ptr[term], table_ptr[term + 1]):
                out[i, table_ind[e]] += weight * table_val[e]
    return out


def stack_rows(blocks: list[sp.csr_matrix], n_labels: int) -> sp.csr_matrix:
    """Batches of predictions -> one CSR matrix (an empty input gives a 0-row matrix)."""
    if not blocks:
        return sp.csr_matrix((0, n_labels), dtype=np.float32)
    if len(blocks) == 1:  # one batch (e.g. a single query): as it is, without vstack's copy and checks
        return sp.csr_matrix(blocks[0])
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


# from this many rows (queries, texts) the compiled pair kernels here and in xmine.classifiers run in parallel over
# rows; below it (a single text when serving) starting numba's thread team costs more than it saves
PARALLEL_ROWS = 16


def pair_dots(queries: np.ndarray, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(n, C) inner products of each query with the rows `ids[i]` of `table` (ids < 0: 0), pair by pair in
    compiled code: n*C*d operations, with no (n, C, d) block of gathered rows and no product against rows that no
    query asked for. From `PARALLEL_ROWS` queries on, the queries are shared among numba's threads; each
    pair is the same sum either way, so the result does not depend on the thread count. `table` may be
    memory-mapped; float32 sums in another order than BLAS (within 1e-5)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    table = np.asarray(table)
    if table.dtype != np.float32 or not table.flags.c_contiguous:
        table = np.ascontiguousarray(table, dtype=np.float32)
    kernel = _pair_dots_parallel if ids.shape[0] >= PARALLEL_ROWS else _pair_dots_kernel
    return kernel(queries, table, ids)


@numba.njit(cache=True, nogil=True, fastmath=True)  # fastmath: the sum over d may be reordered (SIMD)
def _pair_dot(queries: np.ndarray, table: np.ndarray, i: int, row: int) -> np.float32:
    """<queries[i], table[row]>, or 0 for row < 0: the one definition of a pair's score."""
    total = np.float32(0.0)
    if row >= 0:
        for t in range(queries.shape[1]):
            total += queries[i, t] * table[row, t]
    return total


@numba.njit(cache=True, nogil=True)
def _pair_dots_kernel(queries: np.ndarray, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    n, c = ids.shape
    out = np.empty((n, c), np.float32)
    for i in range(n):
        for j in range(c):
            out[i, j] = _pair_dot(queries, table, i, ids[i, j])
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _pair_dots_parallel(queries: np.ndarray, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    n, c = ids.shape
    out = np.empty((n, c), np.float32)
    for i in numba.prange(n):
        for j in range(c):
            out[i, j] = _pair_dot(queries, table, i, ids[i, j])
    return out
