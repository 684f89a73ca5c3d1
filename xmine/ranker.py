"""A sparse linear ranker: one L2-regularised linear model per label over the TF-IDF features, trained on the
label's positives and its *shortlist negatives* (the training points whose ANN/neighbour shortlist proposes the
label without it being theirs), each solved by dual coordinate descent in compiled code (xmine.linear_solver,
liblinear's dual solvers), a chunk of labels per call, chunks in parallel threads.

This is the ranking layer of the sparse XMC models (PECOS XR-Linear trains its rankers on matcher-aware
negatives the same way), with NGAME's semantic shortlist as the matcher. It complements the per-label
classifiers of `xmine.classifiers`, which are trained by SGD jointly over [dense (+) sparse] features:
measured on Bibtex (same shortlists), those reach P@1 63.1 and this ranker 65.3; a dense part that fits
training points the encoder has memorised leaves the sparse part under-trained.

score(x, l) = b_l + sum_f x_f * W[l, f], computed for candidate pairs only. Weights with |w| below
`prune_below` are dropped (PECOS's default threshold 0.1), which keeps W small.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from xmine.config import RankerConfig
from xmine.errors import XmineError
from xmine.linear_solver import LOSS_LOGISTIC, LOSS_SQUARED_HINGE, fit_labels, score_pairs
from xmine.safeio import load_json, load_npy, load_sparse_npz, model_error, params_from
from xmine.topk import csr_from_topk
from xmine.utils import atomic_save_npy, atomic_write

UNTRAINED_BIAS = -10.0  # labels without a training positive: never ranked above a trained label by this source


def shortlist_matrix(shortlist: np.ndarray, n_labels: int) -> sp.csr_matrix:
    """(L, n) 0/1 matrix: which points' shortlists hold each label."""
    out = csr_from_topk(np.ones(shortlist.shape, dtype=np.float32), shortlist, n_labels).T.tocsr()
    out.data[:] = 1  # a label listed twice in a row was summed
    return out


