"""Ranking metrics for extreme multi-label classification: P@k, nDCG@k, their propensity-scored
variants PSP@k / PSnDCG@k (Jain et al., 2016) and R@k, computed vectorised over sparse predictions.

Conventions (the ones pyxclib and napkinXC use, so numbers are comparable with published tables):

* A prediction is every *stored* entry of the prediction matrix, whatever its value (a score of
  0.0 is still a prediction); higher scores rank first, ties go to the lower label id.
* Ground truth is binary: any stored nonzero value is a relevant label.
* P@k, nDCG@k, PSP@k and PSnDCG@k average over *all* points, including points without any true
  label, which contribute 0. R@k averages only over points with at least one true label.
* PSP@k and PSnDCG@k are normalised at the dataset level: the mean over points of the
  propensity-scored gain divided by the mean over points of the best achievable gain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csr_matrix

from .errors import XmineError
from .topk import csr_row_ids, pair_keys

__all__ = [
    "PROPENSITY_PRESETS",
    "evaluate",
    "filter_predictions",
    "format_buckets",
    "format_metrics",
    "frequency_bucket_metrics",
    "frequency_buckets",
    "inverse_propensity",
    "point_precision",
    "ranked_relevance",
    "recall_curve",
    "top_k_indices",
]

# (A, B) of Jain et al. 2016 for the dataset families of the Extreme Classification Repository.
PROPENSITY_PRESETS: dict[str, tuple[float, float]] = {
    "default": (0.55, 1.5),
    "amazon": (0.6, 2.6),
    "wikipedia": (0.5, 0.4),
}


def inverse_propensity(train_labels: csr_matrix | np.ndarray, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Inverse label propensities of Jain et al. 2016, one per label (float64, shape (L,)).

    ``train_labels`` is the (N, L) training label matrix; n_l is the number of training points
    with label l (stored nonzeros of column l) and
    ``inv_p_l = 1 + (ln N - 1) * (B + 1)^A * (n_l + B)^(-A)``.
    """
    if sp.issparse(train_labels):
        if train_labels.ndim != 2:
            raise XmineError(f"train_labels must be 2-D (N, L), got shape {train_labels.shape}")
        coo = sp.coo_matrix(train_labels)
        coo.sum_duplicates()
        counts = np.bincount(coo.col[coo.data != 0], minlength=coo.shape[1])
    else:
        arr = np.asarray(train_labels)
        if arr.ndim != 2:
            raise XmineError(f"train_labels must be a 2-D (N, L) label matrix, got shape {arr.shape}")
        counts = np.count_nonzero(arr, axis=0)
    n_points = train_labels.shape[0]
    if n_points < 1:
        raise XmineError(f"train_labels has no rows (shape {train_labels.shape}); N must be >= 1")
    c = (np.log(n_points) - 1.0) * (B + 1.0) ** A
    return 1.0 + c * np.power(counts.astype(np.float64) + B, -A)


def _as_csr(x: object, name: str) -> csr_matrix:
    """``x`` as a 2-D csr_matrix in canonical form (sorted indices, no duplicates); copies if needed."""
    if not sp.issparse(x):
        raise XmineError(f"{name} must be a scipy sparse matrix, got {type(x).__name__}")
    if x.ndim != 2:
        raise XmineError(f"{name} must be 2-D, got shape {x.shape}")
    m = csr_matrix(x)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


def _check_ks(ks: Sequence[int], name: str) -> list[int]:
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise XmineError(f"{name} must hold integers >= 1, got {k!r}")
        out.append(int(k))
    return out


