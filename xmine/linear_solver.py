"""Compiled kernels for many small sparse linear problems: one L2-regularised binary model per label, fitted by
dual coordinate descent (Hsieh et al. 2008 for the squared hinge; Yu, Huang & Lin 2011 for logistic loss), as
liblinear's dual solvers do, and the scores of (point, candidate label) pairs.

Why compiled: the sparse ranker solves one problem per label (tens of thousands of them). Calling liblinear through
scikit-learn per label costs a Python round trip, a row gather and a column remap each time; here a chunk of labels
is solved in one call that releases the GIL, so chunks run in parallel threads.

The problem of a label (rows i with x_i, y_i in {-1, +1}), with the bias as a constant feature of value 1 (as
liblinear's intercept, regularised like the other weights):
    min_w 0.5 |w|^2 + C sum_i loss(y_i w.x_i)
The dual variables alpha (one per row) are returned, so a later fit on more rows can start from them (warm start).
"""

from __future__ import annotations

import numba
import numpy as np

LOSS_LOGISTIC = 0
LOSS_SQUARED_HINGE = 1
NO_POSITIVE_BIAS = -10.0  # matches xmine.ranker.UNTRAINED_BIAS
ALL_POSITIVE_BIAS = 10.0


@numba.njit(cache=True, nogil=True)
def _next_random(state: np.ndarray) -> int:
    # xorshift64*: a fixed, seedable sequence for the coordinate order, the same on every thread
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return int((x * np.uint64(2685821657736338717)) >> np.uint64(33))


@numba.njit(cache=True, nogil=True)
def _solve_one(rows: np.ndarray, y: np.ndarray, alpha: np.ndarray, x_indptr: np.ndarray, x_indices: np.ndarray,
               x_data: np.ndarray, w: np.ndarray, C: float, loss: int, tol: float, max_iter: int,
               rng: np.ndarray) -> float:
    """Solve one label's problem in place: `w` (dense scratch, zero on entry) and `alpha` (initial duals) are
    updated; returns the bias weight."""
    n = rows.shape[0]
    qd = np.empty(n)
    bias = 0.0
    diag = 0.5 / C if loss == LOSS_SQUARED_HINGE else 0.0
    for t in range(n):
        r = rows[t]
        s = 1.0  # the bias feature
        for p in range(x_indptr[r], x_indptr[r + 1]):
            s += x_data[p] * x_data[p]
            w[x_indices[p]] += y[t] * alpha[t] * x_data[p]
        qd[t] = s + diag
        bias += y[t] * alpha[t]
    order = np.arange(n)
    inner_tol = 1e-2
    for _ in range(max_iter):
        for t in range(n - 1, 0, -1):  # a fresh random order each pass
            j = _next_random(rng) % (t + 1)
            order[t], order[j] = order[j], order[t]
        gmax = 0.0
        newton_steps = 0
        for s_ in range(n):
            t = order[s_]
            r = rows[t]
            yt = y[t]
            ywx = bias
            for p in range(x_indptr[r], x_indptr[r + 1]):
                ywx += w[x_indices[p]] * x_data[p]
            ywx *= yt
            a_old = alpha[t]
            if loss == LOSS_SQUARED_HINGE:
                g = ywx - 1.0 + diag * a_old
                pg = min(g, 0.0) if a_old == 0.0 else g
                gmax = max(gmax, abs(pg))
                if pg == 0.0:
                    continue
                a_new = max(a_old - g / qd[t], 0.0)
            else:
                # the pair (alpha, C - alpha): minimise along whichever of the two is the better-conditioned one
                a = qd[t]
                b = ywx
                sign = 1.0
                z_old = a_old
                if 0.5 * a * ((C - a_old) - a_old) + b < 0.0:
                    sign = -1.0
                    z_old = C - a_old
                z = z_old
                if C - z < 0.5 * C:
                    z = 0.1 * z
                gp = a * (z - z_old) + sign * b + np.log(z / (C - z))
                gmax = max(gmax, abs(gp))
                inner = 0
                while inner <= 100 and abs(gp) >= inner_tol:
                    gpp = a + C / (C - z) / z
                    tmp = z - gp / gpp
                    z = z * 0.1 if tmp <= 0.0 else tmp
                    gp = a * (z - z_old) + sign * b + np.log(z / (C - z))
                    inner += 1
                    newton_steps += 1
                if inner == 0:
                    continue
                a_new = z if sign > 0 else C - z
            delta = (a_new - a_old) * yt
            if delta != 0.0:
                alpha[t] = a_new
                for p in range(x_indptr[r], x_indptr[r + 1]):
                    w[x_indices[p]] += delta * x_data[p]
                bias += delta
        if gmax < tol:
            break
        if loss == LOSS_LOGISTIC and newton_steps <= n // 10:
            inner_tol = max(min(1e-8, tol), 0.1 * inner_tol)
    return bias