class SparseRanker:
    def __init__(self, weights: sp.csr_matrix, bias: np.ndarray, config: RankerConfig) -> None:
        if weights.shape[0] != bias.shape[0]:
            raise XmineError(f"ranker weights have {weights.shape[0]} rows, biases {bias.shape[0]}")
        self.weights = sp.csr_matrix(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.config = config
        self.weights.sort_indices()
        self._weights_t = self.weights.T.tocsr()  # (F, L): scoring walks the weights of a point's features
        # the dual solution of the fit, (indptr, row indices, alpha) per label: a refit on more rows starts there.
        # Not saved: a loaded ranker is for prediction.
        self.duals: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def n_labels(self) -> int:
        return self.weights.shape[0]

    @property
    def n_features(self) -> int:
        return self.weights.shape[1]

    @classmethod
    def train(cls, features: sp.csr_matrix, labels: sp.csr_matrix, shortlist: np.ndarray, config: RankerConfig,
              n_jobs: int = 1, progress: bool = True, warm_start: SparseRanker | None = None) -> SparseRanker:
        """One ranker per label on the rows of `labels` that have labels: the label's positives against the
        rows whose `shortlist` (n, C) proposes it. Rows without labels (held out) take no part.
        `warm_start`: a ranker trained by this method in this process (it keeps its dual variables) on a subset
        of these (label, row) pairs; the fit starts from its solution."""
        features, labels = sp.csr_matrix(features), sp.csr_matrix(labels)
        n, n_labels = labels.shape
        if features.shape[0] != n or shortlist.shape[0] != n:
            raise XmineError(f"ranker: {features.shape[0]} feature rows, {n} label rows and {shortlist.shape[0]} "
                             "shortlist rows must match")
        has_labels = np.diff(labels.indptr) > 0
        shortlist = np.where(has_labels[:, None], shortlist, -1)
        positives = labels.T.tocsr()
        positives.sort_indices()
        label_rows = (shortlist_matrix(shortlist, n_labels) + positives).tocsr()
        label_rows.sort_indices()
        x = sp.csr_matrix(features, dtype=np.float64)
        x.sort_indices()
        warm = warm_start.duals if warm_start is not None and warm_start.duals is not None else None
        if warm is not None and warm[0].shape[0] != n_labels + 1:
            raise XmineError(f"ranker warm start has {warm[0].shape[0] - 1} labels, this fit {n_labels}")
        empty = np.zeros(1, dtype=label_rows.indptr.dtype), np.zeros(0, dtype=label_rows.indices.dtype)
        warm_indptr, warm_indices, warm_alpha = warm if warm is not None else (*empty, np.zeros(0))
        # chunks of labels balanced by work (rows x their features), each solved in one compiled call that
        # releases the GIL, run in threads
        row_nnz = np.diff(x.indptr).astype(np.float64) + 1
        cum = np.concatenate([[0.0], np.cumsum(row_nnz[label_rows.indices])])
        work = (cum[label_rows.indptr[1:]] - cum[label_rows.indptr[:-1]]) * (np.diff(positives.indptr) > 0)
        n_chunks = max(1, min(n_labels, 16 * max(n_jobs, 1)))
        bounds = np.searchsorted(np.cumsum(work), np.linspace(0, work.sum(), n_chunks + 1)[1:-1])
        chunks = [c for c in np.split(np.arange(n_labels), np.unique(bounds)) if len(c)]
        loss = LOSS_LOGISTIC if config.loss == "logistic" else LOSS_SQUARED_HINGE
        jobs = (delayed(fit_labels)(chunk, label_rows.indptr, label_rows.indices, positives.indptr,
                                    positives.indices, x.indptr, x.indices, x.data, x.shape[1], float(config.C),
                                    loss, float(config.tol), int(config.max_iter), float(config.prune_below),
                                    warm_indptr, warm_indices, warm_alpha, int(config.seed)) for chunk in chunks)
        parts = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(jobs)
        bias = np.full(n_labels, UNTRAINED_BIAS, dtype=np.float32)
        alpha = np.zeros(label_rows.nnz)
        trip_l, trip_f, trip_w = [], [], []
        # the generator yields in submission order, so each result belongs to the chunk beside it
        for chunk, (lab, feat, w, chunk_bias, chunk_alpha) in zip(
                chunks, tqdm(parts, total=len(chunks), desc="sparse ranker", disable=not progress, unit="chunk"),
                strict=True):
            trip_l.append(lab)
            trip_f.append(feat)
            trip_w.append(w)
            bias[chunk] = chunk_bias
            # chunks are runs of consecutive labels, so their alphas fill one slice of the label-major layout
            alpha[label_rows.indptr[chunk[0]]:label_rows.indptr[chunk[-1] + 1]] = chunk_alpha
        weights = sp.csr_matrix((np.concatenate(trip_w), (np.concatenate(trip_l), np.concatenate(trip_f))),
                                shape=(n_labels, features.shape[1]))
        ranker = cls(weights, bias, config)
        ranker.duals = (label_rows.indptr, label_rows.indices, alpha)
        return ranker

    def with_labels(self, n_labels: int) -> SparseRanker:
        """This ranker over `n_labels` labels: the ones beyond its own have no weights and UNTRAINED_BIAS
        (labels added after training). The weight arrays are shared, not copied."""
        if n_labels < self.n_labels:
            raise XmineError(f"cannot shrink a ranker from {self.n_labels} to {n_labels} labels")
        new = copy.copy(self)
        w, wt = self.weights, self._weights_t
        new.weights = sp.csr_matrix((w.data, w.indices, np.concatenate([w.indptr, np.full(
            n_labels - self.n_labels, w.indptr[-1], dtype=w.indptr.dtype)])), shape=(n_labels, self.n_features))
        new._weights_t = sp.csr_matrix((wt.data, wt.indices, wt.indptr), shape=(self.n_features, n_labels))
        new.bias = np.concatenate([self.bias, np.full(n_labels - self.n_labels, UNTRAINED_BIAS, dtype=np.float32)])
        return new

    def score(self, sparse_x: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        """Scores (n, C) of candidate labels (n, C); padding candidates (< 0) get UNTRAINED_BIAS. Computed for
        the candidate pairs only (a compiled kernel), not as a product against all labels."""
        sparse_x = sp.csr_matrix(sparse_x, dtype=np.float32)
        if sparse_x.shape[1] != self.n_features:
            raise XmineError(f"ranker expects {self.n_features} features, got {sparse_x.shape[1]}")
        if candidates.shape[0] != sparse_x.shape[0]:
            raise XmineError(f"ranker: {sparse_x.shape[0]} feature rows but {candidates.shape[0]} candidate rows")
        if candidates.size and candidates.max() >= self.n_labels:
            raise XmineError(f"ranker: candidate label {int(candidates.max())} >= {self.n_labels} labels")
        wt = self._weights_t
        cand = np.ascontiguousarray(candidates, dtype=np.int64)
        out = score_pairs(sparse_x.indptr, sparse_x.indices, sparse_x.data, wt.indptr, wt.indices, wt.data, cand,
                          self.n_labels)
        out += self.bias[np.maximum(cand, 0)]
        out[cand < 0] = UNTRAINED_BIAS
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)

        def write_weights(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                sp.save_npz(fh, self.weights)

        atomic_write(directory / "weights.npz", write_weights)
        atomic_save_npy(directory / "bias.npy", self.bias)
        self.config.save(directory / "config.json")

    @classmethod
    def load(cls, directory: str | Path, n_labels: int | None = None) -> SparseRanker:
        directory = Path(directory)
        config = params_from(RankerConfig, load_json(directory / "config.json", "ranker"), "ranker",
                             directory / "config.json")
        weights = load_sparse_npz(directory / "weights.npz", "ranker")
        bias = load_npy(directory / "bias.npy", "ranker", shape=(weights.shape[0],))
        if n_labels is not None and weights.shape[0] != n_labels:
            raise model_error("ranker", directory / "weights.npz", f"weights for {weights.shape[0]} labels, "
                              f"the model has {n_labels}")
        return cls(weights, bias, config)