def filter_predictions(pred: csr_matrix, filter_pairs: np.ndarray | None) -> csr_matrix:
    """Remove the (row, label) entries listed in ``filter_pairs`` (shape (m, 2)) from ``pred``.

    Returns a new csr_matrix without those entries (they are dropped, not stored as zeros); every
    other stored entry is kept. ``None`` or an empty array returns ``pred`` itself, uncopied.
    Pairs that ``pred`` does not store are ignored; pairs outside its shape raise ``XmineError``.
    """
    if filter_pairs is None:
        return pred
    pairs = np.asarray(filter_pairs)
    if pairs.size == 0:
        return pred
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise XmineError(f"filter_pairs must have shape (m, 2), got {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise XmineError(f"filter_pairs must hold integers, got dtype {pairs.dtype}")
    p = _as_csr(pred, "pred")
    n, n_labels = p.shape
    pairs = pairs.astype(np.int64, copy=False)
    bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= n) | (pairs[:, 1] < 0) | (pairs[:, 1] >= n_labels)
    if bad.any():
        first = pairs[np.argmax(bad)]
        raise XmineError(
            f"filter pair ({first[0]}, {first[1]}) is outside pred of shape {p.shape} "
            f"({int(bad.sum())} of {len(pairs)} pairs out of range)"
        )
    # One int64 key per (row, label) lets a single vectorised membership test do the matching.
    rows = csr_row_ids(p)
    drop = np.isin(pair_keys(rows, p.indices, n_labels), pair_keys(pairs[:, 0], pairs[:, 1], n_labels))
    keep = ~drop
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=n), out=indptr[1:])
    return csr_matrix((p.data[keep], p.indices[keep], indptr), shape=p.shape)


def _row_topk(indptr: np.ndarray, data: np.ndarray, k: int) -> np.ndarray:
    """Positions into ``data`` of the k largest values of each csr row, best first, (n, k) int64.

    Ties go to the earlier position (the lower label id in a canonical csr); rows with fewer than
    k entries are padded with -1.
    """
    n = len(indptr) - 1
    out = np.full((n, k), -1, dtype=np.int64)
    # float64 keys: negating unsigned or boolean scores would wrap around instead of reversing order.
    data = np.asarray(data, dtype=np.float64)
    counts = np.diff(indptr).astype(np.int64)
    width = int(counts.max()) if n else 0
    if width == 0:
        return out
    nnz = int(indptr[-1])
    starts = np.asarray(indptr[:-1], dtype=np.int64)
    kk = min(k, width)

    if n * width > max(4 * nnz, 1 << 22):
        # Very uneven rows: a padded (n, width) block would be mostly padding, so sort the stored
        # entries once, grouped by row (lexsort is stable, so ties keep label order).
        rows = np.repeat(np.arange(n, dtype=np.int64), counts)
        order = np.lexsort((-data, rows))
        rank = np.arange(nnz, dtype=np.int64) - starts[rows]
        sel = rank < kk
        out[rows[sel], rank[sel]] = order[sel]
        return out

    # Padded block of negated scores: ascending stable sort = descending score, lower label first.
    # Padding is +inf and sits after every real entry of its row, so a real -inf score still
    # ranks ahead of padding.
    if nnz == n * width:
        keys = -data.reshape(n, width)  # every row full (the usual top-k output): no scatter needed
    else:
        keys = np.full((n, width), np.inf)
        # A row-major boolean mask visits slots in csr order, so this fills each row's prefix.
        keys[np.arange(width) < counts[:, None]] = -data
    if kk < width:
        # Select the kk best per row with a partition (O(width)) instead of a full sort; entries
        # tied with the kk-th value are taken leftmost first so the choice stays deterministic.
        kth = np.partition(keys, kk - 1, axis=1)[:, kk - 1 : kk]
        better = keys < kth
        tied = keys == kth
        room = kk - better.sum(axis=1, keepdims=True)
        take = better | (tied & (np.cumsum(tied, axis=1) <= room))
        cols = np.nonzero(take)[1].reshape(n, kk)  # row-major, so still in position order
        sub = np.take_along_axis(keys, cols, axis=1)
        cols = np.take_along_axis(cols, np.argsort(sub, axis=1, kind="stable"), axis=1)
    else:
        cols = np.argsort(keys, axis=1, kind="stable")
    out[:, :kk] = np.where(cols < counts[:, None], starts[:, None] + cols, -1)
    return out


def _check_scores(p: csr_matrix) -> None:
    if np.issubdtype(p.data.dtype, np.floating) and np.isnan(p.data).any():
        raise XmineError(f"pred of shape {p.shape} holds NaN scores; cannot rank them")


def top_k_indices(pred: csr_matrix, k: int) -> np.ndarray:
    """Label ids of the k highest-scored stored entries of each row, best first, shape (n, k) int64.

    Ties go to the lower label id; rows with fewer than k stored entries are padded with -1.
    """
    (k,) = _check_ks([k], "k")
    p = _as_csr(pred, "pred")
    _check_scores(p)
    pos = _row_topk(p.indptr, p.data, k)
    return np.where(pos >= 0, p.indices[np.maximum(pos, 0)], -1).astype(np.int64)