@numba.njit(cache=True, nogil=True)
def fit_labels(labels: np.ndarray, rows_indptr: np.ndarray, rows_indices: np.ndarray, pos_indptr: np.ndarray,
               pos_indices: np.ndarray, x_indptr: np.ndarray, x_indices: np.ndarray, x_data: np.ndarray,
               n_features: int, C: float, loss: int, tol: float, max_iter: int, prune_below: float,
               warm_indptr: np.ndarray, warm_indices: np.ndarray, warm_alpha: np.ndarray, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit each label of `labels` on its rows (row indices of label l: rows_indices[rows_indptr[l]:...], sorted)
    with its positives (pos_indices[pos_indptr[l]:...], sorted) against the rest of its rows.

    Warm start: alphas of (label, row) pairs found in the `warm_*` CSR (same layout; empty = cold start).
    Returns (label, feature, weight) of the kept weights (|w| >= prune_below), the biases of `labels`, and the
    final alphas laid out as rows_indices[...] of `labels`, one label after the other."""
    w = np.zeros(n_features)
    cap = 1024
    out_l = np.empty(cap, np.int64)
    out_f = np.empty(cap, np.int64)
    out_w = np.empty(cap, np.float32)
    size = 0
    biases = np.full(labels.shape[0], NO_POSITIVE_BIAS)
    total = 0
    for i in range(labels.shape[0]):
        total += rows_indptr[labels[i] + 1] - rows_indptr[labels[i]]
    alphas = np.full(total, -1.0)  # -1: the label was not solved (no duals to start a refit from)
    rng = np.zeros(1, np.uint64)
    offset = 0
    has_warm = warm_indptr.shape[0] > 1
    for i in range(labels.shape[0]):
        label = labels[i]
        rows = rows_indices[rows_indptr[label]:rows_indptr[label + 1]]
        pos = pos_indices[pos_indptr[label]:pos_indptr[label + 1]]
        n = rows.shape[0]
        alpha = alphas[offset:offset + n]
        offset += n
        if pos.shape[0] == 0:
            continue
        y = np.empty(n)
        n_pos = 0
        n_feat = 0
        for t in range(n):
            k = np.searchsorted(pos, rows[t])
            y[t] = 1.0 if k < pos.shape[0] and pos[k] == rows[t] else -1.0
            n_pos += y[t] > 0
            n_feat += x_indptr[rows[t] + 1] - x_indptr[rows[t]]
        if n_pos == n:  # no point was shortlisted this label without having it: nothing to separate
            biases[i] = ALL_POSITIVE_BIAS
            continue
        if n_feat == 0:  # featureless rows (empty texts): the best constant model is the prior's logit
            biases[i] = np.log(n_pos / (n - n_pos))
            continue
        for t in range(n):  # liblinear's initial duals, replaced by the previous fit's where it has the pair
            alpha[t] = min(0.001 * C, 1e-8) if loss == LOSS_LOGISTIC else 0.0
        if has_warm:
            prev = warm_indices[warm_indptr[label]:warm_indptr[label + 1]]
            prev_alpha = warm_alpha[warm_indptr[label]:warm_indptr[label + 1]]
            for t in range(n):
                k = np.searchsorted(prev, rows[t])
                if k < prev.shape[0] and prev[k] == rows[t]:
                    a = prev_alpha[k]
                    if (0.0 < a < C) if loss == LOSS_LOGISTIC else a >= 0.0:
                        alpha[t] = a
        rng[0] = np.uint64(seed * 1000003 + label + 1)
        biases[i] = _solve_one(rows, y, alpha, x_indptr, x_indices, x_data, w, C, loss, tol, max_iter, rng)
        for t in range(n):  # collect the weights of the features that occur, and zero the scratch again
            r = rows[t]
            for p in range(x_indptr[r], x_indptr[r + 1]):
                f = x_indices[p]
                v = w[f]
                if v == 0.0:
                    continue
                w[f] = 0.0
                if abs(v) < prune_below:
                    continue
                if size == cap:
                    cap *= 2
                    out_l = _grow(out_l, cap)
                    out_f = _grow(out_f, cap)
                    out_w = _grow(out_w, cap)
                out_l[size] = label
                out_f[size] = f
                out_w[size] = v
                size += 1
    return out_l[:size].copy(), out_f[:size].copy(), out_w[:size].copy(), biases, alphas


@numba.njit(cache=True, nogil=True)
def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.empty(cap, a.dtype)
    for i in range(a.shape[0]):  # element by element: an array assignment is slow to compile (xmine.sorting)
        out[i] = a[i]
    return out


def score_pairs(x_indptr: np.ndarray, x_indices: np.ndarray, x_data: np.ndarray, wt_indptr: np.ndarray,
                wt_indices: np.ndarray, wt_data: np.ndarray, candidates: np.ndarray, n_labels: int,
                block: int = 256) -> np.ndarray:
    """(n, C) dot products of sparse point rows (CSR x) with the weights of each point's candidate labels, from
    the feature-major weights (CSR wt, (F, L)); candidates < 0 score 0. Per point, the weights of its features
    are walked once and kept where the label is a candidate: the work of the sparse product x @ wt, without
    building the (n, L) product only to look the candidates up in it. Blocks of `block` points run in parallel;
    a single block runs on the calling thread, since handing it to the thread pool only adds a wake-up and a
    barrier to a small, latency-bound call."""
    out = np.zeros(candidates.shape, np.float32)
    if candidates.shape[0] <= block:
        _score_pairs_block(x_indptr, x_indices, x_data, wt_indptr, wt_indices, wt_data, candidates, n_labels,
                           0, candidates.shape[0], out)
    else:
        _score_pairs_parallel(x_indptr, x_indices, x_data, wt_indptr, wt_indices, wt_data, candidates, n_labels,
                              block, out)
    return out


# Two compiled functions, not one Python function compiled twice: numba's cache files are named after the
# Python function, so two dispatchers of one function would load each other's (serial vs parallel) code.
@numba.njit(cache=True, nogil=True)
def _score_pairs_block(x_indptr: np.ndarray, x_indices: np.ndarray, x_data: np.ndarray, wt_indptr: np.ndarray,
                       wt_indices: np.ndarray, wt_data: np.ndarray, candidates: np.ndarray, n_labels: int,
                       lo: int, hi: int, out: np.ndarray) -> None:
    """Rows lo..hi of `score_pairs`, written into `out`."""
    c = candidates.shape[1]
    slot = np.full(n_labels, -1, np.int32)  # the candidate's column of each label, for the current point
    for i in range(lo, hi):
        for j in range(c):
            if candidates[i, j] >= 0:
                slot[candidates[i, j]] = j
        for p in range(x_indptr[i], x_indptr[i + 1]):
            f = x_indices[p]
            v = x_data[p]
            for q in range(wt_indptr[f], wt_indptr[f + 1]):
                j = slot[wt_indices[q]]
                if j >= 0:
                    out[i, j] += v * wt_data[q]
        for j in range(c):  # a label listed twice: its later column took the sum, copy it back
            label = candidates[i, j]
            if label >= 0 and slot[label] != j:
                out[i, j] = out[i, slot[label]]
        for j in range(c):
            if candidates[i, j] >= 0:
                slot[candidates[i, j]] = -1


@numba.njit(cache=True, nogil=True, parallel=True)
def _score_pairs_parallel(x_indptr: np.ndarray, x_indices: np.ndarray, x_data: np.ndarray, wt_indptr: np.ndarray,
                          wt_indices: np.ndarray, wt_data: np.ndarray, candidates: np.ndarray, n_labels: int,
                          block: int, out: np.ndarray) -> None:
    n = candidates.shape[0]
    for b in numba.prange((n + block - 1) // block):
        _score_pairs_block(x_indptr, x_indices, x_data, wt_indptr, wt_indices, wt_data, candidates, n_labels,
                           b * block, min(n, (b + 1) * block), out)