def evaluate(
    pred: csr_matrix,
    true: csr_matrix,
    ks: Sequence[int] = (1, 3, 5),
    inv_propensity: np.ndarray | None = None,
    filter_pairs: np.ndarray | None = None,
    recall_ks: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """Ranking metrics of ``pred`` (n, L) scores against ``true`` (n, L) relevance, in percent.

    Keys, in order: ``P@k`` and ``nDCG@k`` for each k in ``ks``; ``PSP@k`` and ``PSnDCG@k`` when
    ``inv_propensity`` (shape (L,)) is given; ``R@r`` for each r in ``recall_ks`` that is at most
    the largest number of entries stored in a row of ``pred`` (counted before filtering), since
    recall at r is meaningless when fewer than r labels were predicted.

    With rel_i = 1 when the i-th ranked prediction is relevant (missing predictions count as
    not relevant) and y the true label set of a point:

    * P@k = sum_{i<k} rel_i / k
    * nDCG@k = sum_{i<k} rel_i / log2(i+2), divided by the same sum with min(k, |y|) ones
    * PSP@k = mean_points(sum_{i<k} rel_i q_{l_i}) / mean_points(sum of the min(k, |y|) largest
      q_l over l in y) -- q = inverse propensities. This dataset-level ratio is pyxclib's
      ``psprecision`` and napkinXC's ``psprecision_at_k(normalize=True)``.
    * PSnDCG@k = mean_points(PSDCG@k / IDCG@k) / mean_points(best PSDCG@k / IDCG@k), where
      PSDCG@k = sum_{i<k} rel_i q_{l_i} / log2(i+2), "best" puts the largest q of y first and
      IDCG@k is the binary ideal DCG above (pyxclib ``psndcg``, napkinXC ``psndcg_at_k``).
    * R@r = sum_{i<r} rel_i / |y|, averaged over points with |y| > 0 only.

    P, nDCG, PSP and PSnDCG average over all n points; a point with no true label contributes 0
    (to both sides of the PS ratios). ``filter_pairs`` (m, 2) of (row, label) are removed from
    ``pred`` before ranking, so the next prediction moves up.
    """
    p = _as_csr(pred, "pred")
    t = _as_csr(true, "true")
    if p.shape != t.shape:
        raise XmineError(f"pred has shape {p.shape} but true has shape {t.shape}; they must be equal")
    n, n_labels = p.shape
    if n == 0:
        raise XmineError(f"cannot evaluate zero points (pred shape {p.shape})")
    ks = _check_ks(ks, "ks")
    recall_ks = _check_ks(recall_ks, "recall_ks")
    q = None
    if inv_propensity is not None:
        q = np.asarray(inv_propensity, dtype=np.float64)
        if q.shape != (n_labels,):
            raise XmineError(
                f"inv_propensity has shape {q.shape} but pred/true have shape {p.shape}; "
                f"expected ({n_labels},)"
            )
    _check_scores(p)

    max_stored = int(np.diff(p.indptr).max())
    recall_ks = [r for r in recall_ks if r <= max_stored]
    p = filter_predictions(p, filter_pairs)
    depth = max([*ks, *recall_ks], default=0)
    if depth == 0:
        return {}

    # Binary relevance, canonical, explicit zeros dropped (copy: never mutate the caller's matrix).
    t = t.copy()
    t.eliminate_zeros()
    t.data = np.ones_like(t.data, dtype=np.float64)
    n_true = np.diff(t.indptr)

    # Relevance of every stored prediction in one sparse pass: store entry position + 1 as the
    # value and keep only entries that are also in the ground truth.
    marks = csr_matrix((np.arange(1, p.nnz + 1, dtype=np.float64), p.indices, p.indptr), shape=p.shape)
    hit_pos = marks.multiply(t).tocsr().data.astype(np.int64) - 1
    entry_rel = np.zeros(p.nnz, dtype=bool)
    entry_rel[hit_pos] = True

    pos = _row_topk(p.indptr, p.data, depth)
    valid = pos >= 0
    safe = np.maximum(pos, 0)
    rel = valid & entry_rel[safe] if p.nnz else np.zeros_like(valid)
    hits = np.cumsum(rel, axis=1, dtype=np.int32)
    # Graded metrics only need the first max(ks) ranks; recall alone may go deeper.
    kmax = max(ks, default=1)
    rel_k = rel[:, :kmax].astype(np.float64)
    disc = 1.0 / np.log2(np.arange(kmax, dtype=np.float64) + 2.0)
    dcg = np.cumsum(rel_k * disc, axis=1)
    ideal_cum = np.cumsum(disc)
    has_true = n_true > 0

    def idcg(k: int) -> np.ndarray:
        # Binary ideal DCG per point; 1 where |y| = 0 so the division is safe (numerator is 0).
        return np.where(has_true, ideal_cum[np.clip(np.minimum(k, n_true) - 1, 0, None)], 1.0)

    out: dict[str, float] = {}
    for k in ks:
        out[f"P@{k}"] = 100.0 * float(hits[:, k - 1].mean()) / k
    for k in ks:
        out[f"nDCG@{k}"] = 100.0 * float((dcg[:, k - 1] / idcg(k)).mean())

    if q is not None and ks:
        labels = p.indices[safe[:, :kmax]] if p.nnz else np.zeros((n, kmax), dtype=np.int64)
        gain = rel_k * q[labels]
        ps_cum = np.cumsum(gain, axis=1)
        ps_dcg = np.cumsum(gain * disc, axis=1)
        # Best achievable gains: the kmax largest q among each point's true labels, 0-padded.
        true_q = q[t.indices]
        best_pos = _row_topk(t.indptr, true_q, kmax)
        best = np.where(best_pos >= 0, true_q[np.maximum(best_pos, 0)] if t.nnz else 0.0, 0.0)
        best_cum = np.cumsum(best, axis=1)
        best_dcg = np.cumsum(best * disc, axis=1)
        for k in ks:
            den = best_cum[:, k - 1].sum()
            out[f"PSP@{k}"] = 100.0 * float(ps_cum[:, k - 1].sum() / den) if den > 0 else 0.0
        for k in ks:
            norm = idcg(k)
            den = (best_dcg[:, k - 1] / norm).sum()
            num = (ps_dcg[:, k - 1] / norm).sum()
            out[f"PSnDCG@{k}"] = 100.0 * float(num / den) if den > 0 else 0.0

    n_pos = int(has_true.sum())
    for r in recall_ks:
        if n_pos == 0:
            out[f"R@{r}"] = 0.0
        else:
            out[f"R@{r}"] = 100.0 * float((hits[has_true, r - 1] / n_true[has_true]).mean())
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """Compact table, e.g. ``P@1 50.12  P@3 41.00 ...``; propensity-scored metrics on a second line."""
    plain = [f"{name} {value:.2f}" for name, value in metrics.items() if not name.startswith("PS")]
    scored = [f"{name} {value:.2f}" for name, value in metrics.items() if name.startswith("PS")]
    return "\n".join("  ".join(line) for line in (plain, scored) if line)


# ------------------------------------------------------------------------------ label-frequency buckets


def label_counts(train_labels: csr_matrix) -> np.ndarray:
    """Training points per label: stored nonzeros of each column, (L,) int64."""
    t = _as_csr(train_labels, "train_labels")
    nz = t.data != 0
    return np.bincount(t.indices[nz], minlength=t.shape[1]).astype(np.int64)


def frequency_buckets(train_labels: csr_matrix, n_buckets: int = 5) -> np.ndarray:
    """Bucket of every label by training frequency, (L,) int64: 0 is the head, ``n_buckets - 1`` the tail.

    Labels are sorted from most to least frequent (ties: lower label id first) and cut so that every
    bucket holds about the same number of training *positives* (the "equi-voluminous" bins of the
    NGAME and DEXA papers): the head bucket has few labels, the tail bucket many. A label goes to
    the bucket in which its first positive falls, so a label with more positives than a bucket's
    share leaves the following bucket(s) empty. Labels without any training positive (test-only
    labels) are in the tail bucket.
    """
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, (int, np.integer)) or n_buckets < 1:
        raise XmineError(f"n_buckets must be an integer >= 1, got {n_buckets!r}")
    counts = label_counts(train_labels)
    total = int(counts.sum())
    if total == 0:
        raise XmineError(f"train_labels of shape {train_labels.shape} has no positive entries; cannot bucket labels")
    order = np.lexsort((np.arange(len(counts)), -counts))  # most frequent first, ties by label id
    before = np.cumsum(counts[order]) - counts[order]  # positives of the more frequent labels
    buckets = np.empty(len(counts), dtype=np.int64)
    buckets[order] = np.minimum(before * n_buckets // total, n_buckets - 1)
    buckets[counts == 0] = n_buckets - 1
    return buckets


def ranked_relevance(
    pred: csr_matrix, true: csr_matrix, depth: int, filter_pairs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``depth`` label ids of every row of ``pred`` and whether each is a true label.

    Returns ``(labels, rel)``, both (n, depth): labels best first (ties to the lower id, -1 where a
    row has fewer stored entries) and rel a boolean mask of the hits, after ``filter_pairs`` are
    removed -- the same ranking :func:`evaluate` scores.
    """
    p = _as_csr(pred, "pred")
    t = _as_csr(true, "true")
    if p.shape != t.shape:
        raise XmineError(f"pred has shape {p.shape} but true has shape {t.shape}; they must be equal")
    if p.shape[0] == 0:
        raise XmineError(f"cannot evaluate zero points (pred shape {p.shape})")
    (depth,) = _check_ks([depth], "depth")
    _check_scores(p)
    p = filter_predictions(p, filter_pairs)
    t = t.copy()
    t.eliminate_zeros()
    t.data = np.ones_like(t.data, dtype=np.float64)
    # Same sparse pass as evaluate(): entry position + 1 survives the product only where it is true.
    marks = csr_matrix((np.arange(1, p.nnz + 1, dtype=np.float64), p.indices, p.indptr), shape=p.shape)
    entry_rel = np.zeros(p.nnz, dtype=bool)
    entry_rel[marks.multiply(t).tocsr().data.astype(np.int64) - 1] = True
    pos = _row_topk(p.indptr, p.data, depth)
    valid = pos >= 0
    safe = np.maximum(pos, 0)
    if p.nnz == 0:
        return np.full(pos.shape, -1, dtype=np.int64), np.zeros(pos.shape, dtype=bool)
    labels = np.where(valid, p.indices[safe], -1).astype(np.int64)
    return labels, valid & entry_rel[safe]


def _n_true(true: csr_matrix) -> np.ndarray:
    """True labels per point (stored nonzeros of each row), (n,) int64."""
    t = _as_csr(true, "true")
    rows = np.repeat(np.arange(t.shape[0]), np.diff(t.indptr))
    return np.bincount(rows[t.data != 0], minlength=t.shape[0]).astype(np.int64)


def recall_curve(
    pred: csr_matrix, true: csr_matrix, max_k: int = 100, filter_pairs: np.ndarray | None = None
) -> np.ndarray:
    """R@k for k = 1..max_k in percent, (max_k,) float64: the fraction of a point's true labels within
    its top k, averaged over points with at least one true label (as ``R@k`` of :func:`evaluate`).

    Beyond the entries a row stores the curve stays flat: a label never predicted is never found.
    """
    _, rel = ranked_relevance(pred, true, max_k, filter_pairs)
    n_true = _n_true(true)
    has = n_true > 0
    if not has.any():
        return np.zeros(rel.shape[1])
    hits = np.cumsum(rel[has], axis=1, dtype=np.float64)
    return 100.0 * (hits / n_true[has, None]).mean(axis=0)


def point_precision(
    pred: csr_matrix, true: csr_matrix, k: int = 5, filter_pairs: np.ndarray | None = None
) -> np.ndarray:
    """P@k of every point in percent, (n,) float64; its mean is ``P@k`` of :func:`evaluate`."""
    _, rel = ranked_relevance(pred, true, k, filter_pairs)
    return 100.0 * rel.sum(axis=1) / k


def frequency_bucket_metrics(
    pred: csr_matrix,
    true: csr_matrix,
    train_labels: csr_matrix,
    n_buckets: int = 5,
    k: int = 5,
    filter_pairs: np.ndarray | None = None,
    buckets: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Accuracy of ``pred`` per label-frequency bucket (:func:`frequency_buckets`), head first.

    One dict per bucket, metrics in percent, all from each point's top ``k`` predictions:

    * ``contribution``: hits on the bucket's labels / (k * n points). The buckets' contributions add
      up to ``P@k`` of :func:`evaluate`.
    * ``precision``: hits on the bucket's labels / top-k predictions of the bucket's labels (how often
      a prediction from this bucket is right); 0 when the method never predicts the bucket.
    * ``recall``: hits on the bucket's labels / the bucket's true test positives (micro-averaged).
    * ``coverage``: of the bucket's labels with at least one test positive, the share predicted
      correctly in some point's top k.
    * ``predicted_share`` / ``true_share``: the bucket's share of all top-k predictions / of all test
      positives (a method that over-predicts head labels shows it here).

    Plus the bucket's ``labels``, ``train_positives``, ``test_positives`` and the training-frequency
    range ``freq_min``..``freq_max`` of its labels. ``buckets`` (L,) may be given to reuse one split
    across methods.
    """
    t = _as_csr(true, "true")
    counts = label_counts(train_labels)
    if counts.shape[0] != t.shape[1]:
        raise XmineError(f"train_labels has {counts.shape[0]} labels but true has {t.shape[1]}; they must be equal")
    if buckets is None:
        buckets = frequency_buckets(train_labels, n_buckets)
    else:
        buckets = np.asarray(buckets, dtype=np.int64)
        if buckets.shape != (t.shape[1],) or (buckets < 0).any() or (buckets >= n_buckets).any():
            raise XmineError(f"buckets must have shape ({t.shape[1]},) and values in [0, {n_buckets})")
    labels, rel = ranked_relevance(pred, t, k, filter_pairs)
    n = t.shape[0]
    predicted = labels >= 0
    pred_bucket = buckets[np.maximum(labels, 0)]
    n_pred = np.bincount(pred_bucket[predicted], minlength=n_buckets)
    n_hit = np.bincount(pred_bucket[rel], minlength=n_buckets)
    t_nz = t.indices[t.data != 0]
    n_pos = np.bincount(buckets[t_nz], minlength=n_buckets)
    test_labels = np.zeros(t.shape[1], dtype=bool)
    test_labels[t_nz] = True
    found = np.zeros(t.shape[1], dtype=bool)
    found[labels[rel]] = True
    n_test_labels = np.bincount(buckets[test_labels], minlength=n_buckets)
    n_found = np.bincount(buckets[found], minlength=n_buckets)
    n_labels = np.bincount(buckets, minlength=n_buckets)
    train_pos = np.bincount(buckets, weights=counts, minlength=n_buckets)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(b > 0, 100.0 * a / np.maximum(b, 1), 0.0)

    contribution = 100.0 * n_hit / (k * n)
    precision, recall, coverage = ratio(n_hit, n_pred), ratio(n_hit, n_pos), ratio(n_found, n_test_labels)
    pred_share = ratio(n_pred, np.full(n_buckets, n_pred.sum()))
    true_share = ratio(n_pos, np.full(n_buckets, n_pos.sum()))
    rows = []
    for b in range(n_buckets):
        freqs = counts[buckets == b]
        rows.append({
            "bucket": b + 1,
            "labels": int(n_labels[b]),
            "freq_min": int(freqs.min()) if freqs.size else 0,
            "freq_max": int(freqs.max()) if freqs.size else 0,
            "train_positives": int(train_pos[b]),
            "test_positives": int(n_pos[b]),
            "contribution": float(contribution[b]),
            "precision": float(precision[b]),
            "recall": float(recall[b]),
            "coverage": float(coverage[b]),
            "predicted_share": float(pred_share[b]),
            "true_share": float(true_share[b]),
        })
    return rows


def format_buckets(rows: list[dict[str, float]], k: int = 5) -> str:
    """Terminal table of :func:`frequency_bucket_metrics`, head bucket first."""
    head = (f"{'bucket':<8}{'labels':>8}{'train freq':>13}{'test pos':>10}{f'contrib P@{k}':>13}"
            f"{f'prec@{k}':>9}{f'recall@{k}':>10}{'coverage':>10}{'pred share':>12}{'true share':>12}")
    lines = [head]
    for i, r in enumerate(rows):
        name = "head" if i == 0 else ("tail" if i == len(rows) - 1 else "")
        freq = f"{r['freq_min']}-{r['freq_max']}"
        lines.append(f"{str(r['bucket']) + ' ' + name:<8}{r['labels']:>8}{freq:>13}{r['test_positives']:>10}"
                     f"{r['contribution']:>13.2f}{r['precision']:>9.2f}{r['recall']:>10.2f}{r['coverage']:>10.2f}"
                     f"{r['predicted_share']:>12.2f}{r['true_share']:>12.2f}")
    total = sum(r["contribution"] for r in rows)
    lines.append(f"(equal training positives per bucket; contributions add up to P@{k} = {total:.2f})")
    return "\n".join(lines)
